"""Experiment recipes: YAML files of TrainConfig settings (pipelines/*.yaml)."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from medseg.errors import MedsegError, first_line
from medseg.planning import PLAN_NAME
from medseg.train import TrainConfig

TUPLE_FIELDS = ("spacing", "patch_size")


def recipe_keys() -> list[str]:
    """The settings a recipe may hold: TrainConfig's fields."""
    return [f.name for f in dataclasses.fields(TrainConfig)]


def load_recipe(path: Path) -> dict:
    """A recipe's settings; unknown keys are an error that lists the valid ones."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise MedsegError(f"{path}: recipe not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MedsegError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise MedsegError(f"{path}: a recipe is a mapping of settings, like 'epochs: 40'")
    valid = recipe_keys()
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MedsegError(f"{path}: unknown setting {key!r}{hint}; valid settings: "
                              f"{', '.join(valid)}")
    for key in TUPLE_FIELDS:
        if key in data:
            data[key] = tuple(data[key])
    return data


PLANNED = ("spacing", "patch_size", "batch_size", "intensity")


def build_config(recipe: Path | None, overrides: dict) -> TrainConfig:
    """TrainConfig: defaults < the data set's plan < the recipe < command-line overrides."""
    settings = load_recipe(recipe) if recipe else {}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("manifest", "output"):
        if not settings.get(key):
            raise MedsegError(f"no {key} given: pass --{key} or set '{key}:' in the recipe")
    plan_path = settings.get("plan") or Path(settings["manifest"]).parent / PLAN_NAME
    if settings.get("plan") or Path(plan_path).exists():
        plan = _read_plan(Path(plan_path))
        settings = {**{k: plan[k] for k in PLANNED if k in plan}, **settings,
                    "plan": str(plan_path)}
        for key in TUPLE_FIELDS:
            settings[key] = tuple(settings[key])
    try:
        return TrainConfig(**settings)
    except TypeError as exc:
        raise MedsegError(f"bad training settings ({exc})") from None


def _read_plan(path: Path) -> dict:
    """A plan written by `medseg plan`."""
    import json

    if not path.exists():
        raise MedsegError(f"{path}: plan not found; make one with `medseg plan --manifest ...`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MedsegError(f"{path}: not valid JSON ({exc})") from None

"""Experiment recipes: YAML files of TrainConfig settings (pipelines/*.yaml)."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from medseg.errors import MedsegError, first_line
from medseg.training.config import TrainConfig
from medseg.training.planning import PLAN_NAME, apply_plan, read_plan

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
        if key in data and isinstance(data[key], list):  # others: refused by name in training
            data[key] = tuple(data[key])
    return data


def build_config(recipe: Path | None, overrides: dict) -> TrainConfig:
    """TrainConfig: defaults < the data set's plan < the recipe < command-line overrides.

    The plan is the recipe's `plan`, else plan.json beside the manifest if there is one;
    without either, training plans from the data itself when it starts.
    """
    settings = load_recipe(recipe) if recipe else {}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("manifest", "output"):
        if not settings.get(key):
            raise MedsegError(f"no {key} given: pass --{key} or set '{key}:' in the recipe")
    try:
        config = TrainConfig(**settings)
    except TypeError as exc:
        raise MedsegError(f"bad training settings ({exc})") from None
    plan_path = Path(config.plan or Path(config.manifest).parent / PLAN_NAME)
    if config.plan or plan_path.exists():
        config = apply_plan(config, read_plan(plan_path), str(plan_path))
    return config

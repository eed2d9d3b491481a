"""Experiment recipes: shipped ones are valid, typos are caught, the command line wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.errors import MedsegError
from medseg.nets.registry import build_network
from medseg.training.recipes import build_config, load_recipe

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


@pytest.mark.parametrize("recipe", sorted(PIPELINES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_builds_a_config_and_its_model(recipe):
    config = build_config(recipe, {})
    assert len(config.spacing) == len(config.patch_size) == 3
    build_network(config.model, 1, 3, **config.model_kwargs)


def test_a_mistyped_key_is_named_with_a_suggestion_and_the_valid_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("manifest: x.json\nepocs: 3\n")
    with pytest.raises(MedsegError, match=r"unknown setting 'epocs' \(did you mean 'epochs'\?\)"):
        load_recipe(recipe)
    with pytest.raises(MedsegError, match="valid settings: .*patch_size"):
        load_recipe(recipe)


def test_command_line_overrides_the_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("manifest: a.json\noutput: runs/a\nepochs: 3\nspacing: [2, 2, 2]\n")
    config = build_config(recipe, {"epochs": 7, "lr": None})
    assert config.epochs == 7 and config.spacing == (2, 2, 2) and config.manifest == "a.json"
    assert config.lr == 3e-3  # unset on both sides: TrainConfig's default


def test_missing_manifest_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(MedsegError, match="no manifest given"):
        build_config(None, {"output": "x"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(MedsegError, match="not valid YAML"):
        load_recipe(bad)


def test_train_runs_from_a_recipe_with_overrides(tiny_dataset, tmp_path):
    import json

    from click.testing import CliRunner

    from cli import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"manifest: {tiny_dataset}\noutput: {tmp_path / 'from_recipe'}\n"
                      "epochs: 1\niters_per_epoch: 1\nbatch_size: 1\nspacing: [8, 8, 8]\n"
                      "patch_size: [32, 32, 16]\n"
                      "model_kwargs: {channels: [4, 8, 16], strides: [2, 2]}\n")
    result = CliRunner().invoke(main, ["train", "--pipeline", str(recipe), "--iters-per-epoch",
                                       "2", "--output", str(tmp_path / "cli_wins")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "cli_wins" / "config.json").read_text())["train"]
    assert saved["iters_per_epoch"] == 2 and saved["patch_size"] == [32, 32, 16]
    assert not (tmp_path / "from_recipe").exists()

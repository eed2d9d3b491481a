"""The README and docs say what the code does: their option lists are checked against the
command line's own definitions, so a renamed option or a new choice cannot drift unnoticed."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest

from cli import main
from medseg.choices import LOSSES, UPSAMPLING
from medseg.inference.options import RunOptions
from medseg.models.options import EngineOptions
from medseg.nets.registry import ALIASES, NETWORKS

ROOT = Path(__file__).resolve().parents[1]
# Free-text options whose valid values come from a registry rather than a click.Choice.
FREE_TEXT_VALUES = {"--network": {*NETWORKS, *ALIASES}, "--upsample": set(UPSAMPLING),
                    "--loss": set(LOSSES)}


def readme_commands() -> dict[str, str]:
    """Each `medseg COMMAND ...` of the README's command block, continuation lines joined."""
    block = re.search(r"```bash\n(medseg synth.*?)```", (ROOT / "README.md").read_text(), re.S)
    text = block.group(1).replace("\\\n", " ")
    return {line.split()[1]: line for line in text.splitlines() if line.startswith("medseg ")}


def visible_options(command: click.Command) -> dict[str, click.Parameter]:
    return {opt: p for p in command.params if isinstance(p, click.Option) and not p.hidden
            for opt in p.opts}


@pytest.mark.parametrize("name", ["synth", "plan", "train", "crossval", "infer", "evaluate",
                                  "report", "convert"])
def test_readme_options_exist_with_the_choices_the_command_takes(name):
    line = readme_commands()[name]
    options = visible_options(main.commands[name])
    for option, values in re.findall(r"(--[a-z0-9-]+)(?:[ =]([^\s\]]+))?", line):
        assert option in options, f"README: `medseg {name} {option}` is no option; see --help"
        param = options[option]
        given = set(values.split("|")) if values and "|" in values else set()
        if isinstance(param.type, click.Choice) and given:
            assert given == set(param.type.choices), f"README: {option} lists {sorted(given)}"
        elif isinstance(param.type, click.Choice) and values:
            assert values in param.type.choices, f"README: {option} {values}"
        elif option in FREE_TEXT_VALUES and values and values.isidentifier():
            for value in values.split("|"):
                assert value in FREE_TEXT_VALUES[option], f"README: {option} {value}"
        elif option in FREE_TEXT_VALUES and given:
            assert given <= FREE_TEXT_VALUES[option], f"README: {option} {sorted(given)}"


def test_readme_lists_every_choice_of_the_options_it_shows_with_alternatives():
    line = readme_commands()["train"]
    shown = dict(re.findall(r"(--[a-z-]+) ([a-z_]+(?:\|[a-z_-]+)+)", line))
    assert set(shown["--upsample"].split("|")) == set(UPSAMPLING)
    assert set(shown["--loss"].split("|")) == set(LOSSES)


def test_the_api_doc_names_every_inference_option():
    text = (ROOT / "docs" / "api.md").read_text()
    for options_class in (EngineOptions, RunOptions):
        listed = re.search(rf"`{options_class.__name__}` \(([^)]*)\)",
                           text.replace("\n", " ")).group(1)
        assert [n.strip() for n in listed.split(",")] == \
            [f.name for f in dataclasses.fields(options_class)]


def test_help_shows_the_defaults_of_train_config_and_infer_options():
    from click.testing import CliRunner

    from medseg.training.config import TrainConfig

    train_help = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    for option, field in (("--epochs", "epochs"), ("--lr", "lr"), ("--network", "model"),
                          ("--augment", "augment"), ("--val-every", "val_every")):
        default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}[field]
        assert re.search(rf"{option} .*?\[default: {re.escape(str(default))}\]", train_help), \
            option
    infer_help = " ".join(CliRunner().invoke(main, ["infer", "--help"]).output.split())
    assert f"[default: {EngineOptions().overlap}" in infer_help
    for name in NETWORKS:
        assert name in train_help


def test_every_module_the_docs_name_exists():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    texts = [(p, p.read_text()) for p in docs]
    named = {(p.name, m) for p, text in texts for m in re.findall(r"medseg/[a-z_/0-9]+\.py", text)}
    missing = sorted((doc, m) for doc, m in named if not (ROOT / m).is_file())
    assert not missing, f"docs name modules that are not there: {missing}"

"""The `medseg` command line: synth, train, infer, evaluate, report.

Imports of torch and MONAI happen inside the commands, so `medseg --help` answers at once.
A user mistake (MedsegError) is printed as one line with exit code 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import sys
from pathlib import Path

import click

# Light modules only (no torch): the choices, defaults and registry names that --help shows.
from medseg.choices import (
    AUGMENTATIONS,
    DEVICES,
    LOSSES,
    MAX_PATCH,
    OPTIMIZERS,
    OUTPUT_TYPES,
    PHASES,
    PRECISIONS,
    SCHEDULES,
    SYNTH_SPACING_MM,
    UPSAMPLING,
    WORKING_SPACING_MM,
)
from medseg.inference.options import RUN_NUMBERS, RunOptions
from medseg.models.options import ENGINE_NUMBERS, EngineOptions
from medseg.nets.registry import NETWORKS
from medseg.training.config import NUMBER_RULES, TrainConfig

EXIT_USER_ERROR = 2
EXIT_CASES_FAILED = 1
EXIT_INTERRUPTED = 130


class GivenPath(click.Path):
    """A path that must not be empty: click would read '' as the current folder."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is empty; give a file or folder path", param, ctx)
        return super().convert(value, param, ctx)


class Finite(click.FloatRange):
    """A number in a range that is also finite: click's FloatRange lets NaN and infinity by."""

    name = "finite number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class Device(click.ParamType):
    """auto, cpu, cuda, mps, or cuda:N for one GPU of several."""

    name = "device"

    def convert(self, value, param, ctx):
        from medseg.choices import check_device
        from medseg.errors import MedsegError

        try:
            check_device(value)
        except MedsegError as exc:
            self.fail(str(exc).removeprefix("device "), param, ctx)
        return value

    def get_metavar(self, param, ctx=None):
        return "[" + "|".join(DEVICES) + "|cuda:N]"


def _ranged(rule):
    """The click type of a numeric setting, made from its rule (medseg.choices.Number), which
    the settings' own classes check again for the Python API: one range, both doors."""
    if rule.whole:
        return click.IntRange(min=rule.lo, max=rule.hi, min_open=rule.lo_open)
    return Finite(min=rule.lo, max=rule.hi, min_open=rule.lo_open)


def _train_number(name: str):
    return _ranged(NUMBER_RULES[name])


def _infer_number(name: str):
    return _ranged({**ENGINE_NUMBERS, **RUN_NUMBERS}[name])


def _parse_triple(kind, lo, hi):
    """A callback for 'x,y,z': three finite numbers of `kind` from lo to hi."""
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            parts = tuple(kind(v) for v in value.split(","))
        except ValueError:
            raise click.BadParameter(f"expected three comma-separated numbers, got {value!r}") \
                from None
        if len(parts) != 3 or not all(math.isfinite(p) and lo <= p <= hi for p in parts):
            raise click.BadParameter(f"expected three numbers from {lo:g} to {hi:g} like "
                                     f"{kind(3)},{kind(3)},{kind(3)}, got {value!r}")
        return parts

    return parse


def _names(choices) -> str:
    """'a, b or c' from a tuple or a registry's keys."""
    names = list(choices)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _default(options_class, name: str):
    """A dataclass field's default: TrainConfig, EngineOptions and RunOptions are the one
    source."""
    field = {f.name: f for f in dataclasses.fields(options_class)}[name]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def _train_help(name: str, text: str = "") -> str:
    """Help text ending in TrainConfig's default for the setting; None means the plan sets it."""
    value = _default(TrainConfig, name)
    shown = "planned from the data" if value is None else value
    return f"{text} [default: {shown}]".lstrip()


def user_errors(command):
    """Turn MedsegError (also when wrapped by a library) into one clear line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from medseg.errors import find_medseg_error

        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("interrupted: finished outputs are kept, nothing half-written", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            error = find_medseg_error(exc)
            if error is None:
                raise
            click.echo(f"error: {error}", err=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


class _ProgressSafeHandler(logging.StreamHandler):
    """Writes log lines through tqdm, so a warning gets its own line, not the end of a bar's."""

    def emit(self, record) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _prepare_runtime() -> None:
    from medseg.runtime import tune_allocator

    logger = logging.getLogger("medseg")
    if not any(isinstance(h, _ProgressSafeHandler) for h in logger.handlers):  # once a process
        handler = _ProgressSafeHandler()
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        logger.addHandler(handler)
    logger.propagate = False
    tune_allocator()


@click.group()
@click.version_option(package_name="medseg")
def main():
    """medseg: multi-organ segmentation of abdominal CT."""


@main.command()
@click.argument("outdir", type=GivenPath(file_okay=False, path_type=Path))
@click.option("--cases", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--spacing", callback=_parse_triple(float, *SYNTH_SPACING_MM), default=None,
              help="Fix the voxel spacing in mm (x,y,z); by default it varies per case.")
@click.option("--phase", type=click.Choice(PHASES),
              help="Fix the contrast phase; by default it varies per case.")
@user_errors
def synth(outdir: Path, cases: int, seed: int, spacing, phase):
    """Write a synthetic abdominal CT data set (imagesTr, labelsTr, dataset.json)."""
    from medseg.data.synth import write_synthetic_dataset

    manifest = write_synthetic_dataset(outdir, cases, seed=seed, spacing=spacing, phase=phase)
    click.echo(f"wrote {cases} cases and {manifest}")


def training_options(command):
    """The options `train` and `crossval` share: a recipe's settings, each overridable."""
    for option in reversed(TRAINING_OPTIONS):
        command = option(command)
    return command


TRAINING_OPTIONS = [
    click.option("--recipe", type=GivenPath(path_type=Path), help=(
        "A recipe (pipelines/*.yaml) of settings; options given here override it.")),
    click.option("--pipeline", "old_recipe", type=GivenPath(path_type=Path), hidden=True),
    click.option("--manifest", type=GivenPath(path_type=Path), help=(
        "A data set: Decathlon or nnU-Net v2 dataset.json, or a JSON combining several "
        "('datasets').")),
    click.option("--output", type=GivenPath(file_okay=False, path_type=Path)),
    # Unset options (None) fall back to the recipe, then to TrainConfig, whose defaults help
    # shows.
    click.option("--network", "model", help=_train_help(
        "model", f"The architecture: {_names(NETWORKS)} (docs/models.md).")),
    click.option("--model", "old_model", hidden=True),
    click.option("--dims", "spatial_dims", type=_train_number("spatial_dims"), help=_train_help(
        "spatial_dims", "3: volume patches; 2: axial slices of the same volumes.")),
    click.option("--context-slices", type=_train_number("context_slices"), help=_train_help(
        "context_slices", "2D: K neighbouring slices each side as extra channels (2.5D).")),
    click.option("--upsample", help=f"Decoder upsampling (unet, fcn, deeplabv3plus): "
                                    f"{_names(UPSAMPLING)} [default: the network's own]."),
    click.option("--deep-supervision", is_flag=True,
                 help="unet: also supervise coarser outputs."),
    click.option("--loss", help=_train_help("loss", f"{_names(LOSSES)}.")),
    click.option("--squared-dice", is_flag=True, help="Soft Dice with squared denominators."),
    click.option("--include-background", is_flag=True,
                 help="Count the background in Dice too."),
    click.option("--class-weights",
                 help="One weight per class, background first, e.g. 0.5,1,2."),
    click.option("--dice-weight", type=Finite(min=0), help="Scales the Dice term."),
    click.option("--ce-weight", type=Finite(min=0), help="Scales the cross-entropy term."),
    click.option("--epochs", type=_train_number("epochs"), help=_train_help("epochs")),
    click.option("--iters-per-epoch", type=_train_number("iters_per_epoch"),
                 help=_train_help("iters_per_epoch")),
    click.option("--batch-size", type=_train_number("batch_size"), help=_train_help("batch_size")),
    click.option("--lr", type=_train_number("lr"),
                 help=_train_help("lr", "Peak learning rate.")),
    click.option("--spacing", callback=_parse_triple(float, *WORKING_SPACING_MM),
                 help=_train_help("spacing", "Working spacing in mm, e.g. 3,3,3.")),
    click.option("--patch-size", callback=_parse_triple(int, 1, MAX_PATCH), help=_train_help(
        "patch_size", "e.g. 96,96,32; in 2D only the first two are used.")),
    click.option("--channels", default=None, help=(
        "Encoder widths per level, e.g. 16,32,64,128,256 [default: planned for resunet].")),
    click.option("--val-every", type=_train_number("val_every"),
                 help=_train_help("val_every", "Epochs between validations.")),
    click.option("--device", type=Device(), help=_train_help("device")),
    click.option("--seed", type=int, help=_train_help("seed")),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), help=_train_help("optimizer")),
    click.option("--schedule", type=click.Choice(SCHEDULES), help=_train_help("schedule")),
    click.option("--warmup-iters", type=_train_number("warmup_iters"),
                 help=_train_help("warmup_iters")),
    click.option("--augment", type=click.Choice(AUGMENTATIONS), help=_train_help("augment")),
    click.option("--precision", type=click.Choice(PRECISIONS), help=_train_help(
        "precision", "Mixed precision: auto is bf16 on CUDA and on CPUs with native bf16, "
        "else fp32.")),
    click.option("--compile", "compile_model", is_flag=True, default=None,
                 help="torch.compile the network (slow start, faster steps on GPUs)."),
    click.option("--workers", "num_workers", type=_train_number("num_workers"),
                 help=_train_help("num_workers", "Data-loading processes.")),
    click.option("--cache-dir", type=GivenPath(file_okay=False, path_type=Path), help=(
        "Keep resampled cases on disk here instead of in memory (for data sets larger than "
        "RAM), and reuse them in later runs.")),
    click.option("--plan", type=GivenPath(path_type=Path), help=(
        "A plan from `medseg plan` [default: plan.json beside the manifest, if any].")),
    click.option("--init-from", type=GivenPath(exists=True, path_type=Path), help=(
        "Fine-tune: start from this model's weights (a medseg run folder or checkpoint, or an "
        "nnU-Net model folder), with its network; organs are matched by name.")),
]


@main.command()
@training_options
@click.option("--fold", type=_train_number("fold"), help="Validate on this fold of --folds.")
@click.option("--folds", type=_train_number("folds"),
              help=_train_help("folds", "Folds for --fold."))
@click.option("--resume", is_flag=True, help="Continue OUTPUT's run from its last.pt.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run OUTPUT holds (its checkpoints and logs) with a new one.")
@click.option("--nproc", default=1, type=click.IntRange(min=1),
              help="Processes (one per GPU) training with DDP, launched with torchrun.")
@user_errors
def train(resume, overwrite, nproc, **options):
    """Train a segmentation model; writes best.pt, last.pt, log.csv and config.json to OUTPUT."""
    recipe, overrides = _training_settings(options)
    _start_ranks(nproc)
    from medseg.api import train as run_training

    result = run_training(recipe=recipe, resume=resume, overwrite=overwrite, **overrides)
    from medseg.distributed import is_main_process

    if is_main_process():
        click.echo(f"best validation Dice {result['best_val_dice']:.3f} "
                   f"in {result['seconds']:.0f}s; checkpoints in {result['output']}")


@main.command()
@training_options
@click.option("--folds", default=5, show_default=True, type=click.IntRange(min=2),
              help="Folds; each case is held out by one of them.")
@click.option("--overwrite", is_flag=True,
              help="Start the cross-validation in OUTPUT again, deleting its folds.")
@click.option("--nproc", default=1, type=click.IntRange(min=1),
              help="Processes (one per GPU) training folds side by side, under torchrun.")
@user_errors
def crossval(folds, overwrite, nproc, **options):
    """Cross-validate: train every fold, predict and evaluate the held-out cases, choose each
    organ's postprocessing. OUTPUT is then a model for `medseg infer`; rerun to continue."""
    recipe, overrides = _training_settings(options)
    _start_ranks(nproc)
    from medseg.api import crossval as run_crossval
    from medseg.distributed import is_main_process

    summary = run_crossval(recipe=recipe, folds=folds, overwrite=overwrite, **overrides)
    if is_main_process():
        click.echo(f"out-of-fold mean Dice {summary['mean_dice']:.3f}, with the chosen "
                   f"postprocessing {summary['mean_dice_postprocessed']:.3f}; the model is "
                   f"{overrides.get('output') or 'the recipe output'}")


def _start_ranks(nproc: int) -> None:
    """Relaunch under torchrun for several processes; then set up torch for this one."""
    if nproc > 1:
        _relaunch_with_torchrun(nproc)
    _prepare_runtime()


def _training_settings(options: dict) -> tuple:
    """(recipe, TrainConfig overrides) from TRAINING_OPTIONS' values (consumed from options)."""
    old_recipe, old_model = options.pop("old_recipe"), options.pop("old_model")
    recipe = options.pop("recipe") or old_recipe  # --pipeline: the option's old name
    options["model"] = options["model"] or old_model  # --model: likewise
    model_kwargs = {"channels": _parse_numbers(options.pop("channels"), int, "--channels",
                                               minimum=1),
                    "upsample": options.pop("upsample"),
                    "deep_supervision": options.pop("deep_supervision") or None}
    loss_kwargs = {"squared_pred": options.pop("squared_dice") or None,
                   "include_background": options.pop("include_background") or None,
                   "class_weights": _parse_numbers(options.pop("class_weights"), float,
                                                   "--class-weights"),
                   "lambda_dice": options.pop("dice_weight"),
                   "lambda_ce": options.pop("ce_weight")}
    options["compile"] = options.pop("compile_model")
    overrides = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    for key, values in (("model_kwargs", model_kwargs), ("loss_kwargs", loss_kwargs)):
        given = {k: v for k, v in values.items() if v is not None}
        if given:  # replaces the recipe's own model_kwargs / loss_kwargs
            overrides[key] = given
    return recipe, overrides


def _parse_numbers(text: str | None, kind, option: str, minimum: float = 0):
    """'16,32,64' -> (16, 32, 64); None stays None."""
    if text is None:
        return None
    try:
        numbers = tuple(kind(v) for v in text.split(","))
    except ValueError:
        numbers = ()
    if not numbers or not all(math.isfinite(n) and n >= minimum for n in numbers):
        raise click.BadParameter(f"expected comma-separated finite numbers of at least "
                                 f"{minimum:g}, got {text!r}", param_hint=option)
    return numbers


@main.command()
@click.option("--manifest", required=True, type=GivenPath(path_type=Path))
@click.option("--output", type=GivenPath(dir_okay=False, path_type=Path),
              help="Where to write the plan [default: plan.json beside the manifest, which "
                   "`medseg train` then uses].")
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES),
              help="The device training will use: a CPU plan keeps steps affordable (coarser "
                   "spacing, a smaller network), a GPU plan fills --memory-gb.")
@click.option("--memory-gb", type=Finite(min=0.5),
              help="GPU memory budget for one training step [default: 80% of the GPU's].")
@click.option("--overwrite", is_flag=True, help="Replace a plan already at the output path.")
@user_errors
def plan(manifest, output, device, memory_gb, overwrite):
    """Fingerprint a data set and plan training: spacing, normalisation, patch, batch, network."""
    from medseg.api import plan as make_plan
    from medseg.training.planning import plan_summary

    result, target = make_plan(manifest, output, device, memory_gb, overwrite)
    click.echo(f"{plan_summary(result)}; wrote {target}")


@main.command()
@click.option("--model", "checkpoints", required=True, multiple=True,
              type=GivenPath(path_type=Path),
              help="A trained model: a run folder (uses best.pt) or a checkpoint file (repeat to "
                   "ensemble folds); a cross-validation folder; an nnU-Net v2 trained-model "
                   "folder; a MONAI bundle folder; or a name `medseg models` lists, e.g. "
                   "totalsegmentator:total_fast (fetched on first use).")
@click.option("--input", "inputs", required=True, type=GivenPath(path_type=Path),
              help="A scan (NIfTI, NRRD, MHA), a DICOM series folder, or a folder of them.")
@click.option("--output", required=True, type=GivenPath(file_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Redo cases whose mask already exists.")
@click.option("--overlap", type=_infer_number("overlap"),
              default=_default(EngineOptions, "overlap"),
              show_default=True, help="Fraction by which sliding windows overlap.")
@click.option("--sw-batch-size", default=_default(EngineOptions, "sw_batch_size"),
              show_default=True, type=_infer_number("sw_batch_size"))
@click.option("--tta", is_flag=True,
              help="Average over anterior-posterior and superior-inferior mirror images.")
@click.option("--precision", default=_default(EngineOptions, "precision"), show_default=True,
              type=click.Choice(PRECISIONS), help="auto: bf16 on CUDA, fp32 on CPU.")
@click.option("--keep-largest", is_flag=True, help="Keep each organ's largest component only.")
@click.option("--min-volume", "min_volume_mm3", default=_default(RunOptions, "min_volume_mm3"),
              show_default=True, type=_infer_number("min_volume_mm3"),
              help="Remove components smaller than this many mm3.")
@click.option("--save-probabilities", is_flag=True,
              help="Also write CASE_probabilities.nii.gz (uint8, probability x 255).")
@click.option("--device", default=_default(EngineOptions, "device"), show_default=True,
              type=Device(), help="auto: CUDA if there is one, else the CPU; cuda:1 picks a GPU "
                                  "of several; mps: an Apple GPU.")
@click.option("--folds", default=None,
              help="nnU-Net model folders: the folds to average, e.g. 0,1,2 or all "
                   "[default: every fold present].")
@click.option("--offline", is_flag=True,
              help="Fetch no model (as MEDSEG_OFFLINE=1); a model not installed is an error.")
@click.option("--roi-subset", default=None,
              help="Only these organs, e.g. liver,spleen, named as the model's labels name them "
                   "(TotalSegmentator tasks run only the parts that have them).")
@click.option("--output-type", "output_types", multiple=True, default=("nifti",),
              show_default=True, type=click.Choice(OUTPUT_TYPES),
              help="Repeat for several. The NIfTI mask is always written; dicom-seg "
                   "(CASE.seg.dcm) and rtstruct (CASE.rtstruct.dcm) need DICOM series inputs "
                   "(docs/outputs.md).")
@click.option("--statistics", is_flag=True,
              help="Per organ: volume, HU statistics, extent, cut off at the scan's edge "
                   "(CASE.stats.json, statistics.csv).")
@click.option("--preview", is_flag=True,
              help="A picture per scan with the organs over the CT (CASE.preview.png) and "
                   "index.html.")
@click.option("--crf", is_flag=True,
              help="Refine with a fully connected CRF on the CT intensities (DeepLab's "
                   "post-processing; docs/models.md says where it helps and where it hurts).")
@click.option("--crf-iterations", type=_infer_number("crf_iterations"),
              show_default=True, default=_default(EngineOptions, "crf_iterations"),
              help="Mean-field iterations.")
@click.option("--crf-appearance-mm", type=_infer_number("crf_appearance_mm"), show_default=True,
              default=_default(EngineOptions, "crf_appearance_mm"),
              help="Spatial width of the appearance kernel (voxels of similar HU agree).")
@click.option("--crf-appearance-hu", type=_infer_number("crf_appearance_hu"), show_default=True,
              default=_default(EngineOptions, "crf_appearance_hu"),
              help="Intensity width of the appearance kernel.")
@click.option("--crf-appearance-weight", type=_infer_number("crf_appearance_weight"),
              show_default=True,
              default=_default(EngineOptions, "crf_appearance_weight"))
@click.option("--crf-smoothness-mm", type=_infer_number("crf_smoothness_mm"), show_default=True,
              default=_default(EngineOptions, "crf_smoothness_mm"),
              help="Width of the smoothness kernel (neighbours agree).")
@click.option("--crf-smoothness-weight", type=_infer_number("crf_smoothness_weight"),
              show_default=True,
              default=_default(EngineOptions, "crf_smoothness_weight"))
@click.option("--nproc", default=1, show_default=True, type=click.IntRange(min=1),
              help="Processes (one per GPU) that split the cases, launched with torchrun.")
@user_errors
def infer(checkpoints, inputs, output, nproc, **options):
    """Segment scans; writes one uint8 NIfTI mask per scan, on the scan's own grid (with
    CASE.labels.json), and the outputs asked for beside it (docs/outputs.md)."""
    _start_ranks(nproc)
    from medseg.api import infer as run_inference
    from medseg.distributed import rank_and_world

    results = run_inference(checkpoints, inputs, output, **options)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    if rank_and_world()[0] == 0:
        click.echo(f"{counts['done']} done, {counts['skipped']} skipped (exist; --overwrite "
                   f"redoes them), {counts['failed']} failed; masks in {output}")
        for r in results:
            if r.status == "failed":
                click.echo(f"failed: {r.error}", err=True)
    if counts["failed"]:
        sys.exit(EXIT_CASES_FAILED)


def _relaunch_with_torchrun(nproc: int) -> None:
    """Re-run this very command under torchrun with nproc ranks, minus the --nproc option."""
    import subprocess

    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg == "--nproc":
            del args[i:i + 2]
            break
        if arg.startswith("--nproc="):
            del args[i]
            break
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "cli", *args]
    # A rank that dies in native code then names its Python line, not just "SIGABRT".
    env = {"PYTHONFAULTHANDLER": "1", **os.environ}
    sys.exit(subprocess.call(command, env=env))


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model, for scripts.")
@user_errors
def models_command(as_json):
    """List the models medseg can fetch and run: source, network, classes, spacing, size,
    licence, and whether and where each is installed."""
    import json

    from medseg.api import models

    listed = models()
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    for row in listed:
        size = (f"{row['download_bytes'] / 1e6:.0f} MB" if row["download_bytes"]
                else "size not listed")
        state = ("installed in " + row["where"] if row["installed"] else
                 "not installed" if row["fetchable"] else row["where"])
        classes = (f"{row['classes']} classes at {row['spacing']}" if row["classes"]
                   else "classes not listed")
        click.echo(f"{row['name']}: {row['source']}; {row['network']}; {classes}; {size}; "
                   f"licence {row['licence']}; {state}")
        if row["abdominal"]:
            click.echo(f"    abdominal organs: {', '.join(row['abdominal'])}")


@main.command()
@click.argument("name")
@click.option("--offline", is_flag=True,
              help="Touch no network (as MEDSEG_OFFLINE=1): only say whether it is installed.")
@user_errors
def download(name, offline):
    """Fetch and install a model `medseg models` lists (e.g. totalsegmentator:total_fast)."""
    _prepare_runtime()
    from medseg.api import download as fetch

    folders = fetch(name, offline=offline)
    click.echo(f"{name}: installed in {', '.join(folders)}")


@main.command()
@click.option("--pred", required=True, type=GivenPath(path_type=Path),
              help="Predicted masks: a file or a folder (cases matched to --ref by name).")
@click.option("--ref", required=True, type=GivenPath(path_type=Path), help="Reference masks.")
@click.option("--output", required=True, type=GivenPath(file_okay=False, path_type=Path))
@click.option("--labels", "labels_spec", default=None,
              help="Label map for both sides: a JSON file (dataset.json or {name: id}) or a "
                   "shipped map (synthetic, btcv, amos, flare22, totalseg_v2); default: "
                   "dataset.json beside the reference folder.")
@click.option("--ref-labels", "ref_spec", default=None,
              help="Label map of the references (file or shipped name); overrides --labels.")
@click.option("--pred-labels", "pred_spec", default=None,
              help="Label map of the predictions; organs are paired with the references by name.")
@click.option("--nsd-tolerance", default=2.0, show_default=True, type=Finite(min=0),
              help="Normalised surface Dice tolerance in mm.")
@click.option("--resample-pred", is_flag=True,
              help="Resample predictions on another grid onto the reference grid (nearest "
                   "neighbour) instead of refusing them.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Cases evaluated in parallel [default: min(CPU count, cases)].")
@click.option("--no-figures", is_flag=True, help="Skip the PNG figures of report.html.")
@user_errors
def evaluate(pred, ref, output, labels_spec, ref_spec, pred_spec, nsd_tolerance, resample_pred,
             workers, no_figures):
    """Dice, IoU, HD95, NSD and volumes per organ: per_case.csv, summary.json, report.md/.html."""
    _prepare_runtime()  # warnings (a reference without its prediction) on lines of their own
    from medseg.api import evaluate as run_evaluation
    from medseg.evaluation.report import markdown_table

    summary = run_evaluation(pred, ref, output, labels=labels_spec, ref_labels=ref_spec,
                             pred_labels=pred_spec, nsd_tolerance=nsd_tolerance,
                             resample_pred=resample_pred, workers=workers,
                             figures=not no_figures, progress=True)
    click.echo(markdown_table(summary))
    click.echo(f"wrote per_case.csv, summary.json, report.md and report.html to {output}")


@main.command()
@click.option("--images", required=True, type=GivenPath(path_type=Path),
              help="The scans: a folder of NIfTI/NRRD/MHA files or DICOM series folders.")
@click.option("--annotations", required=True, type=GivenPath(file_okay=False, path_type=Path),
              help="Per case: CASE.dcm (an RTSTRUCT or DICOM-SEG) or CASE/ (one mask per organ).")
@click.option("--output", required=True, type=GivenPath(file_okay=False, path_type=Path),
              help="The nnU-Net v2 raw data set to write (imagesTr, labelsTr, dataset.json).")
@click.option("--labels", "labels_spec", default=None,
              help="Label map fixing the ids (file or shipped name); default: the organ names "
                   "found, sorted.")
@user_errors
def convert(images, annotations, output, labels_spec):
    """Turn scans and their RTSTRUCT, DICOM-SEG or per-organ annotations into a data set."""
    _prepare_runtime()
    from medseg.api import convert as run_convert

    result = run_convert(images, annotations, output, labels=labels_spec)
    click.echo(f"converted {len(result['cases'])} cases into {output}/dataset.json")
    for key in ("unknown_organs", "images_without_annotation", "annotations_without_image"):
        if result[key]:
            click.echo(f"{key.replace('_', ' ')}: {', '.join(result[key])}", err=True)


@main.command()
@click.argument("rundir", type=GivenPath(file_okay=False, path_type=Path))
@click.option("--output", type=GivenPath(dir_okay=False, path_type=Path), default=None,
              help="PNG to write [default: RUNDIR/training_curves.png].")
@user_errors
def report(rundir, output):
    """Draw training curves (loss, per-organ validation Dice) from RUNDIR/log.csv as a PNG."""
    from medseg.data.files import check_not_input
    from medseg.training.log import training_curves

    target = output or rundir / "training_curves.png"
    check_not_input(target, [rundir / "log.csv"])
    path = training_curves(rundir / "log.csv", target)
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()

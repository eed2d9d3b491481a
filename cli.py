"""The `medseg` command line: synth, train, infer, evaluate.

Imports of torch and MONAI happen inside the commands, so `medseg --help` answers at once.
A user mistake (MedsegError) is printed as one line with exit code 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

EXIT_USER_ERROR = 2
EXIT_CASES_FAILED = 1
EXIT_INTERRUPTED = 130


def _parse_triple(kind):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            parts = tuple(kind(v) for v in value.split(","))
        except ValueError:
            raise click.BadParameter(f"expected three comma-separated numbers, got {value!r}") \
                from None
        if len(parts) != 3 or any(p <= 0 for p in parts):
            raise click.BadParameter(f"expected three positive numbers like 3,3,3, got {value!r}")
        return parts

    return parse


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


def _prepare_runtime() -> None:
    from medseg.runtime import tune_allocator

    tune_allocator()


@click.group()
@click.version_option(package_name="medseg")
def main():
    """medseg: multi-organ segmentation of abdominal CT."""


@main.command()
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cases", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--spacing", callback=_parse_triple(float), default=None,
              help="Fix the voxel spacing in mm (x,y,z); by default it varies per case.")
@user_errors
def synth(outdir: Path, cases: int, seed: int, spacing):
    """Write a synthetic abdominal CT data set (imagesTr, labelsTr, dataset.json)."""
    from medseg.synth import write_synthetic_dataset

    manifest = write_synthetic_dataset(outdir, cases, seed=seed, spacing=spacing)
    click.echo(f"wrote {cases} cases and {manifest}")


@main.command()
@click.option("--manifest", required=True, type=click.Path(path_type=Path),
              help="Decathlon dataset.json with 'labels' and 'training'.")
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path))
# Unset options fall back to TrainConfig's defaults, so they are defined in one place.
@click.option("--model", help="unet, unet3d, fcn, dilated, deeplabv3, deeplabv3plus or pspnet "
                              "(docs/models.md) [default: unet3d].")
@click.option("--dims", "spatial_dims", type=click.IntRange(2, 3),
              help="3: volume patches; 2: axial slices of the same volumes [default: 3].")
@click.option("--context-slices", type=click.IntRange(min=0),
              help="2D: K neighbouring slices each side as extra channels (2.5D) [default: 0].")
@click.option("--upsample", help="Decoder upsampling (unet, fcn, deeplabv3plus): transpose, "
                                 "nearest, linear, bed_of_nails or unpool [model's default].")
@click.option("--deep-supervision", is_flag=True, help="unet: also supervise coarser outputs.")
@click.option("--loss", help="ce, dice or dice_ce [default: dice_ce].")
@click.option("--squared-dice", is_flag=True, help="Soft Dice with squared denominators.")
@click.option("--include-background", is_flag=True, help="Count the background in Dice too.")
@click.option("--class-weights", help="One weight per class, background first, e.g. 0.5,1,2.")
@click.option("--dice-weight", type=click.FloatRange(min=0), help="Dice term's weight [1].")
@click.option("--ce-weight", type=click.FloatRange(min=0), help="CE term's weight [1].")
@click.option("--epochs", type=click.IntRange(min=1), help="[default: 40]")
@click.option("--iters-per-epoch", type=click.IntRange(min=1), help="[default: 25]")
@click.option("--batch-size", type=click.IntRange(min=1), help="[default: 2]")
@click.option("--lr", type=float, help="Peak learning rate [default: 0.003].")
@click.option("--spacing", callback=_parse_triple(float), help="Working spacing in mm [4,4,4].")
@click.option("--patch-size", callback=_parse_triple(int),
              help="[default: 80,64,48]; in 2D only the first two are used.")
@click.option("--channels", default=None, help="Encoder widths per level, e.g. 16,32,64,128,256.")
@click.option("--val-every", type=click.IntRange(min=1), help="Epochs between validations [5].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="[default: auto]")
@click.option("--seed", type=int, help="[default: 0]")
@user_errors
def train(manifest, output, channels, upsample, deep_supervision, squared_dice,
          include_background, class_weights, dice_weight, ce_weight, **options):
    """Train a segmentation model; writes best.pt, last.pt, log.csv and config.json to OUTPUT."""
    _prepare_runtime()
    from medseg.train import TrainConfig
    from medseg.train import train as run_training

    overrides = {k: v for k, v in options.items() if v is not None}
    model_kwargs = {"channels": _parse_numbers(channels, int, "--channels"),
                    "upsample": upsample, "deep_supervision": deep_supervision or None}
    loss_kwargs = {"squared_pred": squared_dice or None,
                   "include_background": include_background or None,
                   "class_weights": _parse_numbers(class_weights, float, "--class-weights"),
                   "lambda_dice": dice_weight, "lambda_ce": ce_weight}
    config = TrainConfig(manifest=str(manifest), output=str(output), **overrides,
                         model_kwargs={k: v for k, v in model_kwargs.items() if v is not None},
                         loss_kwargs={k: v for k, v in loss_kwargs.items() if v is not None})
    result = run_training(config)
    click.echo(f"best validation Dice {result['best_val_dice']:.3f} "
               f"in {result['seconds']:.0f}s; checkpoints in {output}")


def _parse_numbers(text: str | None, kind, option: str):
    """'16,32,64' -> (16, 32, 64); None stays None."""
    if text is None:
        return None
    try:
        return tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}",
                                 param_hint=option) from None


@main.command()
@click.option("--model", "checkpoint", required=True, type=click.Path(path_type=Path),
              help="A run folder (uses best.pt) or a checkpoint file.")
@click.option("--input", "inputs", required=True, type=click.Path(path_type=Path),
              help="A scan (NIfTI, NRRD, MHA), a DICOM series folder, or a folder of them.")
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Redo cases whose mask already exists.")
@click.option("--overlap", default=0.5, show_default=True, type=click.FloatRange(0, 0.95))
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda"]))
@user_errors
def infer(checkpoint, inputs, output, overwrite, overlap, device):
    """Segment scans; writes one uint8 NIfTI mask per scan, on the scan's own grid."""
    _prepare_runtime()
    from medseg.infer import infer_cases

    results = infer_cases(checkpoint, inputs, output, device=device, overwrite=overwrite,
                          overlap=overlap)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    click.echo(f"{counts['done']} done, {counts['skipped']} skipped (exist; --overwrite redoes "
               f"them), {counts['failed']} failed; masks in {output}")
    for r in results:
        if r.status == "failed":
            click.echo(f"failed: {r.error}", err=True)
    if counts["failed"]:
        sys.exit(EXIT_CASES_FAILED)


@main.command()
@click.option("--pred", required=True, type=click.Path(path_type=Path))
@click.option("--ref", required=True, type=click.Path(path_type=Path))
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--labels", "labels_file", type=click.Path(path_type=Path), default=None,
              help="Label map JSON (a dataset.json or {name: id}); default: dataset.json beside "
                   "the reference folder.")
@user_errors
def evaluate(pred, ref, output, labels_file):
    """Per-organ Dice of predicted masks against references: CSV, summary.json, report.md."""
    from medseg.evaluate import evaluate_folders, markdown_table
    from medseg.manifest import load_labels

    labels = load_labels(labels_file or _default_labels(ref))
    summary = evaluate_folders(pred, ref, output, labels)
    click.echo(markdown_table(summary))
    click.echo(f"wrote {output}/summary.json, per_case.csv and report.md")


def _default_labels(ref: Path) -> Path:
    from medseg.errors import MedsegError

    for candidate in (Path(ref).parent / "dataset.json", Path(ref) / "dataset.json"):
        if candidate.exists():
            return candidate
    raise MedsegError(f"no label map given and no dataset.json beside {ref}; pass --labels")


if __name__ == "__main__":
    main()

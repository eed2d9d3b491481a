"""Train every model on the same synthetic data for the same iterations; report held-out Dice.

    nice -n 10 python -m benchmarks.compare_models --output runs/compare [--iterations 300]

Synthesises 24 training and 4 held-out phantoms once (seeds 0 and 1), trains each model with the
default recipe (4 mm, 80 x 64 x 48 patches, batch 2, Dice+CE, 4 of the 24 cases for validation,
once at the end), segments the held-out scans and evaluates them at full resolution. Results
go to OUTPUT/results.json; a model already there is skipped, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from benchmarks.tables import organ_dice_table
from medseg.demo import ensure_dataset
from medseg.runtime import tune_allocator

TRAIN_CASES, HELDOUT_CASES = 24, 4
ITERS_PER_EPOCH = 25


def epochs_for(iterations: int) -> int:
    """Whole epochs of ITERS_PER_EPOCH that cover `iterations`."""
    return math.ceil(iterations / ITERS_PER_EPOCH)


def train_model(name: str, dims: int, out: Path, iterations: int, batch_size: int = 2,
                context_slices: int = 0) -> tuple[Path, dict, Path]:
    """Train one model on the 24 phantoms: (its run folder, train()'s result, the held-out
    data set's folder)."""
    from medseg.training.config import TrainConfig
    from medseg.training.loop import train

    train_manifest = ensure_dataset(out / "data" / "train", TRAIN_CASES, seed=0)
    heldout = ensure_dataset(out / "data" / "heldout", HELDOUT_CASES, seed=1).parent
    run = out / f"{name}_{dims}d"
    epochs = epochs_for(iterations)
    # The demo recipe's grid and patch for every model (docs/models.md); intensity is planned.
    config = TrainConfig(manifest=str(train_manifest), output=str(run), model=name,
                         spacing=(4.0, 4.0, 4.0), patch_size=(80, 64, 48),
                         spatial_dims=dims, context_slices=context_slices, epochs=epochs,
                         iters_per_epoch=ITERS_PER_EPOCH, batch_size=batch_size,
                         val_every=epochs)
    return run, train(config, overwrite=True), heldout  # its own folder, rerun


def run_model(name: str, dims: int, out: Path, iterations: int, batch_size: int = 2,
              context_slices: int = 0) -> dict:
    """Train one model, segment the held-out cases, and return its figures."""
    from medseg.data.labels import load_labels
    from medseg.evaluation.evaluate import evaluate_folders
    from medseg.inference.batch import infer_cases
    from medseg.inference.options import InferOptions

    run, trained, heldout = train_model(name, dims, out, iterations, batch_size, context_slices)
    start = time.perf_counter()
    infer_cases(run, heldout / "imagesTr", run / "predictions",
                InferOptions.from_keywords(overwrite=True))
    infer_seconds = (time.perf_counter() - start) / HELDOUT_CASES
    summary = evaluate_folders(run / "predictions", heldout / "labelsTr", run / "evaluation",
                               load_labels(heldout / "dataset.json"))
    return {"model": name, "dims": dims, "context_slices": context_slices,
            "batch_size": batch_size, "iterations": epochs_for(iterations) * ITERS_PER_EPOCH,
            "train_seconds": trained["seconds"], "infer_seconds_per_case": infer_seconds,
            "val_dice": trained["best_val_dice"], "heldout_dice": summary["mean_dice"],
            "organs": {k: v["dice_mean"] for k, v in summary["organs"].items()}}


def label(result: dict) -> str:
    """'unet 3D', or 'unet 2D (K=1)' for a 2.5D run."""
    k = result["context_slices"]
    return f"{result['model']} {result['dims']}D" + (f" (K={k})" if k else "")


def markdown(results: list[dict]) -> str:
    """Mean and per-organ held-out Dice with the training cost, as Markdown tables."""
    lines = ["| model | batch | iterations | training min (incl. caching) | inference s/case | "
             "held-out mean Dice |", "|---|---|---|---|---|---|"]
    lines += [f"| {label(r)} | {r['batch_size']} | {r['iterations']} | "
              f"{r['train_seconds'] / 60:.1f} | {r['infer_seconds_per_case']:.1f} | "
              f"{r['heldout_dice']:.3f} |" for r in results]
    organs = organ_dice_table([label(r) for r in results], results, digits=2)
    return "\n".join(lines) + "\n\n" + organs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/compare"))
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--models", default="resunet,unet,fcn,dilated,deeplabv3,deeplabv3plus,"
                                            "pspnet", help="comma-separated registry names")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=3)
    parser.add_argument("--context-slices", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=2,
                        help="patches (3D) or slices (2D) per iteration")
    args = parser.parse_args()
    tune_allocator()
    path = args.output / "results.json"
    results = json.loads(path.read_text()) if path.exists() else []
    for name in args.models.split(","):
        if any(r["model"] == name and r["dims"] == args.dims
               and r.get("context_slices", 0) == args.context_slices for r in results):
            continue
        results.append(run_model(name, args.dims, args.output, args.iterations,
                                 args.batch_size, args.context_slices))
        path.write_text(json.dumps(results, indent=1))
        print(markdown(results[-1:]), flush=True)
    print(markdown(results))


if __name__ == "__main__":
    main()

"""`medseg crossval` at full length: out-of-fold Dice without and with the chosen postprocessing.

    nice -n 10 python -m benchmarks.crossval --output runs/crossval [--folds 5 --iterations 300]

Cross-validates the 24 training phantoms (seed 0) with compare_models.py's recipe (resunet,
4 mm, 80 x 64 x 48 patches, batch 2), each fold for --iterations, then segments the 4 held-out
phantoms (seed 1) with the folder as a model (folds ensembled, postprocessing applied) and
with fold 0 alone. Prints the out-of-fold mean and per-organ Dice without and with each
organ's chosen postprocessing, what was chosen, and the held-out Dice. Rerunning continues a
stopped cross-validation (the command's own resume).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.compare_models import HELDOUT_CASES, ITERS_PER_EPOCH, TRAIN_CASES, epochs_for
from medseg.demo import ensure_dataset
from medseg.runtime import tune_allocator


def heldout_dice(model, heldout: Path, out: Path) -> dict:
    """Mean and per-organ Dice of a model on the held-out phantoms."""
    from medseg.data.labels import load_labels
    from medseg.evaluation.evaluate import evaluate_folders
    from medseg.inference.batch import infer_cases
    from medseg.inference.options import InferOptions

    infer_cases(model, heldout / "imagesTr", out / "predictions",
                InferOptions.from_keywords(overwrite=True))
    summary = evaluate_folders(out / "predictions", heldout / "labelsTr", out / "evaluation",
                               load_labels(heldout / "dataset.json"), figures=False)
    return {"mean": summary["mean_dice"],
            "organs": {k: v["dice_mean"] for k, v in summary["organs"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/crossval"))
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with train/ and heldout/ phantoms to reuse")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    tune_allocator()
    from medseg.cross_validation import crossval
    from medseg.training.config import TrainConfig

    data = args.data or args.output / "data"
    manifest = ensure_dataset(data / "train", TRAIN_CASES, seed=0)
    heldout = ensure_dataset(data / "heldout", HELDOUT_CASES, seed=1).parent
    epochs = epochs_for(args.iterations)
    folder = args.output / "model"
    config = TrainConfig(manifest=str(manifest), output=str(folder), model="resunet",
                         spacing=(4.0, 4.0, 4.0), patch_size=(80, 64, 48), epochs=epochs,
                         iters_per_epoch=ITERS_PER_EPOCH, batch_size=2, val_every=epochs)
    start = time.perf_counter()
    summary = crossval(config, folds=args.folds)
    seconds = time.perf_counter() - start
    ensemble = heldout_dice(folder, heldout, args.output / "heldout_ensemble")
    single = heldout_dice(folder / "fold_0", heldout, args.output / "heldout_fold0")
    result = {"folds": args.folds, "iterations_per_fold": epochs * ITERS_PER_EPOCH,
              "seconds_this_call": seconds, **summary,
              "heldout": {"ensemble_postprocessed": ensemble, "fold_0": single}}
    (args.output / "results.json").write_text(json.dumps(result, indent=1))
    print(markdown(result))


def markdown(result: dict) -> str:
    organs = result["organs"]
    lines = [f"{result['folds']} folds x {result['iterations_per_fold']} iterations; "
             f"this call {result['seconds_this_call'] / 60:.1f} min", "",
             "| organ | out-of-fold Dice | chosen | with it | held-out, fold 0 | "
             "held-out, folder (5 folds + postprocessing) |", "|---|---|---|---|---|---|"]
    for name, organ in organs.items():
        lines.append(f"| {name} | {organ['dice']:.3f} | {organ['chosen']} | "
                     f"{organ['dice_postprocessed']:.3f} | "
                     f"{result['heldout']['fold_0']['organs'][name]:.3f} | "
                     f"{result['heldout']['ensemble_postprocessed']['organs'][name]:.3f} |")
    lines.append(f"| **mean** | {result['mean_dice']:.3f} | | "
                 f"{result['mean_dice_postprocessed']:.3f} | "
                 f"{result['heldout']['fold_0']['mean']:.3f} | "
                 f"{result['heldout']['ensemble_postprocessed']['mean']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Partial labels: two data sets that each label some organs, trained as one; held-out Dice.

    nice -n 10 python -m benchmarks.partial_labels --output runs/partial [--iterations 500]

The 24 training phantoms (seed 0) are split into two data sets of 12 (--split halves: one labels
liver, spleen, both kidneys and the gallbladder, the other liver, stomach, aorta, inferior vena
cava and pancreas; three_hidden: each hides three organs the other labels); each leaves the
other's organs unlabelled and numbers its own organs from 1.
Three models are trained with the same recipe (compare_models.py's: resunet, 4 mm, 80 x 64 x 48
patches, batch 2) and segment the same 4 held-out phantoms (seed 1, every organ labelled):

- full: every case with every label (the ceiling);
- partial: the two data sets combined (organs matched by name; the loss merges the organs a
  case's data set does not label into its background: medseg.training.losses.merge_unannotated);
- background: the same masks with the full label map, unlabelled organs taken as background
  (what training does without partial-label handling).

Results go to OUTPUT/results.json; a variant already there is skipped, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.compare_models import HELDOUT_CASES, ITERS_PER_EPOCH, TRAIN_CASES, epochs_for
from benchmarks.tables import organ_dice_table
from medseg.demo import ensure_dataset
from medseg.runtime import tune_allocator

# Which organs each of the two data sets labels. "halves": each labels about half the organs
# (liver both); "three_hidden": each hides three others (nine labelled in one set, six in both).
SPLITS = {
    "halves": [["liver", "spleen", "right_kidney", "left_kidney", "gallbladder"],
               ["liver", "stomach", "aorta", "inferior_vena_cava", "pancreas"]],
    "three_hidden": [["spleen", "right_kidney", "left_kidney", "liver", "stomach",
                      "inferior_vena_cava"],
                     ["right_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]],
}
VARIANTS = ("full", "partial", "background")


def manifests(out: Path, data: Path, organ_sets: list[list[str]]) -> dict[str, Path]:
    """Each variant's training manifest (the split data sets are written once)."""
    from medseg.data.synth import write_partially_labelled

    full = ensure_dataset(data / "train", TRAIN_CASES, seed=0)
    combined = out / "data" / "partial" / "combined.json"
    if not combined.exists():
        write_partially_labelled(full, combined.parent, organ_sets)
    return {"full": full, "partial": combined,
            "background": combined.parent / "background" / "dataset.json"}


def run_variant(variant: str, manifest: Path, out: Path, heldout: Path,
                iterations: int) -> dict:
    """Train one variant, segment the held-out phantoms, evaluate them at full resolution."""
    from medseg.data.labels import load_labels
    from medseg.evaluation.evaluate import evaluate_folders
    from medseg.inference.batch import infer_cases
    from medseg.inference.options import InferOptions
    from medseg.training.config import TrainConfig
    from medseg.training.loop import train

    run = out / variant
    epochs = epochs_for(iterations)
    config = TrainConfig(manifest=str(manifest), output=str(run), model="resunet",
                         spacing=(4.0, 4.0, 4.0), patch_size=(80, 64, 48), epochs=epochs,
                         iters_per_epoch=ITERS_PER_EPOCH, batch_size=2, val_every=epochs)
    finished = (run / "last.pt").exists()  # a run trained before: continued (or kept) as is
    train(config, resume=finished, overwrite=not finished)
    seconds = float((run / "log.csv").read_text().splitlines()[-1].split(",")[-1])
    infer_cases(run, heldout / "imagesTr", run / "predictions",
                InferOptions.from_keywords(overwrite=True))
    # The combined map numbers organs its own way: predictions are read with their own map.
    summary = evaluate_folders(run / "predictions", heldout / "labelsTr", run / "evaluation",
                               load_labels(heldout / "dataset.json"),
                               pred_labels=load_labels(run / "predictions" / "labels.json"))
    return {"variant": variant, "iterations": epochs * ITERS_PER_EPOCH,
            "train_seconds": seconds, "heldout_dice": summary["mean_dice"],
            "organs": {k: v["dice_mean"] for k, v in summary["organs"].items()}}


def markdown(results: list[dict]) -> str:
    """Mean held-out Dice, its ratio to full labels', and per-organ Dice."""
    full = next((r["heldout_dice"] for r in results if r["variant"] == "full"), None)
    lines = ["| variant | iterations | training min | held-out mean Dice | / full labels |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['iterations']} | {r['train_seconds'] / 60:.1f} | "
              f"{r['heldout_dice']:.3f} | "
              f"{r['heldout_dice'] / full if full else float('nan'):.3f} |" for r in results]
    return "\n".join(lines) + "\n\n" + organ_dice_table([r["variant"] for r in results],
                                                        results, digits=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/partial"))
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with train/ and heldout/ phantoms to reuse (default: "
                             "OUTPUT/data, made once)")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--split", choices=sorted(SPLITS), default="halves")
    args = parser.parse_args()
    tune_allocator()
    data = args.data or args.output / "data"
    heldout = ensure_dataset(data / "heldout", HELDOUT_CASES, seed=1).parent
    paths = manifests(args.output, data, SPLITS[args.split])
    results_file = args.output / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    for variant in args.variants.split(","):
        if any(r["variant"] == variant for r in results):
            continue
        results.append(run_variant(variant, paths[variant], args.output, heldout,
                                   args.iterations))
        results_file.write_text(json.dumps(results, indent=1))
        print(markdown(results[-1:]), flush=True)
    print(markdown(sorted(results, key=lambda r: VARIANTS.index(r["variant"]))))


if __name__ == "__main__":
    main()

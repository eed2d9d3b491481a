"""`make demo`: synthesise data, train, segment held-out scans and report per-organ Dice.

Everything runs on the built-in synthetic phantoms, so it needs no download and no GPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from medseg.runtime import tune_allocator

# Sized for a 2-core CPU (its measured time and Dice: docs/demo.md). A GPU can afford far more.
DEMO_RECIPE = Path(__file__).resolve().parents[1] / "pipelines" / "demo_synthetic.yaml"
DEMO_TRAIN_CASES, DEMO_TEST_CASES = 48, 6
DEMO_TRAIN_SEED, DEMO_TEST_SEED = 0, 1


def ensure_dataset(folder: Path, cases: int, seed: int) -> Path:
    """Generate the synthetic set once; a rerun reuses it (same seed, same files)."""
    from medseg.data.synth import write_synthetic_dataset

    manifest = folder / "dataset.json"
    if not manifest.exists():
        write_synthetic_dataset(folder, cases, seed=seed)
    return manifest


# The real case in ../shared/data/real/petct_dicom: its organs, remapped by name from its
# TotalSegmentator mask (the kidneys lie below its 20 slices: kept as classes no case holds).
REAL_CASE_LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "right_kidney",
                    4: "left_kidney", 5: "stomach", 6: "aorta"}


def write_real_case(source: Path, folder: Path) -> Path:
    """The real DICOM series (source/dicom, linked as folder/images/petct) with its
    TotalSegmentator mask remapped to REAL_CASE_LABELS by name (folder/labels/petct.nii.gz),
    as a Decathlon data set; returns its dataset.json (reused when already there)."""
    import json

    import nibabel as nib
    import numpy as np

    from medseg.data.labels import remap_by_name, totalsegmentator_map

    folder, source = Path(folder), Path(source)
    manifest = folder / "dataset.json"
    if manifest.exists():
        return manifest
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    if not (folder / "images" / "petct").exists():
        (folder / "images" / "petct").symlink_to(source / "dicom")
    mask = nib.load(str(source / "reference_seg_totalsegmentator_v2fast.nii.gz"))
    totalseg = totalsegmentator_map(source / "totalseg_classmap_total_v2.json")["labels"]
    ours = remap_by_name(np.asarray(mask.dataobj), {int(k): v for k, v in totalseg.items()},
                         REAL_CASE_LABELS)
    nib.save(nib.Nifti1Image(ours, mask.affine, mask.header),
             str(folder / "labels" / "petct.nii.gz"))
    manifest.write_text(json.dumps({"labels": {str(k): v for k, v in REAL_CASE_LABELS.items()},
                                    "training": [{"image": "./images/petct",
                                                  "label": "./labels/petct.nii.gz"}]}))
    return manifest


def run_demo(out: Path, epochs: int, iters_per_epoch: int) -> dict:
    """The whole vertical slice: synth -> train -> infer -> evaluate."""
    from medseg.data.labels import load_labels
    from medseg.evaluation.evaluate import evaluate_folders, markdown_table
    from medseg.inference.batch import infer_cases
    from medseg.inference.options import InferOptions, RunOptions
    from medseg.training.loop import train
    from medseg.training.recipes import build_config

    timings, start = {}, time.perf_counter()
    train_manifest = ensure_dataset(out / "data" / "train", DEMO_TRAIN_CASES, DEMO_TRAIN_SEED)
    test_manifest = ensure_dataset(out / "data" / "heldout", DEMO_TEST_CASES, DEMO_TEST_SEED)
    timings["synth"] = time.perf_counter() - start

    config = build_config(DEMO_RECIPE, {"manifest": str(train_manifest), "output": str(out),
                                        "epochs": epochs, "iters_per_epoch": iters_per_epoch})
    # The demo's own run from last time, if any, is replaced on purpose (and says so).
    timings["train"] = train(config, overwrite=True)["seconds"]  # caching included

    t = time.perf_counter()
    heldout = test_manifest.parent
    results = infer_cases(out, heldout / "imagesTr", out / "predictions",
                          InferOptions(run=RunOptions(overwrite=True)))
    if any(r.status == "failed" for r in results):
        raise SystemExit("demo: inference failed on a held-out case")
    timings["infer"] = time.perf_counter() - t

    summary = evaluate_folders(out / "predictions", heldout / "labelsTr", out / "evaluation",
                               load_labels(test_manifest))
    timings["total"] = time.perf_counter() - start
    print(f"\nHeld-out synthetic cases ({DEMO_TEST_CASES}), per-organ Dice:\n")
    print(markdown_table(summary))
    print("\n" + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print(f"report: {out / 'evaluation' / 'summary.json'}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("runs/demo"))
    # Epochs and their length come from pipelines/demo_synthetic.yaml unless given here.
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--iters-per-epoch", type=int, default=None, help="default: the recipe's")
    args = parser.parse_args()
    tune_allocator()
    run_demo(args.output, args.epochs, args.iters_per_epoch)


if __name__ == "__main__":
    main()

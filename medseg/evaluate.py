"""Evaluation: per-case, per-organ Dice -> per-organ summary -> CSV, summary.json, report.md.

Empty-organ policy (as nnU-Net): an organ absent from both reference and prediction has Dice NaN
and is left out of the means; absent from only one side, its Dice is 0.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError
from medseg.io import atomic_output, case_name, list_scans, load_scan
from medseg.manifest import write_json

EMPTY_POLICY = ("Dice is NaN (excluded from means) when an organ is absent from both reference "
                "and prediction, and 0 when it is absent from only one of them.")


def load_label_volume(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A label volume as an int array and its affine; values must be organ ids of the label map."""
    volume = load_scan(path, what="mask")
    array = volume[0].numpy()
    if not np.array_equal(array, np.round(array)):
        raise MedsegError(f"{path}: mask holds non-integer values; is this an image, not a mask?")
    array = array.astype(np.int64)
    bad = np.unique(array[(array < 0) | (array >= num_classes)])
    if bad.size:
        raise MedsegError(f"{path}: label values {bad.tolist()} are not in the label map "
                          f"(0..{num_classes - 1}); pass the matching --labels file")
    return array, np.asarray(volume.affine)


def confusion_counts(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix counts[ref_label, pred_label] in one pass over the voxels."""
    flat = ref.ravel() * num_classes + pred.ravel()
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def dice_from_counts(counts: np.ndarray) -> np.ndarray:
    """Dice per class from a confusion matrix; NaN where the class is absent on both sides."""
    tp = np.diag(counts).astype(np.float64)
    ref_sizes, pred_sizes = counts.sum(axis=1), counts.sum(axis=0)
    denominator = (ref_sizes + pred_sizes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, np.nan)


def evaluate_case(pred_path: Path, ref_path: Path, labels: dict[int, str]) -> list[dict]:
    """One row per organ: Dice and voxel counts for one prediction/reference pair."""
    num_classes = len(labels)
    pred, pred_affine = load_label_volume(pred_path, num_classes)
    ref, ref_affine = load_label_volume(ref_path, num_classes)
    if pred.shape != ref.shape:
        raise MedsegError(f"{case_name(pred_path)}: prediction shape {pred.shape} differs from "
                          f"reference shape {ref.shape}")
    if not np.allclose(pred_affine, ref_affine, atol=1e-3):
        worst = float(np.abs(pred_affine - ref_affine).max())
        raise MedsegError(f"{case_name(pred_path)}: prediction and reference affines differ "
                          f"(by up to {worst:.3g}); they are not on the same grid")
    counts = confusion_counts(pred, ref, num_classes)
    dice = dice_from_counts(counts)
    return [{"case": case_name(ref_path), "organ": labels[c], "dice": float(dice[c]),
             "ref_voxels": int(counts[c].sum()), "pred_voxels": int(counts[:, c].sum())}
            for c in range(1, num_classes)]


def match_cases(pred_dir: Path, ref_dir: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair predictions with references by case name; also return references with no prediction."""
    preds = {case_name(p): p for p in list_scans(pred_dir)}
    refs = {case_name(p): p for p in list_scans(ref_dir)}
    pairs = [(preds[name], refs[name]) for name in sorted(refs) if name in preds]
    if not pairs:
        raise MedsegError(f"no case names in common between {pred_dir} and {ref_dir}")
    return pairs, sorted(set(refs) - set(preds))


def summarize(rows: list[dict], labels: dict[int, str], missing: list[str]) -> dict:
    """Per-organ mean/std/median/n of Dice (NaNs excluded) and the mean over organs."""
    organs = {}
    for organ in (labels[c] for c in sorted(labels) if c > 0):
        values = np.array([r["dice"] for r in rows if r["organ"] == organ], dtype=float)
        valid = values[~np.isnan(values)]
        organs[organ] = {
            "dice_mean": float(valid.mean()) if valid.size else None,
            "dice_std": float(valid.std()) if valid.size else None,
            "dice_median": float(np.median(valid)) if valid.size else None,
            "n": int(valid.size),
        }
    means = [o["dice_mean"] for o in organs.values() if o["dice_mean"] is not None]
    return {
        "organs": organs,
        "mean_dice": float(np.mean(means)) if means else None,
        "cases": len({r["case"] for r in rows}),
        "missing_predictions": missing,
        "empty_policy": EMPTY_POLICY,
        "labels": {str(k): v for k, v in labels.items()},
    }


def markdown_table(summary: dict) -> str:
    """The per-organ Dice table as Markdown (also what the CLI prints)."""
    lines = ["| organ | Dice mean | Dice std | n |", "|---|---|---|---|"]
    for organ, stats in summary["organs"].items():
        if stats["n"]:
            lines.append(f"| {organ} | {stats['dice_mean']:.3f} | {stats['dice_std']:.3f} "
                         f"| {stats['n']} |")
        else:
            lines.append(f"| {organ} | n/a | n/a | 0 |")
    if summary["mean_dice"] is not None:
        lines.append(f"| **mean over organs** | **{summary['mean_dice']:.3f}** | | "
                     f"{summary['cases']} cases |")
    return "\n".join(lines)


def evaluate_folders(pred_dir: Path, ref_dir: Path, out_dir: Path,
                     labels: dict[int, str]) -> dict:
    """Evaluate all matching cases and write per_case.csv, summary.json and report.md."""
    pairs, missing = match_cases(Path(pred_dir), Path(ref_dir))
    rows = [row for pred, ref in pairs for row in evaluate_case(pred, ref, labels)]
    summary = summarize(rows, labels, missing)
    out_dir = Path(out_dir)
    with atomic_output(out_dir / "per_case.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_json(summary, out_dir / "summary.json")
    report = (f"# Evaluation\n\nPredictions: `{pred_dir}`  \nReferences: `{ref_dir}`\n\n"
              f"{markdown_table(summary)}\n\n{EMPTY_POLICY}\n")
    if missing:
        report += f"\nReferences without a prediction: {', '.join(missing)}\n"
    with atomic_output(out_dir / "report.md") as tmp:
        tmp.write_text(report)
    return summary

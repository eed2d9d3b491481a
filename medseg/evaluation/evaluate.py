"""Evaluation as a chain of plain functions, as in nnU-Net: pair cases by name -> load each pair on
one grid -> per-organ metrics (metrics) -> per-organ summary -> per_case.csv, summary.json,
report.md and report.html (report, figures from figures).

Reference and prediction labels are paired by organ name (medseg.data.labels), so the two sides may
use different label maps; organs only one side can label are listed, not silently dropped.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NoReturn

import nibabel as nib
import numpy as np
from tqdm import tqdm

from medseg.data.files import atomic_output, case_name, check_apart, check_writable, write_json
from medseg.data.geometry import voxel_spacing, voxel_volume_ml
from medseg.data.io import load_mask
from medseg.data.labels import LabelMatch, match_label_maps
from medseg.errors import MedsegError
from medseg.evaluation.mask_files import is_organ_folder, list_cases, load_organ_folder
from medseg.evaluation.metrics import METRICS, case_metrics, label_boxes
from medseg.evaluation.report import html_report, markdown_report, markdown_table

log = logging.getLogger("medseg")

__all__ = ["evaluate_folders", "evaluate_case", "markdown_table", "EMPTY_POLICY"]

EMPTY_POLICY = (
    "An organ absent from both reference and prediction has every metric NaN and is left out of "
    "all means. Absent from only one side, its Dice, IoU and NSD are 0 and its HD95 is NaN (a "
    "distance to nothing is undefined); such cases are counted per organ as 'missed' (not "
    "predicted) or 'spurious' (predicted, not in the reference), so read mean HD95 together "
    "with those counts."
)
AFFINE_TOLERANCE_MM = 1e-3
CSV_FIELDS = ("case", "organ", "status", *METRICS, "ref_voxels", "pred_voxels")


def load_label_volume(path: Path, labels: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """A label volume as an integer array and its affine; whole, non-negative ids of `labels`.
    A folder of organ files becomes one label volume."""
    if is_organ_folder(path):
        return load_organ_folder(path, labels)
    array, affine = load_mask(path)
    if array.dtype.kind == "f":
        if not (np.isfinite(array).all() and np.array_equal(array, np.round(array))):
            raise MedsegError(f"{path}: mask holds non-integer values; is this an image, not a "
                              "mask?")
        array = array.astype(np.int32)
    elif array.dtype.kind == "b":
        array = array.view(np.uint8)
    highest = max(labels)
    if (array.dtype.kind == "i" and array.min() < 0) or array.max() > highest:
        _refuse_labels(np.unique(array[(array < 0) | (array > highest)]), labels, path)
    return array, affine


def _refuse_labels(values, labels: dict[int, str], path: Path) -> NoReturn:
    raise MedsegError(f"{path}: label values {sorted(int(v) for v in values)} are not in the "
                      f"label map (ids {_id_ranges(labels)}); pass the matching label map "
                      "(--labels, --ref-labels or --pred-labels)")


def _id_ranges(labels: dict[int, str]) -> str:
    """Label ids as compact ranges: '0..13' or '0..9, 20, 52'."""
    ids, parts, start = sorted(labels), [], None
    for i, label_id in enumerate(ids):
        start = label_id if start is None else start
        if i + 1 == len(ids) or ids[i + 1] != label_id + 1:
            parts.append(str(start) if start == label_id else f"{start}..{label_id}")
            start = None
    return ", ".join(parts)


def checked_boxes(array: np.ndarray, labels: dict[int, str], path: Path) -> dict:
    """Bounding boxes of the labels present; an id that falls in a gap of the map is an error."""
    boxes = label_boxes(array)
    unknown = [i for i in boxes if i not in labels]
    if unknown:
        _refuse_labels(unknown, labels, path)
    return boxes


def grid_difference(pred_affine: np.ndarray, ref_affine: np.ndarray) -> str:
    """What differs between two voxel grids, in words: orientation, spacing, origin."""
    parts = []
    pred_codes, ref_codes = nib.aff2axcodes(pred_affine), nib.aff2axcodes(ref_affine)
    if pred_codes != ref_codes:
        parts.append(f"orientation {''.join(pred_codes)} vs {''.join(ref_codes)}")
    pred_spacing, ref_spacing = voxel_spacing(pred_affine), voxel_spacing(ref_affine)
    if not np.allclose(pred_spacing, ref_spacing, atol=AFFINE_TOLERANCE_MM):
        parts.append("spacing " + " vs ".join("x".join(f"{s:.4g}" for s in sp) + " mm"
                                              for sp in (pred_spacing, ref_spacing)))
    shift = float(np.linalg.norm(pred_affine[:3, 3] - ref_affine[:3, 3]))
    if shift > AFFINE_TOLERANCE_MM:
        parts.append(f"origin {shift:.3g} mm apart")
    worst = float(np.abs(pred_affine - ref_affine).max())
    return ", ".join(parts) or f"direction cosines differ by up to {worst:.3g}"


def resample_nearest(array: np.ndarray, affine: np.ndarray, shape: tuple[int, ...],
                     target_affine: np.ndarray) -> np.ndarray:
    """A label volume resampled onto another grid by nearest neighbour; outside it, 0."""
    from scipy.ndimage import affine_transform

    index_map = np.linalg.inv(affine) @ target_affine  # target voxel index -> source voxel index
    # Snap round-off so that a pure flip or axis swap copies voxels exactly, edges included.
    snapped = np.round(index_map)
    index_map = np.where(np.abs(index_map - snapped) < 1e-6, snapped, index_map)
    return affine_transform(array, index_map[:3, :3], index_map[:3, 3], output_shape=tuple(shape),
                            order=0, mode="grid-constant", cval=0)


def align_prediction(pred: np.ndarray, pred_affine: np.ndarray, ref: np.ndarray,
                     ref_affine: np.ndarray, case: str, resample: bool) -> np.ndarray:
    """The prediction on the reference grid: as it is, resampled (if asked), or refused."""
    same_affine = np.allclose(pred_affine, ref_affine, atol=AFFINE_TOLERANCE_MM)
    if pred.shape == ref.shape and same_affine:
        return pred
    if resample:
        return resample_nearest(pred, pred_affine, ref.shape, ref_affine)
    hint = "; pass --resample-pred to resample the prediction onto the reference grid"
    if pred.shape != ref.shape:
        raise MedsegError(f"{case}: prediction shape {pred.shape} differs from reference shape "
                          f"{ref.shape}{hint}")
    raise MedsegError(f"{case}: prediction and reference affines differ "
                      f"({grid_difference(pred_affine, ref_affine)}); they are not on the same "
                      f"grid{hint}")


def load_pair(pred_path: Path, ref_path: Path, match: LabelMatch,
              resample: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference, prediction (on the reference grid) and the reference affine of one case."""
    ref, ref_affine = load_label_volume(ref_path, match.reference)
    pred, pred_affine = load_label_volume(pred_path, match.prediction)
    pred = align_prediction(pred, pred_affine, ref, ref_affine, case_name(ref_path), resample)
    return ref, pred, ref_affine


def evaluate_case(pred_path: Path, ref_path: Path, match: LabelMatch, tolerance_mm: float = 2.0,
                  resample: bool = False) -> dict:
    """Per-organ metric rows of one case, and the unpaired organs found in its volumes."""
    ref, pred, affine = load_pair(pred_path, ref_path, match, resample)
    ref_boxes = checked_boxes(ref, match.reference, ref_path)
    pred_boxes = checked_boxes(pred, match.prediction, pred_path)
    case = case_name(ref_path)
    rows = case_metrics(ref, pred, match.organs, voxel_spacing(affine), voxel_volume_ml(affine),
                        tolerance_mm, boxes=(ref_boxes, pred_boxes))
    found = {"reference": unpaired_found(ref_boxes, match.reference, match.reference_only),
             "prediction": unpaired_found(pred_boxes, match.prediction, match.prediction_only)}
    return {"case": case, "rows": [{"case": case, **row} for row in rows], "found": found}


def unpaired_found(boxes: dict, labels: dict[int, str], unpaired: list[str]) -> list[str]:
    """The organs present in a volume that the other side's label map cannot label."""
    return [labels[i] for i in boxes if labels[i] in unpaired]


def _evaluate_job(job: tuple) -> dict:
    return evaluate_case(*job)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run a block with one torch thread, then restore the previous count.

    MONAI's surface metrics make many small torch calls on organ-sized crops: more threads only
    add overhead (measured: 13.3 s CPU with 2 threads, 6.8 s with 1, for a 512 x 512 x 400 pair
    on a busy 2-core machine). Parallelism comes from evaluating cases in worker processes.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _start_worker() -> None:
    import torch

    torch.set_num_threads(1)


def evaluate_pairs(pairs: list[tuple[Path, Path]], match: LabelMatch, tolerance_mm: float,
                   resample: bool, workers: int | None = None,
                   progress: bool = False) -> list[dict]:
    """evaluate_case for every pair, `workers` cases at a time in separate processes."""
    jobs = [(pred, ref, match, tolerance_mm, resample) for pred, ref in pairs]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    bar = {"total": len(jobs), "desc": "evaluate", "disable": not progress}
    if workers <= 1:
        with one_torch_thread():
            return [_evaluate_job(job) for job in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(workers, initializer=_start_worker) as pool:
        return list(tqdm(pool.map(_evaluate_job, jobs), **bar))


def match_cases(pred_dir: Path, ref_dir: Path) -> tuple[list[tuple[Path, Path]], list[str],
                                                        list[str]]:
    """Predictions paired with references by case name, then the unpaired names of each side.
    Against one reference file, a folder of organ files is that case's prediction (and the
    other way round)."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    refs = list_cases(ref_dir, case_name(pred_dir) if pred_dir.is_file() else None)
    preds = list_cases(pred_dir, next(iter(refs)) if ref_dir.is_file() else None)
    pairs = [(preds[name], refs[name]) for name in sorted(refs) if name in preds]
    if not pairs:
        raise MedsegError(f"no case names in common between {pred_dir} and {ref_dir}")
    return pairs, sorted(set(refs) - set(preds)), sorted(set(preds) - set(refs))


def metric_stats(values: list[float], name: str) -> dict:
    """mean, std, median and n of one metric, NaNs left out (None when nothing is left)."""
    array = np.asarray(values, dtype=float)
    valid = array[~np.isnan(array)]
    if not valid.size:
        return {f"{name}_mean": None, f"{name}_std": None, f"{name}_median": None, f"{name}_n": 0}
    return {f"{name}_mean": float(valid.mean()), f"{name}_std": float(valid.std()),
            f"{name}_median": float(np.median(valid)), f"{name}_n": int(valid.size)}


def organ_summary(rows: list[dict]) -> dict:
    """Statistics of every metric over one organ's rows; both-empty cases are left out."""
    counted = [r for r in rows if r["status"] != "both_empty"]
    stats: dict = {}
    for metric in METRICS:
        stats.update(metric_stats([r[metric] for r in counted], metric))
    stats["n"] = stats["dice_n"]
    stats["missed"] = sum(r["status"] == "pred_empty" for r in rows)
    stats["spurious"] = sum(r["status"] == "ref_empty" for r in rows)
    return stats


def summarize(results: list[dict], match: LabelMatch, unmatched_cases: tuple[list, list],
              tolerance_mm: float) -> dict:
    """Per-organ statistics, means over organs, and everything that was not evaluated."""
    rows = [row for result in results for row in result["rows"]]
    organs = {name: organ_summary([r for r in rows if r["organ"] == name])
              for name, _, _ in match.organs}
    summary: dict = {"organs": organs}
    for metric in ("dice", "iou", "hd95_mm", "nsd"):
        means = [o[f"{metric}_mean"] for o in organs.values() if o[f"{metric}_mean"] is not None]
        summary[f"mean_{metric}"] = float(np.mean(means)) if means else None
    found = {side: [name for result in results for name in result["found"][side]]
             for side in ("reference", "prediction")}
    return {
        **summary,
        "cases": len(results),
        "nsd_tolerance_mm": tolerance_mm,
        "missing_predictions": unmatched_cases[0],
        "predictions_without_reference": unmatched_cases[1],
        # organ -> how many volumes hold it; these organs have no counterpart on the other side
        "organs_only_in_reference": {n: found["reference"].count(n) for n in match.reference_only},
        "organs_only_in_prediction": {n: found["prediction"].count(n)
                                      for n in match.prediction_only},
        "organ_ids": {name: {"reference": r, "prediction": p} for name, r, p in match.organs},
        "empty_policy": EMPTY_POLICY,
    }


def case_means(results: list[dict]) -> list[tuple[str, float]]:
    """(case, mean Dice over its organs) sorted from worst to best; cases without any Dice last."""
    means = []
    for result in results:
        dice = [r["dice"] for r in result["rows"] if not np.isnan(r["dice"])]
        means.append((result["case"], float(np.mean(dice)) if dice else float("nan")))
    return sorted(means, key=lambda item: (np.isnan(item[1]), item[1]))


def write_per_case_csv(results: list[dict], path: Path) -> None:
    """One row per case and organ with every metric."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(row for result in results for row in result["rows"])


def draw_figures(results: list[dict], pairs: dict[str, tuple[Path, Path]], match: LabelMatch,
                 resample: bool, out_dir: Path) -> dict:
    """Box plots per metric and overlays of the best and worst case; paths relative to out_dir."""
    from medseg.evaluation.figures import metric_boxplot, overlay_figure

    rows = [row for result in results for row in result["rows"]]
    organs = [name for name, _, _ in match.organs]
    figures: dict = {"boxplots": {}, "overlays": []}
    for metric in ("dice", "iou", "hd95_mm", "nsd", "volume_diff_ml"):
        path = Path("figures") / f"box_{metric}.png"
        metric_boxplot(rows, metric, organs, out_dir / path)
        figures["boxplots"][metric] = str(path)
    ranked = [item for item in case_means(results) if not np.isnan(item[1])]
    # One case is both the best and the worst: draw it once.
    picks = [("best", ranked[-1]), ("worst", ranked[0])][:len(ranked)] if ranked else []
    for kind, (case, mean_dice) in picks:
        ref, pred, affine = load_pair(*pairs[case], match, resample)
        path = Path("figures") / f"overlay_{kind}.png"
        overlay_figure(ref, pred, affine, match.organs, out_dir / path,
                       title=f"{kind} case: {case} (mean Dice {mean_dice:.3f})")
        figures["overlays"].append({"kind": kind, "case": case, "mean_dice": mean_dice,
                                    "path": str(path)})
    return figures


def evaluate_folders(pred_dir: Path, ref_dir: Path, out_dir: Path, labels: dict[int, str],
                     pred_labels: dict[int, str] | None = None, tolerance_mm: float = 2.0,
                     resample: bool = False, workers: int | None = None,
                     figures: bool = True, progress: bool = False) -> dict:
    """Evaluate the cases both folders hold; write per_case.csv, summary.json and the reports.

    `labels` is the reference label map, and the prediction's too unless `pred_labels` is given.
    """
    match = match_label_maps(labels, labels if pred_labels is None else pred_labels)
    check_apart(pred_dir, out_dir, "predictions")
    check_apart(ref_dir, out_dir, "references")
    check_writable(out_dir)
    pairs, missing, extra = match_cases(Path(pred_dir), Path(ref_dir))
    if missing:  # said here too, not only inside summary.json
        log.warning("%d reference case(s) have no prediction in %s and are left out of the "
                    "means: %s", len(missing), pred_dir, ", ".join(missing[:10])
                    + (" ..." if len(missing) > 10 else ""))
    results = evaluate_pairs(pairs, match, tolerance_mm, resample, workers, progress)
    summary = summarize(results, match, (missing, extra), tolerance_mm)
    out_dir = Path(out_dir)
    write_per_case_csv(results, out_dir / "per_case.csv")
    write_json(summary, out_dir / "summary.json")
    drawn = {"boxplots": {}, "overlays": []}
    if figures:
        by_case = {case_name(ref): (pred, ref) for pred, ref in pairs}
        drawn = draw_figures(results, by_case, match, resample, out_dir)
    sources = {"predictions": str(pred_dir), "references": str(ref_dir)}
    ranked = case_means(results)
    with atomic_output(out_dir / "report.md") as tmp:
        tmp.write_text(markdown_report(summary, ranked, drawn, sources), encoding="utf-8")
    with atomic_output(out_dir / "report.html") as tmp:
        tmp.write_text(html_report(summary, results, ranked, drawn, sources), encoding="utf-8")
    return summary

"""Speed of `medseg evaluate` on one CT-sized pair (512 x 512 x 400, 13 BTCV organs).

Builds a synthetic reference and prediction (ellipsoids and tubes with smooth random boundaries;
the prediction shifted, rescaled and re-roughened), writes them as NIfTI, then times
  - medseg: evaluate_case end to end (load, checks, bounding boxes, every metric), each metric
    family on the organs' bounding boxes, and the `medseg evaluate` command in a fresh process;
  - baseline: MONAI's compute_dice / compute_iou, compute_hausdorff_distance and
    compute_surface_dice per organ on the full volume, as a script would call them;
checks that both give the same numbers, and prints the ratio.

    .venv/bin/python benchmarks/evaluate.py [--shape 512,512,400]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medseg.data.labels import load_label_map, match_label_maps
from medseg.evaluation.evaluate import evaluate_case
from medseg.evaluation.metrics import hd95_mm, label_boxes, nsd, overlap_metrics, union_box

SPACING = (0.78125, 0.78125, 1.0)
# BTCV organs in patient mm around the volume centre: ("ellipsoid", centre, semi-axes) or
# ("tube", start, end, radius). Drawn in this order, so small organs overwrite big ones.
ORGANS = {
    "liver": ("ellipsoid", (-60, 10, 60), (85, 75, 70)),
    "stomach": ("ellipsoid", (55, 35, 80), (50, 35, 55)),
    "spleen": ("ellipsoid", (95, -40, 70), (40, 25, 50)),
    "right_kidney": ("ellipsoid", (-70, -60, 0), (28, 25, 55)),
    "left_kidney": ("ellipsoid", (70, -60, 10), (28, 25, 55)),
    "gallbladder": ("ellipsoid", (-45, 55, 20), (18, 15, 35)),
    "pancreas": ("ellipsoid", (15, -5, 25), (60, 12, 15)),
    "aorta": ("tube", (15, -45, -150), (15, -45, 190), 12),
    "inferior_vena_cava": ("tube", (-22, -40, -150), (-22, -40, 150), 11),
    "esophagus": ("tube", (15, -25, 100), (20, -30, 195), 8),
    "portal_and_splenic_veins": ("tube", (-35, -10, 45), (75, -28, 55), 6),
    "right_adrenal_gland": ("ellipsoid", (-45, -50, 75), (10, 4, 15)),
    "left_adrenal_gland": ("ellipsoid", (45, -45, 70), (10, 4, 15)),
}


def organ_extent(shape_spec: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest corner (mm) of an organ shape, with room for its rough boundary."""
    if shape_spec[0] == "ellipsoid":
        centre, semi = np.array(shape_spec[1], float), np.array(shape_spec[2], float) * 1.3
        return centre - semi, centre + semi
    ends = np.array([shape_spec[1], shape_spec[2]], float)
    return ends.min(0) - 1.3 * shape_spec[3], ends.max(0) + 1.3 * shape_spec[3]


def shape_field(shape_spec: tuple, points: list[np.ndarray]) -> np.ndarray:
    """1 on the organ's nominal boundary, < 1 inside, at mm positions `points` (x, y, z grids)."""
    if shape_spec[0] == "ellipsoid":
        _, centre, semi = shape_spec
        return np.sqrt(sum(((p - c) / s) ** 2 for p, c, s in zip(points, centre, semi)))
    _, start, end, radius = shape_spec
    a, b = np.array(start, float), np.array(end, float)
    axis = (b - a) / np.dot(b - a, b - a)
    t = np.clip(sum((p - s) * d for p, s, d in zip(points, a, axis)), 0, 1)
    return np.sqrt(sum((p - (s + t * (e - s))) ** 2 for p, s, e in zip(points, a, b))) / radius


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: int = 6) -> np.ndarray:
    """A smooth random field in about [-1, 1] (coarse noise, trilinearly upsampled)."""
    coarse = torch.from_numpy(rng.uniform(-1, 1, (1, 1, cells, cells, cells)).astype(np.float32))
    return torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear",
                                           align_corners=True)[0, 0].numpy()


def draw(shape: tuple[int, ...], rng: np.random.Generator, jitter: float) -> np.ndarray:
    """A label volume with the 13 organs; `jitter` > 0 shifts and rescales each organ a little."""
    ids = load_label_map("btcv")
    by_name = {name: i for i, name in ids.items()}
    volume = np.zeros(shape, np.uint8)
    centre_mm = (np.array(shape) - 1) / 2 * SPACING
    for name, spec in ORGANS.items():
        shift = rng.normal(0, jitter * 1.0, 3)
        scale = 1 + rng.normal(0, jitter * 0.03)
        lo, hi = organ_extent(spec)
        start = np.clip(np.floor((lo + centre_mm) / SPACING).astype(int), 0, shape)
        stop = np.clip(np.ceil((hi + centre_mm) / SPACING).astype(int) + 1, 0, shape)
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        points = [((np.arange(a, b) * s - c - d) / scale).reshape([-1 if k == i else 1
                                                                   for k in range(3)])
                  for i, (a, b, s, c, d) in enumerate(zip(start, stop, SPACING, centre_mm, shift))]
        inside = shape_field(spec, points) + 0.12 * smooth_noise(rng, tuple(stop - start)) <= 1
        volume[box][inside] = by_name[name]
    return volume


def timed(seconds: dict, family: str, function, *args, **kwargs):
    """Call function(*args, **kwargs), adding its CPU time to seconds[family].

    CPU time, because on a shared machine wall time also counts other jobs; with one torch
    thread the two agree on an idle machine.
    """
    start = time.process_time()
    value = function(*args, **kwargs)
    seconds[family] += time.process_time() - start
    return value


def time_medseg(ref, pred, organs, spacing, tolerance) -> tuple[dict, dict]:
    """Seconds per metric family and the values, computed on bounding boxes as medseg does."""
    seconds, values = defaultdict(float), {}
    ref_boxes = timed(seconds, "masks", label_boxes, ref)
    pred_boxes = timed(seconds, "masks", label_boxes, pred)
    for name, ref_id, pred_id in organs:
        box = timed(seconds, "masks", union_box, [ref_boxes[ref_id], pred_boxes[pred_id]],
                    ref.shape)
        r = timed(seconds, "masks", np.equal, ref[box], ref_id)
        p = timed(seconds, "masks", np.equal, pred[box], pred_id)
        values[name] = {"dice": timed(seconds, "overlap", overlap_metrics, r, p)["dice"],
                        "hd95": timed(seconds, "hd95", hd95_mm, r, p, spacing),
                        "nsd": timed(seconds, "nsd", nsd, r, p, spacing, tolerance)}
    return dict(seconds), values


def time_monai_full(ref, pred, organs, spacing, tolerance) -> tuple[dict, dict]:
    """The same numbers from MONAI's functions on full-volume one-organ masks."""
    from monai.metrics import (
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        compute_surface_dice,
    )

    seconds, values = defaultdict(float), {}
    for name, ref_id, pred_id in organs:
        y = timed(seconds, "masks", lambda a, i: torch.from_numpy(a == i)[None, None], ref, ref_id)
        y_pred = timed(seconds, "masks", lambda a, i: torch.from_numpy(a == i)[None, None], pred,
                       pred_id)
        both = {"y_pred": y_pred, "y": y, "include_background": True}
        dice = float(timed(seconds, "overlap", compute_dice, **both))
        timed(seconds, "overlap", compute_iou, **both)
        hd95 = float(timed(seconds, "hd95", compute_hausdorff_distance, **both, percentile=95,
                           spacing=list(spacing)))
        surface = float(timed(seconds, "nsd", compute_surface_dice, **both,
                              class_thresholds=[tolerance], spacing=list(spacing),
                              use_subvoxels=True))
        values[name] = {"dice": dice, "hd95": hd95, "nsd": surface}
    return dict(seconds), values


def cli_seconds(folders: dict, out: Path, *extra: str) -> str:
    """Wall and CPU time of `medseg evaluate` on the pair in a fresh process, start-up included."""
    command = [sys.executable, "-m", "cli", "evaluate", "--pred", str(folders["pred"]), "--ref",
               str(folders["ref"]), "--output", str(out), "--labels", "btcv", *extra]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=Path(__file__).parents[1])
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return f"{wall:.1f} s wall, {cpu:.1f} s CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="512,512,400")
    parser.add_argument("--tolerance", type=float, default=2.0)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    torch.set_num_threads(1)  # as in an evaluation worker process
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    ref, pred = draw(shape, rng, jitter=0.0), draw(shape, rng, jitter=1.0)
    print(f"built a {'x'.join(map(str, shape))} pair with {len(ORGANS)} organs "
          f"in {time.perf_counter() - t:.1f}s")
    match = match_label_maps(load_label_map("btcv"), load_label_map("btcv"))
    cube = np.zeros((8, 8, 8), bool)
    cube[2:6, 2:6, 2:6] = True
    hd95_mm(cube, cube, SPACING), nsd(cube, cube, SPACING, 2.0)  # imports, first-call set-up
    with tempfile.TemporaryDirectory() as tmp:
        folders = {side: Path(tmp) / side for side in ("ref", "pred")}
        for side, volume in (("ref", ref), ("pred", pred)):
            folders[side].mkdir()
            nib.save(nib.Nifti1Image(volume, np.diag([*SPACING, 1.0])),
                     str(folders[side] / "case.nii.gz"))
        wall, cpu = time.perf_counter(), time.process_time()
        result = evaluate_case(folders["pred"] / "case.nii.gz", folders["ref"] / "case.nii.gz",
                               match, args.tolerance)
        end_to_end = (f"{time.perf_counter() - wall:.2f} s wall, "
                      f"{time.process_time() - cpu:.2f} s CPU")
        cli_plain = cli_seconds(folders, Path(tmp) / "plain", "--no-figures")
        cli_report = cli_seconds(folders, Path(tmp) / "report")

    ours, our_values = time_medseg(ref, pred, match.organs, SPACING, args.tolerance)
    base, base_values = time_monai_full(ref, pred, match.organs, SPACING, args.tolerance)
    worst = max(abs(our_values[o][f] - base_values[o][f]) for o in our_values
                for f in our_values[o])
    dice = [r["dice"] for r in result["rows"]]
    print(f"Dice {min(dice):.2f}..{max(dice):.2f}; largest difference medseg vs MONAI full "
          f"volume over all organs and metrics: {worst:.1e}\n")
    print("| CPU seconds | medseg (bounding boxes) | MONAI, full volume | ratio |\n"
          "|---|---|---|---|")
    for family in ("overlap", "hd95", "nsd", "masks"):
        print(f"| {family} | {ours[family]:.2f} s | {base[family]:.2f} s | "
              f"{base[family] / ours[family]:.0f}x |")
    our_total, base_total = sum(ours.values()), sum(base.values())
    print(f"| **metrics total** | **{our_total:.2f} s** | **{base_total:.2f} s** | "
          f"**{base_total / our_total:.0f}x** |")
    print(f"\nevaluate_case (read both NIfTI files, checks, all metrics): {end_to_end}")
    print(f"medseg evaluate in a fresh process, --no-figures: {cli_plain}")
    print(f"medseg evaluate in a fresh process, with the report figures: {cli_report}")


if __name__ == "__main__":
    main()

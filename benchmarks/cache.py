"""Memory of training's case cache.

1. Every voxel's class index vs CLASS_LOCATIONS: runs training's cache transforms over the
   phantoms both ways in one process (load, reorient, resample, body crop, uint8 label, class
   locations) and prints the bytes the cache holds per case, the time, and the ratio.
2. With --train-epochs N: `medseg train` with the cases in memory against `--cache-dir`
   (cases read back from disk for every patch; measured on a second run, once the disk cache
   exists), each in its own process: peak RSS up to the first validation (which adds its
   own, the same either way) and the seconds of one training epoch.

    .venv/bin/python benchmarks/cache.py [--cases 4] [--spacing 1.5] [--train-epochs 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medseg.data.manifest import load_manifest
from medseg.data.network_input import NetworkInput
from medseg.data.synth import write_synthetic_dataset
from medseg.data.transforms import CLASS_LOCATIONS, training_cache_transforms


def nbytes(value) -> int:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    return 0


def cache_bytes(cases: list[dict], spacing, num_classes: int, class_locations) -> dict:
    spec = NetworkInput(tuple(spacing), {"clip": [-1000.0, 500.0], "mean": 50.0, "std": 200.0},
                        (16, 16, 16))  # a patch smaller than any phantom: nothing padded
    transforms = training_cache_transforms(spec, num_classes, class_locations)
    start = time.perf_counter()
    items = [transforms(dict(case)) for case in cases]
    seconds = time.perf_counter() - start
    parts = {key: sum(nbytes(item[key]) for item in items) / len(items)
             for key in ("image", "label", "label_cls_indices")}
    voxels = sum(item["image"].numel() for item in items) / len(items)
    return {"parts": parts, "total": sum(parts.values()), "voxels": voxels,
            "seconds": seconds / len(items)}


TRAIN = """
import json, sys
import medseg.training.loop as T
from medseg.training.config import TrainConfig
peaks, validate = [], T.validate
def measured(*args, **kwargs):  # peak RSS of caching and training, before validation's own
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through exec.
    status = open("/proc/self/status").read().split("VmHWM:")[1]
    peaks.append(int(status.split()[0]) * 1024)
    return validate(*args, **kwargs)
T.validate = measured
T.train(TrainConfig(**json.loads(sys.argv[1])), overwrite=True)
print(peaks[0])
"""


def train_run(manifest: Path, out: Path, spacing, epochs: int, cache_dir=None) -> dict:
    """Peak RSS (bytes) up to validation, and one training epoch's seconds (epoch 2 minus
    epoch 1 in log.csv)."""
    config = {"manifest": str(manifest), "output": str(out), "spacing": list(spacing),
              "patch_size": [96, 96, 64], "batch_size": 2, "epochs": epochs,
              "iters_per_epoch": 10, "val_every": 1000, "cache_dir": cache_dir,
              "model_kwargs": {"channels": [8, 16, 32, 64], "strides": [2, 2, 2]}}
    done = subprocess.run([sys.executable, "-c", TRAIN, json.dumps(config)], check=True,
                          capture_output=True, text=True)
    seconds = [float(row["seconds"]) for row in csv.DictReader(open(out / "log.csv"))]
    return {"rss": int(done.stdout.split()[-1]),
            "epoch": seconds[2] - seconds[1] if len(seconds) > 2 else None}


def compare_training(manifest: Path, tmp: Path, spacing, epochs: int, cases: int) -> None:
    memory = train_run(manifest, tmp / "memory", spacing, epochs)
    train_run(manifest, tmp / "fill", spacing, 1, cache_dir=str(tmp / "cache"))
    disk = train_run(manifest, tmp / "disk", spacing, epochs, cache_dir=str(tmp / "cache"))
    print(f"\n`medseg train`, {cases} phantoms at {spacing[0]} mm, patch 96x96x64, batch 2:")
    print("| cases kept | peak RSS GB, before validation | s per 10-iteration epoch |")
    print("|---|---|---|")
    for name, r in (("in memory", memory), ("on disk (--cache-dir)", disk)):
        print(f"| {name} | {r['rss'] / 1e9:.2f} | {r['epoch']:.1f} |")
    print(f"memory ratio (in memory / on disk): {memory['rss'] / disk['rss']:.2f}x; "
          f"epoch time ratio (on disk / in memory): {disk['epoch'] / memory['epoch']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--spacing", type=float, default=1.5, help="training spacing, mm")
    parser.add_argument("--train-epochs", type=int, default=0,
                        help="also compare `medseg train` in memory and on disk (at least 3)")
    args = parser.parse_args()
    spacing = (args.spacing,) * 3
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_synthetic_dataset(Path(tmp) / "data", args.cases, seed=5,
                                           progress=False)
        cases, labels = load_manifest(manifest)
        rows = {"every voxel": cache_bytes(cases, spacing, len(labels), None),
                f"{CLASS_LOCATIONS} per class": cache_bytes(cases, spacing, len(labels),
                                                            CLASS_LOCATIONS)}
        print_cache_table(rows, args.cases, args.spacing, len(labels))
        if args.train_epochs:
            compare_training(manifest, Path(tmp), spacing, max(3, args.train_epochs), args.cases)


def print_cache_table(rows: dict, cases: int, spacing: float, classes: int) -> None:
    print(f"{cases} phantoms at {spacing} mm, {classes} classes; per cached case:")
    print("| class locations | voxels | image MB | label MB | locations MB | total MB | "
          "B/voxel | s/case |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        p = r["parts"]
        print(f"| {name} | {r['voxels'] / 1e6:.2f} M | {p['image'] / 1e6:.1f} | "
              f"{p['label'] / 1e6:.1f} | {p['label_cls_indices'] / 1e6:.1f} | "
              f"{r['total'] / 1e6:.1f} | {r['total'] / r['voxels']:.2f} | {r['seconds']:.2f} |")
    full, capped = rows.values()
    print(f"cache memory ratio (every voxel / capped): {full['total'] / capped['total']:.2f}x")


if __name__ == "__main__":
    main()

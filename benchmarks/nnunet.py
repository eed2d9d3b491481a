"""Speed and peak memory of `medseg infer` against `nnUNetv2_predict` on one nnU-Net model folder.

Same model folder (tests/data/nnunet/model unless --model), same scans, same folds, no TTA, run
interleaved (nnU-Net, medseg, nnU-Net, medseg, ...); the fastest run of each counts, since the
machine is shared and noisy (the highest peak memory counts). Cases:
  large: one 512 x 512 x 300 CT-like scan (a 0.8 x 0.8 x 1.25 mm phantom, padded and tiled);
  folder: a folder of 5 phantoms at scanner-like spacings (0.6-1 mm in plane, 1.5-5 mm slices).
Time is the whole command, wall clock (imports, reading, writing included). Memory is the peak
of the proportional set size (PSS) summed over the command's process tree, sampled every
0.1 s: nnU-Net runs preprocessing and export in worker processes, whose pages shared with
their parent PSS counts once. Both masks are compared with per-organ Dice.

nnU-Net runs from its own environment (see benchmarks/nnunet_fixture.py for installing it):
    .venv/bin/python benchmarks/nnunet.py --nnunet-python /tmp/nnv/bin/python [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from infer import write_large_scan  # noqa: E402

from medseg.data.io import save_nifti  # noqa: E402
from medseg.data.phantoms import make_phantom  # noqa: E402

DATASET, TRAINER = "Dataset901_Phantoms", "nnUNetTrainer__nnUNetPlansSmall__3d_fullres"


def tree_pss_kb(root: int) -> int:
    """PSS (kB) of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total


def measured(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak PSS GB of the process tree) of one command."""
    peak = [0]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_pss_kb(process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{command[0]} failed:\n{stderr[-3000:]}")
    return seconds, peak[0] / 1e6


def folder_case(work: Path, count: int = 5) -> Path:
    folder = work / "folder"
    if not folder.exists():
        for seed in range(count):
            phantom = make_phantom(3000 + seed, orientation="LPS")
            save_nifti(phantom.image, phantom.affine, folder / f"case{seed}_0000.nii.gz")
    return folder


def large_case(work: Path) -> Path:
    folder = work / "large"
    target = folder / "large_0000.nii.gz"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(write_large_scan(work, 300, seed=7), target)
    return folder


def dice_by_organ(mine: Path, theirs: Path, labels: dict[int, str]) -> dict[str, float]:
    a = np.asarray(nib.load(str(mine)).dataobj)
    b = np.asarray(nib.load(str(theirs)).dataobj)
    scores = {}
    for label, name in labels.items():
        if label and ((a == label).any() or (b == label).any()):
            both = np.logical_and(a == label, b == label).sum()
            scores[name] = round(float(2 * both / ((a == label).sum() + (b == label).sum())), 4)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nnunet-python", required=True, type=Path)
    parser.add_argument("--model", type=Path, default=REPO / "tests/data/nnunet/model")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cases", default="large,folder")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "nnunet_bench")
    args = parser.parse_args()

    work = args.work
    results = work / "results"
    shutil.rmtree(results, ignore_errors=True)
    shutil.copytree(args.model, results / DATASET / TRAINER)
    env = {**os.environ, "nnUNet_results": str(results), "nnUNet_raw": str(work / "raw"),
           "nnUNet_preprocessed": str(work / "pre")}
    folds = sorted(p.name[5:] for p in args.model.glob("fold_*"))
    labels = {v: k for k, v in json.loads((args.model / "dataset.json").read_text())
              ["labels"].items()}
    makers = {"large": large_case, "folder": folder_case}
    rows = []
    for case in args.cases.split(","):
        inputs = makers[case](work)
        commands = {
            "nnUNetv2_predict": [str(args.nnunet_python.parent / "nnUNetv2_predict"), "-i",
                                 str(inputs), "-o", str(work / "out_nnunet" / case), "-d", "901",
                                 "-p", "nnUNetPlansSmall", "-c", "3d_fullres", "-f", *folds,
                                 "-device", "cpu", "--disable_tta"],
            "medseg infer": [sys.executable, "-m", "cli", "infer", "--model", str(args.model),
                             "--input", str(inputs), "--output", str(work / "out_medseg" / case),
                             "--overwrite"],
        }
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for round_ in range(args.rounds):
            for name, command in commands.items():
                shutil.rmtree(work / ("out_nnunet" if "nnU" in name else "out_medseg") / case,
                              ignore_errors=True)
                runs[name].append(measured(command, {**env, "PYTHONPATH": str(REPO)}))
                print(f"{case} round {round_ + 1} {name}: {runs[name][-1][0]:.1f} s, "
                      f"{runs[name][-1][1]:.2f} GB", flush=True)
        # The fastest run's time, the highest peak memory: noise only ever adds time.
        best = {name: (min(r[0] for r in rs), max(r[1] for r in rs)) for name, rs in runs.items()}
        dice = {}
        for mask in sorted((work / "out_nnunet" / case).glob("*.nii.gz")):
            # medseg names a mask after the case (nnU-Net's _0000 channel suffix dropped).
            dice[mask.name] = dice_by_organ(work / "out_medseg" / case / mask.name, mask, labels)
        rows.append((case, best, dice))
        print(json.dumps({"case": case, "best": best, "dice": dice}), flush=True)

    print("\n| case | nnUNetv2_predict | medseg infer | speed-up | peak RAM ratio |")
    print("|---|---|---|---|---|")
    for case, best, _ in rows:
        (tn, mn), (tm, mm) = best["nnUNetv2_predict"], best["medseg infer"]
        print(f"| {case} | {tn:.1f} s, {mn:.2f} GB | {tm:.1f} s, {mm:.2f} GB | "
              f"{tn / tm:.2f}x | {mm / mn:.2f}x |")
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()

"""Speed and peak memory of `medseg infer` against the canonical hand-written MONAI pipeline.

Both run as separate processes on the same scan, weights, patch size (roi) and overlap:
  (a) medseg, end to end: `python -m cli infer --model CKPT --input SCAN --output DIR
      --overwrite --overlap 0.5` (file in, mask file out);
  (b) the pipeline users write by hand: LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS)
      -> Spacingd (bilinear, MONAI's float64 default) -> ScaleIntensityRanged (the checkpoint's
      clip and z-score) -> sliding_window_inference (gaussian, sw_batch_size 2) -> softmax
      -> Invertd (bilinear) -> argmax -> SaveImaged (uint8), under torch.no_grad and without
      medseg's allocator tuning.
They run interleaved (a, b, a, b, ...) and the fastest run of each counts, because the machine
is shared and noisy. Each child reports its own peak RSS (VmHWM; ru_maxrss of a child started
with vfork also counts its parent's peak). The two masks are compared with per-organ Dice.

    .venv/bin/python benchmarks/infer.py [--model runs/demo]     # phantom, 0.8 x 0.8 x 2.5 mm
    .venv/bin/python benchmarks/infer.py --large 600 [--with-canonical]   # 512 x 512 x 600

Heavy imports stay inside functions so that the medseg child (a) carries no extra modules.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_TAG = "BENCH "
PIPELINES = {"medseg": "(a) medseg infer", "canonical": "(b) canonical MONAI",
             "medseg_crf": "(c) medseg infer --crf"}
REFERENCE_SPACING = (0.8, 0.8, 2.5)
LARGE_SPACING = (0.8, 0.8, 1.25)
LARGE_INPLANE = 512
BTCV_ORGANS = ("spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver",
               "stomach", "aorta", "inferior_vena_cava", "portal_and_splenic_veins", "pancreas",
               "right_adrenal_gland", "left_adrenal_gland")
# The random-weight model of --large: the demo's recipe (runs/demo/config.json, 2026-11-24),
# pinned here so that figures stay comparable when the training defaults change.
LARGE_MODEL = {"name": "resunet", "kwargs": {}}  # MONAI residual U-Net, 16-256 channels
CT_INTENSITY = {"clip": [-1000.0, 290.0], "mean": 65.0, "std": 170.0}
TARGET_PEAK_GB = {600: 6.0}  # issue 4: host RAM at 512 x 512 x 600


# ---- children: each prints one BENCH line with its own figures --------------------------------

def peak_rss_kb() -> int:
    """This process's own peak resident set size in kB (VmHWM on Linux, else ru_maxrss)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # macOS counts bytes


def report_figures(**figures) -> None:
    """Hand figures to the parent process as one tagged JSON line on stdout."""
    print(BENCH_TAG + json.dumps({"peak_rss_kb": peak_rss_kb(), **figures}), flush=True)


def run_medseg_cli(argv: list[str]) -> None:
    """Child (a): `python -m cli ARGV` in this very process, then its peak RSS."""
    sys.path.insert(0, str(REPO))
    import cli

    try:
        cli.main(argv, prog_name="medseg")
    finally:
        report_figures()


def canonical_pipeline(checkpoint: Path, scan: Path, out_dir: Path, overlap: float) -> dict:
    """Child (b): the MONAI tutorial pipeline with medseg's network and weights; stage times."""
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    from medseg.nets.checkpoint import load_checkpoint
    from medseg.nets.registry import build_network

    start = time.perf_counter()
    payload = load_checkpoint(checkpoint)
    config = payload["config"]
    model = build_network(config["model"]["name"], 1, len(config["labels"]),
                        **config["model"]["kwargs"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    (lo, hi), mean, std = config["intensity"]["clip"], config["intensity"]["mean"], \
        config["intensity"]["std"]
    preprocess = Compose([
        LoadImaged("image"),
        EnsureChannelFirstd("image"),
        Orientationd("image", axcodes="RAS"),
        Spacingd("image", pixdim=config["spacing"], mode="bilinear"),
        ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=(lo - mean) / std,
                             b_max=(hi - mean) / std, clip=True),
    ])
    postprocess = Compose([
        Invertd("pred", transform=preprocess, orig_keys="image", nearest_interp=False),
        AsDiscreted("pred", argmax=True),
        SaveImaged("pred", output_dir=out_dir, output_postfix="", output_dtype=np.uint8,
                   separate_folder=False, print_log=False),
    ])
    with torch.no_grad():
        data = preprocess({"image": str(scan)})
        window_start = time.perf_counter()
        logits = sliding_window_inference(data["image"][None], config["patch_size"], 2, model,
                                          overlap=overlap, mode="gaussian")
        window_end = time.perf_counter()
        data["pred"] = torch.softmax(logits[0], dim=0)
        del logits
        postprocess(data)
    end = time.perf_counter()
    return {"pre_s": window_start - start, "window_s": window_end - window_start,
            "post_s": end - window_end}


# ---- inputs -----------------------------------------------------------------------------------

def write_reference_scan(work: Path, seed: int) -> Path:
    """The reference case: one phantom at 0.8 x 0.8 x 2.5 mm (about 430 x 330 x 90 voxels)."""
    from medseg.data.io import save_nifti
    from medseg.data.phantoms import make_phantom

    path = work / "inputs" / f"phantom_{seed}.nii.gz"
    if not path.exists():
        phantom = make_phantom(seed, spacing=REFERENCE_SPACING)
        save_nifti(phantom.image, phantom.affine, path)
    return path


def fit_volume(image, affine, shape: tuple[int, int, int], air: float):
    """Centre a volume in `shape`: crop or pad in-plane with air, tile along z by mirroring."""
    import numpy as np

    before = [(size - dim) // 2 for size, dim in zip(shape, image.shape)]
    crop = tuple(slice(max(-b, 0), max(-b, 0) + min(size, dim))
                 for b, size, dim in zip(before, shape, image.shape))
    image = image[crop]
    pads = [(max(b, 0), size - dim - max(b, 0)) for b, size, dim in zip(before, shape, image.shape)]
    image = np.pad(image, pads[:2] + [(0, 0)], mode="constant", constant_values=air)
    image = np.pad(image, [(0, 0), (0, 0), pads[2]], mode="symmetric")
    shifted = affine.copy()
    shifted[:3, 3] -= affine[:3, :3] @ np.array(before, dtype=float)
    return image, shifted


def write_large_scan(work: Path, slices: int, seed: int) -> Path:
    """A 512 x 512 x slices CT-like volume: a 0.8 x 0.8 x 1.25 mm phantom, padded and tiled."""
    from medseg.data.io import save_nifti
    from medseg.data.phantoms import AIR_HU, make_phantom

    path = work / "inputs" / f"large_{slices}_{seed}.nii.gz"
    if not path.exists():
        phantom = make_phantom(seed, spacing=LARGE_SPACING, orientation="LPS")
        image, affine = fit_volume(phantom.image, phantom.affine,
                                   (LARGE_INPLANE, LARGE_INPLANE, slices), AIR_HU)
        save_nifti(image, affine, path)
    return path


def write_random_checkpoint(path: Path, seed: int, spacing: float = 4.0) -> Path:
    """A 14-class (background + BTCV organs) checkpoint with random weights, demo settings
    (its working spacing `spacing` mm)."""
    import torch

    from medseg.nets.checkpoint import save_checkpoint
    from medseg.nets.registry import build_network

    torch.manual_seed(seed)
    model = build_network(LARGE_MODEL["name"], 1, 1 + len(BTCV_ORGANS), **LARGE_MODEL["kwargs"])
    config = {
        "model": {**LARGE_MODEL, "in_channels": 1},
        "labels": {str(i): name for i, name in enumerate(("background", *BTCV_ORGANS))},
        "spacing": [spacing] * 3,
        "patch_size": [80, 64, 48],
        "intensity": CT_INTENSITY,
    }
    save_checkpoint(path, model, config)
    return path


# ---- running and comparing --------------------------------------------------------------------

@dataclass
class Run:
    """One child process: wall time, its own figures, and the error if it failed."""

    seconds: float
    figures: dict = field(default_factory=dict)
    error: str = ""


def child_command(pipeline: str, checkpoint: Path, scan: Path, out_dir: Path,
                  overlap: float) -> list[str]:
    """The command line of child (a) or (b)."""
    script = [sys.executable, str(Path(__file__).resolve())]
    if pipeline in ("medseg", "medseg_crf"):
        return [*script, "--as-medseg", "infer", "--model", str(checkpoint), "--input", str(scan),
                "--output", str(out_dir), "--overwrite", "--overlap", str(overlap),
                *(["--crf"] if pipeline == "medseg_crf" else [])]
    return [*script, "--canonical", "--model", str(checkpoint), "--scan", str(scan),
            "--output", str(out_dir), "--overlap", str(overlap)]


def run_child(command: list[str], timeout: float | None, memory_gb: float | None) -> Run:
    """Run one child, timing the whole process; a failure (e.g. out of memory) is recorded."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=address_space_cap(memory_gb))
    except subprocess.TimeoutExpired:
        return Run(time.perf_counter() - start, error=f"timed out after {timeout:.0f} s")
    seconds = time.perf_counter() - start
    tagged = [line for line in done.stdout.splitlines() if line.startswith(BENCH_TAG)]
    figures = json.loads(tagged[-1][len(BENCH_TAG):]) if tagged else {}
    if done.returncode != 0:
        return Run(seconds, figures, failure(done.returncode, done.stderr))
    return Run(seconds, figures)


def address_space_cap(gigabytes: float | None):
    """A preexec_fn capping the child's address space (None: no cap).

    On a shared machine a child over the cap fails alone with an allocation error, instead of
    waking the kernel's OOM killer, which may pick someone else's process.
    """
    if gigabytes is None:
        return None

    def cap() -> None:
        import resource

        limit = int(gigabytes * 1e9)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return cap


def failure(returncode: int, stderr: str) -> str:
    """Why a child failed: the signal that killed it, or its exit code and last stderr line."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return f"killed by {name}" + (" (the kernel's OOM killer, most likely)"
                                       if name == "SIGKILL" else "")
    lines = [line for line in stderr.splitlines() if line.strip()]
    return f"exit code {returncode}: {lines[-1] if lines else '(no stderr)'}"


@dataclass
class MaskComparison:
    """How far the two pipelines' masks agree."""

    dice: list[float]  # per organ
    differing: int  # voxels with different labels
    voxels: int
    same_affine: bool


def output_mask(out_dir: Path) -> Path:
    """The one mask a pipeline wrote into its own output folder."""
    masks = sorted(out_dir.glob("*.nii*"))
    if len(masks) != 1:
        raise RuntimeError(f"{out_dir}: expected one mask, found {[m.name for m in masks]}")
    return masks[0]


def compare_masks(path_a: Path, path_b: Path, num_classes: int) -> MaskComparison:
    """Per-organ Dice (labels 1..C-1, NaN where both are empty), differing voxels, same affine."""
    import nibabel as nib
    import numpy as np

    img_a, img_b = nib.load(str(path_a)), nib.load(str(path_b))
    if img_a.shape != img_b.shape:
        raise RuntimeError(f"mask shapes differ: {img_a.shape} vs {img_b.shape}")
    a, b = np.asarray(img_a.dataobj), np.asarray(img_b.dataobj)
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    for i in range(0, a.shape[0], 32):  # slabs keep the int64 temporaries small
        pairs = a[i:i + 32].astype(np.int64) * num_classes + b[i:i + 32]
        counts += np.bincount(pairs.ravel(), minlength=num_classes**2).reshape(counts.shape)
    both, sizes = np.diag(counts), counts.sum(1) + counts.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2.0 * both / sizes
    same_affine = bool(np.allclose(img_a.affine, img_b.affine, atol=1e-4))
    return MaskComparison([float(d) for d in dice[1:]], int(counts.sum() - both.sum()),
                          int(counts.sum()), same_affine)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def describe_child(run: Run) -> str:
    """One line for a finished child: wall time, peak RSS, stage times when reported."""
    if run.error:
        return f"FAILED after {run.seconds:.1f} s: {run.error}"
    stages = "".join(f", {k[:-2]} {v:.1f} s" for k, v in run.figures.items() if k.endswith("_s"))
    return f"{run.seconds:.1f} s, peak RSS {gigabytes(run):.2f} GB{stages}"


def gigabytes(run: Run) -> float:
    """A run's peak RSS in GB (1e9 bytes); NaN when it did not report one."""
    return run.figures.get("peak_rss_kb", float("nan")) * 1024 / 1e9


# ---- the comparison and its table -------------------------------------------------------------

@dataclass
class Case:
    """What one benchmark invocation compares."""

    name: str
    scan: Path
    checkpoint: Path
    pipelines: list[str]
    target_gb: float | None = None


def run_case(case: Case, work: Path, args: argparse.Namespace) -> dict[str, list[Run]]:
    """Run every pipeline `repeats` times, interleaved, each into its own output folder."""
    runs: dict[str, list[Run]] = {p: [] for p in case.pipelines}
    for pipeline in PIPELINES:  # masks of an earlier invocation must not be compared
        shutil.rmtree(work / f"out_{pipeline}", ignore_errors=True)
    for repeat in range(args.repeats):
        for pipeline in case.pipelines:
            out_dir = work / f"out_{pipeline}"
            command = child_command(pipeline, case.checkpoint, case.scan, out_dir, args.overlap)
            run = run_child(command, args.timeout, args.memory_limit_gb)
            runs[pipeline].append(run)
            print(f"  {PIPELINES[pipeline]}, run {repeat + 1}: {describe_child(run)}  "
                  f"[load {load_average()}]", flush=True)
    return runs


@dataclass
class Summary:
    """A pipeline's figures over its successful runs: min wall and window time, max peak RSS."""

    seconds: float
    window_seconds: float | None
    peak_gb: float


def summarise(runs: list[Run]) -> Summary | None:
    """Fastest times and highest memory over the runs that succeeded; None if none did."""
    done = [r for r in runs if not r.error]
    if not done:
        return None
    windows = [r.figures["window_s"] for r in done if "window_s" in r.figures]
    return Summary(min(r.seconds for r in done), min(windows) if windows else None,
                   max(gigabytes(r) for r in done))


def summary_table(case: Case, runs: dict[str, list[Run]], dice: list[float] | None) -> str:
    """All figures as one Markdown table; the ratios and Dice sit on the canonical row."""
    import numpy as np

    rows = ["| case | pipeline | wall time, min (s) | all runs (s) | sliding window, min (s) "
            "| peak RSS, max (GB) | time (b)/(a) | memory (a)/(b) | mean Dice (a) vs (b) |",
            "|---|---|---|---|---|---|---|---|---|"]
    summaries = {p: summarise(r) for p, r in runs.items()}
    a, b = summaries.get("medseg"), summaries.get("canonical")
    for pipeline, pipeline_runs in runs.items():
        top = summaries[pipeline]
        all_runs = ", ".join(f"{r.seconds:.1f}" + (" (failed)" if r.error else "")
                             for r in pipeline_runs)
        window = top.window_seconds if top else None
        cells = [case.name, PIPELINES[pipeline], f"{top.seconds:.1f}" if top else "failed",
                 all_runs, f"{window:.1f}" if window is not None else "-",
                 f"{top.peak_gb:.2f}" if top else "-"]
        if pipeline == "canonical" and a and b:
            mean = np.nanmean(dice) if dice else float("nan")
            cells += [f"{b.seconds / a.seconds:.2f}", f"{a.peak_gb / b.peak_gb:.2f}",
                      f"{mean:.4f}"]
        else:
            cells += ["", "", ""]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def dice_table(organs: list[str], dice: list[float]) -> str:
    """Per-organ Dice between the two pipelines' masks."""
    rows = ["| organ | Dice (a) vs (b) |", "|---|---|"]
    rows += [f"| {organ} | {d:.4f} |" for organ, d in zip(organs, dice)]
    return "\n".join(rows)


def estimate_line(case: Case, config: dict, runs: dict[str, list[Run]]) -> str:
    """medseg's up-front memory estimate (what `infer` refuses scans by) against the peak."""
    import nibabel as nib

    from medseg.data.geometry import voxel_spacing
    from medseg.inference.memory import inference_bytes

    header = nib.load(str(case.scan))
    lines = []
    from medseg.models.options import CRFSettings

    for pipeline, crf in (("medseg", None), ("medseg_crf", CRFSettings())):
        if pipeline not in runs:
            continue
        need, _ = inference_bytes(header.shape[:3], voxel_spacing(header.affine),
                                  config["spacing"], len(config["labels"]), crf=crf)
        measured = summarise(runs[pipeline])
        peak = f"{measured.peak_gb:.2f} GB" if measured else "no successful run"
        lines.append(f"medseg.inference.memory's estimate for {PIPELINES[pipeline]}: "
                     f"{need / 1e9:.2f} GB; measured peak: {peak}")
    return "\n".join(lines)


def target_lines(case: Case, runs: dict[str, list[Run]], slices: int | None) -> list[str]:
    """Issue 4's targets for the large case, met or missed, with the numbers."""
    if slices is None:
        return []
    medseg = summarise(runs["medseg"])
    if medseg is None:
        return [f"target: 512 x 512 x {slices} completes: MISSED "
                f"({runs['medseg'][-1].error})"]
    lines = [f"target: 512 x 512 x {slices} completes: met ({medseg.seconds:.1f} s)"]
    if case.target_gb is not None:
        verdict = "met" if medseg.peak_gb <= case.target_gb else "MISSED"
        lines.append(f"target: peak host RAM <= {case.target_gb:.0f} GB: {verdict} "
                     f"({medseg.peak_gb:.2f} GB)")
    return lines


def prepare_case(args: argparse.Namespace, work: Path) -> Case:
    """Write the scan (and for --large the random 14-class checkpoint) this run compares."""
    if args.large and not args.trained:
        scan = write_large_scan(work, args.large, args.seed)
        checkpoint = write_random_checkpoint(work / "random14.pt", args.seed,
                                             args.working_spacing)
        pipelines = (["medseg", "canonical"] if args.with_canonical else ["medseg"]
                     ) + (["medseg_crf"] if args.crf else [])
        name = (f"512x512x{args.large} at {'x'.join(map(str, LARGE_SPACING))} mm, 14 classes, "
                f"working grid {args.working_spacing:g} mm")
        return Case(name, scan, checkpoint, pipelines, TARGET_PEAK_GB.get(args.large))
    import nibabel as nib

    from medseg.errors import MedsegError
    from medseg.nets.checkpoint import resolve_checkpoint

    try:
        resolve_checkpoint(args.model)
    except MedsegError as exc:
        print(f"error: {exc}\ncreate the demo's trained model with `make demo` (writes runs/demo), "
              "or pass --model RUN_FOLDER_OR_CHECKPOINT", file=sys.stderr)
        sys.exit(2)

    if args.large:  # --trained: realistic predictions (an untrained model's are noise)
        scan = write_large_scan(work, args.large, args.seed)
        pipelines = (["medseg", "canonical"] if args.with_canonical else ["medseg"]
                     ) + (["medseg_crf"] if args.crf else [])
        name = (f"512x512x{args.large} at {'x'.join(map(str, LARGE_SPACING))} mm, "
                f"trained model ({args.model.name})")
        return Case(name, scan, args.model.resolve(), pipelines)
    scan = write_reference_scan(work, args.seed)
    shape = "x".join(map(str, nib.load(str(scan)).shape))
    name = f"phantom {shape} at {'x'.join(map(str, REFERENCE_SPACING))} mm"
    return Case(name, scan, args.model.resolve(),
                ["medseg", "canonical"] + (["medseg_crf"] if args.crf else []))


def compare(args: argparse.Namespace, work: Path) -> None:
    """Prepare the case, run both pipelines, compare their masks and print every figure."""
    from medseg.nets.checkpoint import load_checkpoint

    case = prepare_case(args, work)
    config = load_checkpoint(case.checkpoint)["config"]
    organs = [config["labels"][str(i)] for i in range(1, len(config["labels"]))]
    print(f"case: {case.name}\nscan: {case.scan}\ncheckpoint: {case.checkpoint} "
          f"({len(organs)} organs, {config['model']['name']})\nroi {tuple(config['patch_size'])},"
          f" overlap {args.overlap}, sw_batch_size 2, working spacing {config['spacing']} mm\n"
          f"machine: {os.cpu_count()} CPUs; load average at start: {load_average()}", flush=True)
    runs = run_case(case, work, args)
    dice = None
    if all(summarise(runs.get(p, [])) for p in ("medseg", "canonical")):
        masks = compare_masks(output_mask(work / "out_medseg"),
                              output_mask(work / "out_canonical"), len(organs) + 1)
        dice = masks.dice
        print(f"masks on the same grid (shape and affine): {'yes' if masks.same_affine else 'NO'}"
              f"; voxels labelled differently: {masks.differing} of {masks.voxels} "
              f"({100 * masks.differing / masks.voxels:.4f}%)")
    print(f"load average at end: {load_average()}\n")
    print(summary_table(case, runs, dice))
    if dice:
        print("\n" + dice_table(organs, dice))
    for pipeline, pipeline_runs in runs.items():
        for number, run in enumerate(pipeline_runs, start=1):
            if run.error:
                print(f"{PIPELINES[pipeline]}, run {number} failed: {run.error}")
    print(estimate_line(case, config, runs))
    a, c = summarise(runs.get("medseg", [])), summarise(runs.get("medseg_crf", []))
    if a and c:
        print(f"--crf: {c.seconds - a.seconds:+.1f} s ({c.seconds / a.seconds:.2f} x the time), "
              f"peak {c.peak_gb - a.peak_gb:+.2f} GB ({c.peak_gb / a.peak_gb:.2f} x)")
    for line in target_lines(case, runs, args.large or None):
        print(line)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options (--canonical, --scan and --output are for the child process (b))."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "demo",
                        help="Trained run folder or checkpoint for the reference case.")
    parser.add_argument("--large", type=int, default=0, metavar="N",
                        help="Benchmark a 512 x 512 x N scan with a random 14-class model.")
    parser.add_argument("--trained", action="store_true",
                        help="With --large, use --model's trained weights instead of the random "
                             "14-class model, whose noisy output is a worst case for resampling.")
    parser.add_argument("--with-canonical", action="store_true",
                        help="With --large, also run (b): about 175 bytes per voxel.")
    parser.add_argument("--working-spacing", type=float, default=4.0,
                        help="--large: the random model's working spacing (mm).")
    parser.add_argument("--crf", action="store_true",
                        help="Also run (c), medseg infer --crf: the time and memory it adds.")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each pipeline.")
    parser.add_argument("--seed", type=int, default=0, help="Phantom (and random weights) seed.")
    parser.add_argument("--timeout", type=float, default=None, help="Seconds per child run.")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="Cap each child's address space (shared machines: fail, not OOM).")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Keep inputs and masks here (reused); default: a temporary folder.")
    parser.add_argument("--canonical", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the comparison, or be one of its child processes."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--as-medseg"]:
        run_medseg_cli(argv[1:])
        return
    args = parse_args(argv)
    if args.canonical:
        report_figures(**canonical_pipeline(args.model, args.scan, args.output, args.overlap))
        return
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        compare(args, args.workdir.resolve())
        return
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as work:
        compare(args, Path(work))


if __name__ == "__main__":
    main()

"""Dense CRF refinement (`medseg infer --crf`): per-organ Dice, HD95 and surface Dice with and
without it, and the time it adds.

    nice -n 10 python -m benchmarks.crf --output runs/crf [--models dilated,deeplabv3,pspnet]
    python -m benchmarks.crf --output runs/crf --tune dilated,unet     # choose the defaults

Phantoms: each 3D registry model is trained as `benchmarks/compare_models.py` trains it (24
phantoms, seed 0; 300 iterations), then segments the 4 held-out phantoms (seed 1) without and
with the CRF. Real: resunet and dilated fitted to the real DICOM series in ../shared/data
(the fit test's recipe: 3 mm, 48 x 48 x 12 patches, 30 epochs), scored against its
TotalSegmentator mask on the scan they were fitted to. A trained model is reused on a
rerun; results go to OUTPUT/results.json and one Markdown table per case set.

--tune scores a grid of CRF settings on the working grid of 2 other phantoms (seed 2, never
the held-out ones) with the listed models' probabilities and prints the best few.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.compare_models import train_model
from medseg.demo import REAL_CASE_LABELS, ensure_dataset, write_real_case
from medseg.runtime import tune_allocator

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "petct_dicom"
NETWORKS = "dilated,deeplabv3,pspnet,fcn,deeplabv3plus,unet,resunet"


def trained_run(name: str, out: Path, iterations: int) -> tuple[Path, Path]:
    """A model trained on the phantoms (reused if there) and the held-out set's folder."""
    run, heldout = out / f"{name}_3d", out / "data" / "heldout"
    if not (run / "best.pt").exists():
        run, _, heldout = train_model(name, 3, out, iterations)
    return run, heldout


def segment_and_score(run: Path, images: Path, references: Path, labels: dict[int, str],
                      out: Path, crf: bool, resample: bool = False) -> dict:
    """Segment every scan under `images`, evaluate against `references`; per-organ figures
    and seconds per case. resample: the references store the same grid in another axis order
    (the real series' mask is LAS, the mask of its DICOM series LPS)."""
    from medseg.evaluation.evaluate import evaluate_folders
    from medseg.inference.batch import infer_cases
    from medseg.inference.options import InferOptions

    start = time.perf_counter()
    results = infer_cases(run, images, out / "masks",
                InferOptions.from_keywords(overwrite=True, crf=crf))
    seconds = (time.perf_counter() - start) / len(results)
    summary = evaluate_folders(out / "masks", references, out / "evaluation", labels,
                               resample=resample, figures=False)
    organs = {name: {"dice": o["dice_mean"], "hd95": o["hd95_mm_mean"], "nsd": o["nsd_mean"]}
              for name, o in summary["organs"].items() if o["dice_mean"] is not None}
    return {"seconds_per_case": seconds, "organs": organs}


def real_data_set(out: Path) -> Path:
    """The real series and its remapped TotalSegmentator mask as a data set; its dataset.json."""
    return write_real_case(REAL, out / "data" / "real")


def real_run(name: str, out: Path, epochs: int) -> Path:
    """A model fitted to the real series (the fit test's recipe), reused if there."""
    from medseg.training.config import TrainConfig
    from medseg.training.loop import train

    run = out / f"real_{name}"
    if not (run / "best.pt").exists():
        train(TrainConfig(manifest=str(real_data_set(out)), output=str(run), model=name,
                          spacing=(3.0, 3.0, 3.0), patch_size=(48, 48, 12), epochs=epochs,
                          val_every=epochs), overwrite=True)
    return run


def compare(run: Path, images: Path, references: Path, labels: dict[int, str],
            out: Path, resample: bool = False) -> dict:
    """Without and with the CRF."""
    return {kind: segment_and_score(run, images, references, labels, out / kind, kind == "crf",
                                    resample)
            for kind in ("plain", "crf")}


def _shown(value, metric: str) -> str:
    """A figure for the table; '-' where it is undefined (HD95 of an organ never found)."""
    if value is None:
        return "-"
    return f"{value:.1f}" if metric == "hd95" else f"{value:.3f}"


def markdown(results: dict) -> str:
    """Per model and organ: Dice, HD95 and NSD without -> with the CRF; seconds per case."""
    lines = ["| model | organ | Dice | HD95 (mm) | NSD @ 2 mm |", "|---|---|---|---|---|"]
    for model, result in results.items():
        plain, crf = result["plain"], result["crf"]
        for organ, before in plain["organs"].items():
            after = crf["organs"].get(organ, {})
            cells = [f"{_shown(before.get(m), m)} -> {_shown(after.get(m), m)}"
                     for m in ("dice", "hd95", "nsd")]
            lines.append(f"| {model} | {organ} | " + " | ".join(cells) + " |")
        mean = {kind: np.mean([o["dice"] for o in result[kind]["organs"].values()])
                for kind in ("plain", "crf")}
        lines.append(f"| {model} | **mean** | {mean['plain']:.3f} -> {mean['crf']:.3f} | | |")
    lines += ["", "| model | s/case without | s/case with CRF | added |", "|---|---|---|---|"]
    lines += [f"| {m} | {r['plain']['seconds_per_case']:.1f} | "
              f"{r['crf']['seconds_per_case']:.1f} | "
              f"{r['crf']['seconds_per_case'] - r['plain']['seconds_per_case']:+.1f} |"
              for m, r in results.items()]
    return "\n".join(lines)


# --- choosing the defaults ---------------------------------------------------------------------

TUNING_GRID = {"appearance_mm": (10.0, 20.0, 40.0), "appearance_hu": (10.0, 20.0, 40.0),
               "appearance_weight": (1.0, 3.0, 5.0), "smoothness_weight": (0.0, 1.0)}


def working_grid_cases(run: Path, folder: Path):
    """Per tuning case: (probabilities, HU image, label) on the model's working grid."""
    import torch
    from monai.transforms import Compose

    from medseg.data.io import load_scan
    from medseg.models.open import open_model

    predictor = open_model(run / "best.pt")
    manifest = json.loads((folder / "dataset.json").read_text())
    for entry in manifest["training"]:
        scan = load_scan(folder / entry["image"])
        label = load_scan(folder / entry["label"])
        grid = Compose(predictor.spec.working_grid(("image", "label")))(
            {"image": scan, "label": label})
        probs = predictor.probabilities(grid["image"])
        yield (probs, grid["image"][0].as_subclass(torch.Tensor),
               grid["label"][0].as_subclass(torch.Tensor).round().long(), predictor.spacing)


def mean_dice(mask, label, classes: int) -> float:
    """Mean Dice over the organs the label holds."""
    scores = []
    for c in range(1, classes):
        p, r = mask == c, label == c
        if r.any():
            scores.append(float(2 * (p & r).sum() / (p.sum() + r.sum())))
    return float(np.mean(scores))


def tune(models: list[str], out: Path, iterations: int, grid: dict | None = None
         ) -> tuple[list[tuple[float, dict]], float]:
    """Mean working-grid Dice of each setting in `grid` (default TUNING_GRID; the others at
    their defaults) over the tuning phantoms and models; best first, and the no-CRF Dice."""
    grid = grid or TUNING_GRID
    from medseg.models.crf import refine
    from medseg.models.options import CRFSettings

    folder = ensure_dataset(out / "data" / "tuning", 2, seed=2).parent
    cases = [case for name in models
             for case in working_grid_cases(trained_run(name, out, iterations)[0], folder)]
    baseline = np.mean([mean_dice(p.argmax(0), label, p.shape[0]) for p, _, label, _ in cases])
    scored = []
    for values in itertools.product(*grid.values()):
        settings = replace(CRFSettings(), **dict(zip(grid, values)))
        dice = np.mean([mean_dice(refine(p.clone(), image, spacing, settings).argmax(0), label,
                                  p.shape[0]) for p, image, label, spacing in cases])
        scored.append((float(dice), dict(zip(grid, values))))
        print(f"{dice:.4f} {scored[-1][1]} (no CRF {baseline:.4f})", flush=True)
    return sorted(scored, key=lambda s: -s[0]), float(baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/crf"))
    parser.add_argument("--models", default=NETWORKS, help="comma-separated registry names")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--real-epochs", type=int, default=30)
    parser.add_argument("--real-models", default="resunet,dilated",
                        help="models fitted to the real series")
    parser.add_argument("--tune", default=None, help="models whose probabilities choose the "
                        "defaults (instead of the comparison)")
    parser.add_argument("--tune-grid", type=json.loads, default=None,
                        help='JSON {setting: [values]}, e.g. \'{"appearance_mm": [5, 10]}\' '
                             "(default: TUNING_GRID)")
    args = parser.parse_args()
    tune_allocator()
    from medseg.data.labels import load_labels

    if args.tune:
        scored, baseline = tune(args.tune.split(","), args.output, args.iterations,
                                args.tune_grid)
        print(f"no CRF: {baseline:.4f}")
        for dice, setting in scored[:8]:
            print(f"{dice:.4f} {setting}")
        return
    path = args.output / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"phantoms": {}, "real": {}}
    for name in args.models.split(","):
        if name not in results["phantoms"]:
            run, heldout = trained_run(name, args.output, args.iterations)
            results["phantoms"][name] = compare(
                run, heldout / "imagesTr", heldout / "labelsTr",
                load_labels(heldout / "dataset.json"), run / "crf_benchmark")
            path.write_text(json.dumps(results, indent=1))
            print(markdown({name: results["phantoms"][name]}), flush=True)
    for name in args.real_models.split(",") if REAL.is_dir() else []:
        if f"{name} (fitted)" not in results["real"]:
            run = real_run(name, args.output, args.real_epochs)
            folder = real_data_set(args.output).parent
            results["real"][f"{name} (fitted)"] = compare(
                run, folder / "images", folder / "labels", REAL_CASE_LABELS,
                run / "crf_benchmark", resample=True)
            path.write_text(json.dumps(results, indent=1))
    print("## Held-out phantoms\n\n" + markdown(results["phantoms"]))
    if results["real"]:
        print("\n## The real DICOM series (a model fitted to it)\n\n" + markdown(results["real"]))


if __name__ == "__main__":
    main()

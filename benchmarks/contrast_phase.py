"""Across contrast phases: train on phantoms of one phase, segment the same anatomy in others.

    nice -n 5 .venv/bin/python -m benchmarks.contrast_phase --output runs/contrast_phase \
        [--train-phase portal-venous] [--epochs 30] [--cases 24]

Two models train on the same phantoms, all in one contrast phase, with the demo recipe
(`pipelines/demo_synthetic.yaml`) for --epochs epochs:
- "before": the normalisation and augmentation medseg had (clip at the foreground's 0.5 and
  99.5 percentiles, no contrast augmentation);
- "after": the current defaults (the clip's top raised to at least 500 HU, per-organ HU shifts
  with probability 0.3, `medseg.data.transforms.RandOrganContrastd`).
Each segments 6 held-out phantoms drawn in every phase from the same seeds (same anatomy,
phase changed only), and the script prints per-organ Dice per phase and model, and one
Markdown table. Results go to OUTPUT/results.json; a model already there is skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medseg.data.phantoms import PHASES
from medseg.demo import DEMO_RECIPE
from medseg.runtime import tune_allocator

HELDOUT_CASES, HELDOUT_SEED, TRAIN_SEED = 6, 1, 0


def phase_dataset(folder: Path, cases: int, seed: int, phase: str) -> Path:
    """Phantoms all in one phase (reused when already written)."""
    from medseg.data.synth import write_synthetic_dataset

    manifest = folder / "dataset.json"
    if not manifest.exists():
        write_synthetic_dataset(folder, cases, seed=seed, phase=phase)
    return manifest


def percentile_only_intensity(manifest: Path) -> dict:
    """The former normalisation: foreground percentiles, no contrast ceiling."""
    from medseg.data.manifest import load_manifest
    from medseg.training.planning import case_fingerprint, ct_normalization

    cases, labels = load_manifest(manifest)
    rng = np.random.default_rng(0)
    hu = np.concatenate([case_fingerprint(c, len(labels), rng)["foreground_hu"] for c in cases])
    return ct_normalization(hu, ceiling_hu=None)


def train_model(name: str, manifest: Path, out: Path, epochs: int) -> Path:
    """Train one model with the demo recipe ("before": the former intensity handling)."""
    from medseg.training.loop import train
    from medseg.training.recipes import build_config

    settings = {"manifest": str(manifest), "output": str(out / name), "epochs": epochs}
    if name == "before":
        settings |= {"intensity": percentile_only_intensity(manifest), "contrast_prob": 0.0}
    config = build_config(DEMO_RECIPE, settings)
    print(f"{name}: clip {config.intensity['clip'] if config.intensity else 'planned'}, "
          f"contrast augmentation p={config.contrast_prob}", flush=True)
    train(config, overwrite=True)  # its own folder, rerun
    return out / name


def heldout_dice(run: Path, heldout: Path, out: Path) -> dict:
    """Per-organ mean Dice of the run's masks on one held-out set."""
    from medseg.data.labels import load_labels
    from medseg.evaluation.evaluate import evaluate_folders
    from medseg.inference.batch import infer_cases
    from medseg.inference.options import InferOptions

    infer_cases(run, heldout.parent / "imagesTr", out, InferOptions.from_keywords(overwrite=True))
    summary = evaluate_folders(out, heldout.parent / "labelsTr", out / "evaluation",
                               load_labels(heldout), figures=False)
    return {organ: stats["dice_mean"] for organ, stats in summary["organs"].items()}


def markdown(results: dict, train_phase: str) -> str:
    """Rows: organs; columns: each test phase, before and after."""
    organs = list(next(iter(next(iter(results.values())).values())))
    header = [f"{phase}{' (trained)' if phase == train_phase else ''} {model}"
              for phase in PHASES for model in results]
    lines = ["| organ | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for organ in [*organs, "mean"]:
        cells = []
        for phase in PHASES:
            for model in results:
                dice = results[model][phase]
                value = np.nanmean(list(dice.values())) if organ == "mean" else dice[organ]
                cells.append(f"{value:.3f}")
        lines.append(f"| {organ} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("runs/contrast_phase"))
    parser.add_argument("--train-phase", choices=PHASES, default="portal-venous")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    tune_allocator()
    out = args.output
    train_manifest = phase_dataset(out / "data" / "train", args.cases, TRAIN_SEED,
                                   args.train_phase)
    heldout = {phase: phase_dataset(out / "data" / phase, HELDOUT_CASES, HELDOUT_SEED, phase)
               for phase in PHASES}
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in ("before", "after"):
        if name not in results:
            run = train_model(name, train_manifest, out, args.epochs)
            results[name] = {phase: heldout_dice(run, manifest, out / "masks" / name / phase)
                             for phase, manifest in heldout.items()}
            results_path.write_text(json.dumps(results, indent=2))
        for phase, dice in results[name].items():
            print(f"{name} on {phase}: mean Dice {np.nanmean(list(dice.values())):.3f}")
    print(f"\ntrained on {args.cases} {args.train_phase} phantoms, {args.epochs} epochs:\n")
    print(markdown(results, args.train_phase))


if __name__ == "__main__":
    main()

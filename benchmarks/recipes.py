"""Training recipes compared at the same wall-clock budget: held-out Dice on the demo's data.

    nice -n 5 .venv/bin/python -m benchmarks.recipes --output runs/recipes \
        [--variants demo,bf16,nnunet,unet_ds] [--budget-seconds S | --iterations N]

Every variant starts from the demo recipe (`pipelines/demo_synthetic.yaml`) and changes a few
settings (VARIANTS below). Each first trains 4 epochs of 10 iterations and times the 2nd and
3rd to measure its seconds per iteration. "demo" then trains as the foundation's demo did
(fp32, 40 epochs of 25 iterations); the budget of the others is the demo's calibrated time
for those 1000 iterations (or --budget-seconds; or --iterations fixes their length), and they
train as many 25-iteration epochs as fit in it (validating every 5 epochs and at the end, as
the demo does). Each segments the demo's 6 held-out phantoms and evaluates them. The demo's
48 training and 6 held-out phantoms are reused from `runs/demo/data` when there, else
synthesised (same seeds). Results go to OUTPUT/results.json; a variant already there is
skipped, so a stopped run resumes. Run it on an otherwise idle machine: the budget is
wall-clock time.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

from benchmarks.tables import organ_dice_table
from medseg.demo import (
    DEMO_RECIPE,
    DEMO_TEST_CASES,
    DEMO_TEST_SEED,
    DEMO_TRAIN_CASES,
    DEMO_TRAIN_SEED,
    ensure_dataset,
)
from medseg.runtime import tune_allocator

ITERS_PER_EPOCH = 25
VARIANTS: dict[str, dict] = {
    # The foundation's recipe: fp32 and 40 epochs, as before bf16 became the default here.
    "demo": {"precision": "fp32", "epochs": 40},
    "bf16": {"precision": "bf16"},
    "nnunet": {"optimizer": "sgd", "lr": 0.01, "augment": "nnunet"},
    "unet_ds": {"model": "unet", "model_kwargs": {"deep_supervision": True}},
}


def config_for(variant: str, manifest: Path, output: Path, cache: Path, **settings):
    """The demo recipe with the variant's changes and this run's data, output and length."""
    from medseg.training.recipes import build_config

    overrides = {**VARIANTS[variant], "manifest": str(manifest), "output": str(output),
                 "cache_dir": str(cache), "iters_per_epoch": ITERS_PER_EPOCH, **settings}
    return build_config(DEMO_RECIPE, overrides)


def seconds_per_iteration(variant: str, manifest: Path, out: Path, cache: Path) -> float:
    """Four short epochs; the fastest of epochs 2 and 3 per step (caching, warm-up and the final
    validation excluded; the fastest is the least disturbed by anything else running)."""
    from medseg.training.loop import train

    run = out / "calibration" / variant
    shutil.rmtree(run, ignore_errors=True)
    train(config_for(variant, manifest, run, cache, epochs=4, iters_per_epoch=10,
                     val_every=100))
    with open(run / "log.csv", newline="") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    return min(seconds[1] - seconds[0], seconds[2] - seconds[1]) / 10


def run_variant(variant: str, data: Path, out: Path, budget: float | None,
                iterations: int | None = None) -> dict:
    """Calibrate, train for the budget or the iterations (neither: the recipe's own epochs),
    segment and evaluate the held-out phantoms."""
    from medseg.data.labels import load_labels
    from medseg.evaluation.evaluate import evaluate_folders
    from medseg.inference.batch import infer_cases
    from medseg.inference.options import InferOptions
    from medseg.training.loop import train

    manifest, heldout = data / "train" / "dataset.json", data / "heldout"
    cache = out / "cache"
    step = seconds_per_iteration(variant, manifest, out, cache)
    run = out / variant
    length = {}
    if iterations is not None:
        length = {"epochs": max(1, round(iterations / ITERS_PER_EPOCH))}
    elif budget is not None:
        length = {"epochs": max(1, round(budget / step / ITERS_PER_EPOCH))}
    config = config_for(variant, manifest, run, cache, **length)
    trained = train(config, overwrite=True)  # its own folder, rerun
    epochs = config.epochs
    with open(run / "log.csv", newline="") as f:
        loop_seconds = float(list(csv.DictReader(f))[-1]["seconds"])
    infer_cases(run, heldout / "imagesTr", run / "predictions",
                InferOptions.from_keywords(overwrite=True))
    summary = evaluate_folders(run / "predictions", heldout / "labelsTr", run / "evaluation",
                               load_labels(heldout / "dataset.json"), figures=False)
    return {"variant": variant, "changes": VARIANTS[variant], "seconds_per_iteration": step,
            "epochs": epochs, "iterations": epochs * ITERS_PER_EPOCH,
            "train_seconds": loop_seconds, "val_dice": trained["best_val_dice"],
            "heldout_dice": summary["mean_dice"],
            "organs": {k: v["dice_mean"] for k, v in summary["organs"].items()}}


def markdown(results: list[dict]) -> str:
    """Mean and per-organ held-out Dice with each variant's training cost."""
    lines = ["| variant | changes to the demo recipe | s/iteration | iterations | "
             "training s | held-out mean Dice |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {json.dumps(r['changes']) if r['changes'] else '-'} | "
              f"{r['seconds_per_iteration']:.2f} | {r['iterations']} | "
              f"{r['train_seconds']:.0f} | {r['heldout_dice']:.3f} |" for r in results]
    organs = organ_dice_table([r["variant"] for r in results], results)
    return "\n".join(lines) + "\n\n" + organs


def demo_budget(results: list[dict]) -> float:
    """The demo recipe's iterations times its calibrated seconds per iteration."""
    demo = next((r for r in results if r["variant"] == "demo"), None)
    if demo is None:
        raise SystemExit("run the 'demo' variant first (it sets the budget), or give "
                         "--budget-seconds")
    return demo["iterations"] * demo["seconds_per_iteration"]


def demo_data(out: Path) -> Path:
    """The demo's phantoms: runs/demo/data when `make demo` made them, else synthesised here."""
    shipped = Path("runs/demo/data")
    data = shipped if (shipped / "heldout" / "dataset.json").exists() else out / "data"
    ensure_dataset(data / "train", DEMO_TRAIN_CASES, DEMO_TRAIN_SEED)
    ensure_dataset(data / "heldout", DEMO_TEST_CASES, DEMO_TEST_SEED)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("runs/recipes"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--budget-seconds", type=float,
                        help="training time per variant [default: the demo's 1000 iterations "
                             "at its calibrated speed]")
    parser.add_argument("--iterations", type=int,
                        help="train the variants other than demo this long instead; to match "
                             "the demo's measured training time when calibration misjudges it")
    args = parser.parse_args()
    tune_allocator()
    data = demo_data(args.output)
    path = args.output / "results.json"
    results = json.loads(path.read_text()) if path.exists() else []
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        if any(r["variant"] == variant for r in results):
            continue
        start = time.perf_counter()
        if variant == "demo" or args.iterations:
            budget = None
        else:
            budget = args.budget_seconds or demo_budget(results)
        results.append(run_variant(variant, data, args.output, budget,
                                   None if variant == "demo" else args.iterations))
        path.write_text(json.dumps(results, indent=1))
        print(markdown(results[-1:]), f"\n({time.perf_counter() - start:.0f} s)", flush=True)
    print(markdown(results))


if __name__ == "__main__":
    main()

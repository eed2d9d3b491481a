"""A cross-validation folder (what `medseg crossval` writes) used as a model: its folds'
networks ensembled, each organ cleaned as postprocessing.json chose from out-of-fold Dice."""

from __future__ import annotations

from pathlib import Path

from medseg.data.files import read_json
from medseg.errors import MedsegError
from medseg.models.contract import CleanupRules

CROSSVAL_FILE = "crossval.json"
# Each fold's final weights, as nnU-Net uses them: its best.pt is picked on its held-out cases.
FINAL_CHECKPOINT = "last.pt"
POSTPROCESSING_FILE = "postprocessing.json"


def is_crossval_folder(path: Path) -> bool:
    return (Path(path) / CROSSVAL_FILE).is_file()


def fold_folder(folder: Path, fold: int) -> Path:
    return Path(folder) / f"fold_{fold}"


def crossval_checkpoints(folder: Path) -> list[Path]:
    """Each fold's final checkpoint, once every fold and the postprocessing choice are done."""
    folder = Path(folder)
    folds = read_json(folder / CROSSVAL_FILE).get("folds")
    if not isinstance(folds, int) or folds < 2:
        raise MedsegError(f"{folder / CROSSVAL_FILE}: no fold count; the file is damaged, run "
                          "`medseg crossval` again")
    unfinished = [fold_folder(folder, k).name for k in range(folds)
                  if not (fold_folder(folder, k) / FINAL_CHECKPOINT).exists()]
    if unfinished or not (folder / POSTPROCESSING_FILE).is_file():
        missing = ", ".join(unfinished) or POSTPROCESSING_FILE
        raise MedsegError(f"{folder}: the cross-validation has not finished ({missing} missing); "
                          "run the same `medseg crossval` again to continue it")
    return [fold_folder(folder, k) / FINAL_CHECKPOINT for k in range(folds)]


def organ_rules(path: Path, labels: dict[int, str]) -> CleanupRules:
    """postprocessing.json's choices by organ id (see rules_by_id)."""
    return rules_by_id(read_json(Path(path)).get("organs", {}), labels)


def rules_by_id(chosen: dict[str, dict], labels: dict[int, str]) -> CleanupRules:
    """Per-organ choices ({name: {"keep_largest": ..., "min_volume_mm3": ...}}) by organ id:
    (keep the largest component?, drop components under how many mm3); none for organs
    without one."""
    return {organ_id: (bool(chosen[name].get("keep_largest", False)),
                       float(chosen[name].get("min_volume_mm3", 0.0)))
            for organ_id, name in labels.items() if name in chosen}


def open_crossval_folder(folder: Path, options, device):
    """The folder as a model: its folds' final networks ensembled, with the per-organ clean-up
    postprocessing.json chose (the model id covers that file too)."""
    from medseg.models.medseg_run import MedsegPredictor

    rules = Path(folder) / POSTPROCESSING_FILE
    predictor = MedsegPredictor(crossval_checkpoints(folder), options, device, cleanup_file=rules)
    predictor.cleanup = organ_rules(rules, predictor.labels)
    return predictor

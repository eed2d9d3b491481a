"""Cross-validation as one command (`medseg crossval`), as nnU-Net does it.

1. Train every fold (fold k validates on the k-th part of a seeded split of the cases): one
   after another, or under torchrun each rank its own folds, one per GPU.
2. Predict each fold's held-out cases with that fold's final weights (last.pt, as nnU-Net: best.pt
   is picked on those very cases, which would flatter them): every case once, out of fold.
3. Evaluate the pooled out-of-fold predictions (OUTPUT/oof/evaluation).
4. Per organ, choose whether keeping its largest component or removing its small components
   (under 2, 10 or 25% of its median reference volume) raises its out-of-fold Dice, and keep
   the choice only where it does (nnU-Net's rule); evaluate again with it
   (OUTPUT/oof/evaluation_postprocessed) and write OUTPUT/postprocessing.json last.

The output folder is then a model: `medseg infer --model OUTPUT` ensembles the folds and
applies the chosen postprocessing. Running the same command again continues where it stopped:
finished folds are kept, an interrupted one resumes from its last.pt, finished out-of-fold
masks are skipped.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from medseg.data.files import case_name, read_json, scan_suffix, write_json
from medseg.data.io import save_nifti
from medseg.data.labels import match_label_maps
from medseg.data.manifest import load_manifest
from medseg.distributed import all_gather, alone, rank_and_world
from medseg.errors import MedsegError
from medseg.evaluation.evaluate import evaluate_folders, load_pair
from medseg.inference.batch import mask_author, output_path, segment_scans
from medseg.inference.options import InferOptions
from medseg.inference.pipeline import open_pipeline
from medseg.inference.postprocess import (
    clean_organs,
    component_overlaps,
    kept_components,
    rules_in_voxels,
    voxels_for_volume,
)
from medseg.models.crossval_folder import (
    CROSSVAL_FILE,
    FINAL_CHECKPOINT,
    POSTPROCESSING_FILE,
    fold_folder,
    rules_by_id,
)
from medseg.models.options import EngineOptions
from medseg.nets.checkpoint import load_checkpoint
from medseg.training.config import TrainConfig
from medseg.training.loop import train

# "Remove small components" candidates: components under this share of the organ's median
# volume in the references.
SMALL_SHARES = (0.02, 0.1, 0.25)
SETTINGS = ("manifest", "folds", "seed")  # what the split depends on: fixed for a folder


def crossval(config: TrainConfig, folds: int = 5, overwrite: bool = False,
             figures: bool = True) -> dict:
    """Train, predict out of fold, evaluate and choose postprocessing; returns the summary
    (rank 0; other ranks return {} once their folds are done)."""
    output = Path(config.output)
    cases, labels = load_manifest(Path(config.manifest))
    check_cases(cases, folds, config.manifest)
    claim_folder(output, config, folds, overwrite)
    rank, world = rank_and_world()
    for fold in range(folds)[rank::world]:
        with alone(config.device) as device:
            train_fold(config, output, fold, folds, device)
            predict_held_out(output, fold, device)
    all_gather(rank)  # every rank's folds are done
    if rank != 0:
        return {}
    return choose_and_evaluate(output, cases, labels, figures)


def check_cases(cases: list[dict], folds: int, manifest: str) -> None:
    """Enough cases for the folds, one-case-one-name, one label map for all."""
    if folds > len(cases):
        raise MedsegError(f"{manifest}: {folds} folds need at least {folds} cases, the data set "
                          f"has {len(cases)}; use --folds {max(2, len(cases))} or fewer")
    if any("annotated" in case for case in cases):
        raise MedsegError(f"{manifest}: combines data sets with different label maps; "
                          "cross-validation scores every organ on every case, so run it on "
                          "one fully labelled data set")
    seen: dict[str, str] = {}
    for case in cases:
        first = seen.setdefault(case_name(Path(case["image"])), case["image"])
        if first != case["image"]:
            raise MedsegError(f"{manifest}: {first} and {case['image']} share the case name "
                              f"{case_name(Path(first))!r}; out-of-fold masks are named by it, "
                              "so rename one")


def claim_folder(output: Path, config: TrainConfig, folds: int, overwrite: bool) -> None:
    """A new cross-validation, or the same one continued; --overwrite starts it again."""
    settings = {"manifest": str(Path(config.manifest).resolve()), "folds": folds,
                "seed": config.seed}
    record = output / CROSSVAL_FILE
    if record.exists() and not overwrite:
        before = {k: read_json(record).get(k) for k in SETTINGS}
        if before != settings:
            changed = ", ".join(k for k in SETTINGS if before[k] != settings[k])
            raise MedsegError(f"{output}: holds a cross-validation with another {changed}; "
                              "continue it with the same settings, or add --overwrite to "
                              "start again")
    elif not record.exists() and output.exists() and any(output.iterdir()):
        raise MedsegError(f"{output}: not empty and not a cross-validation; give a new or "
                          "empty folder")
    if record.exists() and overwrite and rank_and_world()[0] == 0:
        for k in range(read_json(record).get("folds", 0)):
            shutil.rmtree(fold_folder(output, k), ignore_errors=True)
        shutil.rmtree(output / "oof", ignore_errors=True)
        for name in (POSTPROCESSING_FILE, CROSSVAL_FILE):
            (output / name).unlink(missing_ok=True)
    all_gather(None)  # rank 0 has cleared the folder before any rank writes into it
    if rank_and_world()[0] == 0:
        write_json(settings, record)


def train_fold(config: TrainConfig, output: Path, fold: int, folds: int, device: str) -> None:
    """Train fold k into OUTPUT/fold_k: skipped when finished, resumed when interrupted."""
    fold_config = dataclasses.replace(config, output=str(fold_folder(output, fold)), fold=fold,
                                      folds=folds, device=device)
    last = Path(fold_config.output) / "last.pt"
    if last.exists() and load_checkpoint(last).get("epoch", 0) >= config.epochs:
        print(f"fold {fold}: already trained", flush=True)
        return
    print(f"fold {fold} of {folds}", flush=True)
    train(fold_config, resume=last.exists(), overwrite=not last.exists())


def predict_held_out(output: Path, fold: int, device: str) -> None:
    """Fold k's model segments the cases fold k held out; masks this very model finished are
    kept, those of an earlier state of the fold (trained on since) are redone."""
    folder, masks = fold_folder(output, fold), output / "oof" / "predictions"
    held_out = [Path(image) for image in read_json(folder / "split.json")["validation"]]
    pipeline = open_pipeline(folder / FINAL_CHECKPOINT, InferOptions(EngineOptions(device=device)))
    for image in held_out:
        if mask_author(output_path(image, masks)) not in (None, pipeline.model_id):
            output_path(image, masks).unlink()
    results = segment_scans(pipeline, held_out, masks)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise MedsegError(f"{failed[0].source}: out-of-fold prediction failed ({failed[0].error})"
                          "; fix it, then run the same command again to continue")


def choose_and_evaluate(output: Path, cases: list[dict], labels: dict[int, str],
                        figures: bool) -> dict:
    """Evaluate the pooled out-of-fold masks, choose each organ's postprocessing, evaluate
    again with it; postprocessing.json is written last (it marks the folder finished)."""
    oof = output / "oof"
    pairs = reference_links(cases, oof)
    chosen = choose_postprocessing(pairs, labels)
    rules = rules_by_id(chosen, labels)
    for prediction, _ in pairs:
        apply_rules(prediction, rules, oof / "postprocessed" / prediction.name)
    # A label may store the scan's grid with its axes another way (LAS for an LPS series):
    # the masks, on the scan's own grid, are moved onto it voxel for voxel.
    before = evaluate_folders(oof / "predictions", oof / "references", oof / "evaluation",
                              labels, resample=True, figures=figures)
    after = evaluate_folders(oof / "postprocessed", oof / "references",
                             oof / "evaluation_postprocessed", labels, resample=True,
                             figures=figures)
    summary = {
        "rule": "per organ, the variant with the highest mean out-of-fold Dice, kept only "
                "where it beats no postprocessing (nnU-Net's rule)",
        "mean_dice": before["mean_dice"], "mean_dice_postprocessed": after["mean_dice"],
        "organs": {name: {**choice,
                          "dice": before["organs"][name]["dice_mean"],
                          "dice_postprocessed": after["organs"][name]["dice_mean"]}
                   for name, choice in chosen.items()}}
    write_json({**read_json(output / CROSSVAL_FILE), "out_of_fold": {
        "mean_dice": summary["mean_dice"],
        "mean_dice_postprocessed": summary["mean_dice_postprocessed"]}},
        output / CROSSVAL_FILE)
    write_json(summary, output / POSTPROCESSING_FILE)
    return summary


def reference_links(cases: list[dict], oof: Path) -> list[tuple[Path, Path]]:
    """(out-of-fold mask, reference) per case; references linked under oof/references by the
    case's image name, as the masks are named."""
    folder = oof / "references"
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for case in cases:
        name = case_name(Path(case["image"]))
        link = folder / f"{name}{scan_suffix(Path(case['label']))}"
        if not os.path.lexists(link):
            link.symlink_to(Path(case["label"]).resolve())
        pairs.append((oof / "predictions" / f"{name}.nii.gz", link))
    return pairs


def apply_rules(prediction: Path, rules: dict[int, tuple[bool, float]], target: Path) -> None:
    """A mask with each organ's chosen postprocessing, saved on its own grid."""
    import nibabel as nib

    image = nib.load(str(prediction))
    mask = np.asarray(image.dataobj).astype(np.uint8)
    save_nifti(clean_organs(mask, rules_in_voxels(rules, image.affine)), image.affine, target,
               like=prediction)


def choose_postprocessing(pairs: list[tuple[Path, Path]], labels: dict[int, str]) -> dict:
    """Per organ: the out-of-fold Dice of no postprocessing, of keeping the largest component,
    and of removing components under each SMALL_SHARES part of its median reference volume;
    the best is chosen only where it beats none (strictly)."""
    match = match_label_maps(labels, labels)
    found = defaultdict(list)  # organ -> per case: sizes, overlaps, reference voxels, voxel mm3
    for prediction, reference in pairs:
        ref, pred, affine = load_pair(prediction, reference, match, resample=True)
        voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
        for name, ref_id, pred_id in match.organs:
            sizes, overlaps = component_overlaps(pred == pred_id, ref == ref_id)
            found[name].append((sizes, overlaps, int((ref == ref_id).sum()), affine, voxel_mm3))
    return {name: choose_for_organ(cases) for name, cases in found.items()}


def choose_for_organ(cases: list[tuple]) -> dict:
    """One organ's variants scored over the cases (both-empty cases left out)."""
    volumes = [count * voxel_mm3 for _, _, count, _, voxel_mm3 in cases if count]
    median = float(np.median(volumes)) if volumes else 0.0
    variants = {"none": (False, 0.0), "keep_largest": (True, 0.0)}
    for share in SMALL_SHARES if median else ():
        variants[f"remove_under_{share:g}_of_median"] = (False, share * median)
    scores = {key: mean_dice(cases, *rule) for key, rule in variants.items()}
    best = max(scores, key=lambda key: -np.inf if np.isnan(scores[key]) else scores[key])
    if not scores[best] > scores["none"]:
        best = "none"
    keep_largest, min_volume = variants[best]
    return {"chosen": best, "keep_largest": keep_largest, "min_volume_mm3": min_volume,
            "out_of_fold_dice": scores, "cases": len(cases)}


def mean_dice(cases: list[tuple], keep_largest: bool, min_volume_mm3: float) -> float:
    """Mean Dice over cases of the components a rule keeps (as clean_organs keeps them)."""
    scores = []
    for sizes, overlaps, reference, affine, _ in cases:
        keep = kept_components(sizes, keep_largest, voxels_for_volume(min_volume_mm3, affine))
        total = int(sizes[keep].sum()) + reference
        if total:
            scores.append(2 * int(overlaps[keep].sum()) / total)
    return float(np.mean(scores)) if scores else float("nan")


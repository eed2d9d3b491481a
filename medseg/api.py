"""The Python API: what the `medseg` command does, for scripts and notebooks.

    from medseg import Segmenter
    segmenter = Segmenter("runs/demo")          # load a trained model once
    result = segmenter("scan.nii.gz")           # a path, a nibabel image, or an array + affine
    result.mask, result.labels                  # uint8 mask on the scan's grid, {id: organ}

`plan`, `train`, `infer` and `evaluate` are the `medseg` commands of those names as functions;
the command line is a thin layer over them. Examples: docs/api.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError
from medseg.inference.options import InferOptions
from medseg.training.config import TrainConfig


@dataclass
class Segmentation:
    """One scan's segmentation, on exactly the scan's own grid."""

    mask: np.ndarray  # uint8 (X, Y, Z): 0 background, else a key of `labels`
    affine: np.ndarray  # the scan's voxel-to-world (RAS, mm) matrix
    labels: dict[int, str]  # label id -> organ name, background (0) included
    probabilities: np.ndarray | None = None  # uint8 (C, X, Y, Z), probability x 255, if asked

    def organ(self, name: str) -> np.ndarray:
        """The boolean mask of one organ, by any spelling of its name (kidney_right,
        right_kidney)."""
        from medseg.data.labels import canonical_name

        ids = {canonical_name(organ): label for label, organ in self.labels.items()}
        name = canonical_name(name)
        if name not in ids:
            raise MedsegError(f"no organ {name!r} in this model's labels; it has: "
                              f"{', '.join(v for k, v in self.labels.items() if k)}")
        return self.mask == ids[name]

    def to_nifti(self):
        """The mask as a nibabel image with the scan's affine (save it with nibabel.save)."""
        import nibabel as nib

        return nib.Nifti1Image(self.mask, self.affine)

    def save(self, path: str | Path, like: str | Path | None = None) -> Path:
        """Write the mask as NIfTI, atomically, its label names in the header; `like`: the
        scan's own NIfTI file, whose qform and sform codes the mask then keeps."""
        from medseg.data.io import save_nifti

        save_nifti(self.mask, self.affine, Path(path), like=Path(like) if like else None,
                   labels=self.labels)
        return Path(path)


class Segmenter:
    """Trained model(s) loaded once, to segment many scans.

    `model`: a run folder (its best.pt), a checkpoint file, or a list of them (an ensemble that
    averages their probabilities); a cross-validation folder; an nnU-Net v2 trained-model
    folder; or a TotalSegmentator task, "totalsegmentator:total". Options are the fields of
    EngineOptions (device, overlap, sw_batch_size, precision, tta, save_probabilities, folds,
    crf, crf_*) and RunOptions (overwrite, roi_subset, keep_largest, min_volume_mm3,
    output_types, statistics, preview), checked as the command line checks them.
    """

    def __init__(self, model, **options):
        from medseg.inference.pipeline import open_pipeline

        self.pipeline = open_pipeline(model, InferOptions.from_keywords(**options))

    @property
    def labels(self) -> dict[int, str]:
        """Label id -> organ name, background (0) included."""
        return dict(self.pipeline.labels)

    def __call__(self, image, affine=None) -> Segmentation:
        """Segment one scan: a path (NIfTI, NRRD, MHA, a DICOM folder), a nibabel image, or a 3D
        array in HU with its 4 x 4 affine (RAS, mm)."""
        scan, source = _as_scan(image, affine)
        mask, probabilities, grid = self.pipeline.segment(scan, source)
        return Segmentation(mask, grid, self.labels, probabilities)

    def segment_folder(self, inputs: str | Path, output: str | Path) -> list:
        """Segment every scan under `inputs` into `output` as `medseg infer` does (one mask per
        scan, named after it; finished masks skipped); returns one CaseResult per scan."""
        from medseg.inference.batch import segment_folder

        return segment_folder(self.pipeline, Path(inputs), Path(output))


def segment(image, model, affine=None, **options) -> Segmentation:
    """Segment one scan with a trained model: Segmenter(model, **options)(image, affine)."""
    return Segmenter(model, **options)(image, affine)


def infer(model, inputs: str | Path, output: str | Path, **options) -> list:
    """`medseg infer`: segment a scan or a folder of scans into `output` (one rank's share under
    torchrun, results gathered from all ranks); returns one CaseResult per scan."""
    from medseg.inference.batch import infer_cases

    models = [model] if isinstance(model, (str, Path)) else list(model)
    return infer_cases(models, Path(inputs), Path(output), InferOptions.from_keywords(**options))


def train(config: TrainConfig | None = None, recipe: str | Path | None = None,
          resume: bool = False, overwrite: bool = False, **settings) -> dict:
    """`medseg train`: a TrainConfig, or a recipe (pipelines/*.yaml) and/or TrainConfig fields
    as keywords (they override the recipe); returns the best validation Dice and seconds."""
    from medseg.training.loop import train as run_training
    from medseg.training.recipes import build_config

    if config is not None and (recipe is not None or settings):
        raise MedsegError("give a TrainConfig, or a recipe and settings, not both")
    if config is None:
        config = build_config(Path(recipe) if recipe else None, settings)
    return run_training(config, resume=resume, overwrite=overwrite)


def crossval(config: TrainConfig | None = None, recipe: str | Path | None = None,
             folds: int = 5, overwrite: bool = False, figures: bool = True,
             **settings) -> dict:
    """`medseg crossval`: train every fold of `folds`, evaluate the pooled out-of-fold
    predictions and choose each organ's postprocessing; config.output becomes a model folder
    for `infer`. Returns the out-of-fold Dice without and with the postprocessing."""
    from medseg.cross_validation import crossval as run_crossval
    from medseg.training.recipes import build_config

    if config is not None and (recipe is not None or settings):
        raise MedsegError("give a TrainConfig, or a recipe and settings, not both")
    if config is None:
        config = build_config(Path(recipe) if recipe else None, settings)
    return run_crossval(config, folds=folds, overwrite=overwrite, figures=figures)


def plan(manifest: str | Path, output: str | Path | None = None, device: str = "auto",
         memory_gb: float | None = None, overwrite: bool = False) -> tuple[dict, Path]:
    """`medseg plan`: fingerprint a data set and plan its training for `device`; writes the
    plan (default: plan.json beside the manifest, which `train` then uses) and returns it with
    its path."""
    import os

    from medseg.data.files import check_not_input, write_json
    from medseg.data.manifest import load_manifest
    from medseg.runtime import resolve_device
    from medseg.training.planning import PLAN_NAME, make_plan

    manifest = Path(manifest)
    target = Path(output) if output else manifest.parent / PLAN_NAME
    cases, _ = load_manifest(manifest)
    check_not_input(target, [manifest, *(Path(c[k]) for c in cases for k in ("image", "label"))])
    if os.path.lexists(target) and not overwrite:
        raise MedsegError(f"{target}: a plan (or another file) is already there; pass "
                          "--overwrite to replace it, or --output to write elsewhere")
    result = make_plan(manifest, device=resolve_device(device).type, memory_gb=memory_gb)
    write_json(result, target)
    return result, target


def evaluate(pred: str | Path, ref: str | Path, output: str | Path, labels=None,
             ref_labels=None, pred_labels=None, nsd_tolerance: float = 2.0,
             resample_pred: bool = False, workers: int | None = None, figures: bool = True,
             progress: bool = False) -> dict:
    """`medseg evaluate`: per-organ metrics of predicted masks against references; writes
    per_case.csv, summary.json and the reports to `output` and returns the summary.

    Label maps are a JSON file, a shipped name (btcv, amos, ...) or a {id: name} dict. Without
    one, each side's masks describe themselves (OUTPUT/labels.json of `medseg infer`, each
    mask's CASE.labels.json or header label table, organ folders' file names); references that
    do not fall back to the dataset.json beside them, predictions to the references' map."""
    from medseg.data.labels import load_label_map
    from medseg.evaluation.evaluate import evaluate_folders

    pred, ref = Path(pred), Path(ref)
    ref_map = _label_map(ref_labels or labels, ref, pred) or load_label_map(_labels_beside(ref))
    pred_map = _label_map(pred_labels or labels, pred, ref) or ref_map
    return evaluate_folders(pred, ref, Path(output), ref_map, pred_map,
                            tolerance_mm=nsd_tolerance, resample=resample_pred, workers=workers,
                            figures=figures, progress=progress)


def convert(images: str | Path, annotations: str | Path, output: str | Path,
            labels=None) -> dict:
    """`medseg convert`: scans and their RTSTRUCT, DICOM-SEG or per-organ annotations -> an
    nnU-Net v2 raw data set in `output` that `train` and nnU-Net read; `labels` (a file, a
    shipped name or a dict) fixes the ids, else they follow the organ names found."""
    from medseg.data.convert import convert_dataset
    from medseg.data.labels import load_label_map

    return convert_dataset(Path(images), Path(annotations), Path(output),
                           None if labels is None else load_label_map(labels))


def models() -> list[dict]:
    """`medseg models`: every model medseg can fetch and run, one dict each (name, source,
    network, classes, abdominal organs, working spacing, download size, licence, whether and
    where it is installed)."""
    from medseg.models.catalog import as_json, rows

    return as_json(rows())


def download(name: str, offline: bool = False, progress: bool = True) -> list[str]:
    """`medseg download NAME`: fetch and install a model `models()` lists (nothing to do when
    it is installed); returns its folders."""
    from medseg.models.catalog import download as fetch

    return fetch(name, offline=offline, progress=progress)


def _label_map(given, masks: Path, other: Path) -> dict[int, str] | None:
    """The label map given for one side, else the one its masks describe themselves with
    (`other`: the other side, whose being one file makes a folder of organ files one case)."""
    from medseg.data.files import case_name
    from medseg.data.labels import load_label_map
    from medseg.evaluation.mask_files import folder_labels, list_cases

    if given is not None:
        return load_label_map(given)
    written = _written_by_infer(masks)
    if written is not None:
        return load_label_map(written)
    single = case_name(other) if other.is_file() else None
    described = folder_labels(list(list_cases(masks, single).values()))
    return None if described is None else load_label_map(described)


def _written_by_infer(masks: Path) -> Path | None:
    """OUTPUT/labels.json of `medseg infer` in the masks' folder (beside a single mask)."""
    from medseg.inference.batch import LABEL_MAP_NAME

    candidate = (masks.parent if masks.is_file() else masks) / LABEL_MAP_NAME
    return candidate if candidate.is_file() else None


def _labels_beside(ref: Path) -> Path:
    """The dataset.json beside (or in) the reference folder: the default label map."""
    for candidate in (ref.parent / "dataset.json", ref / "dataset.json"):
        if candidate.exists():
            return candidate
    raise MedsegError(f"no label map given and no dataset.json beside {ref}; pass --labels "
                      "(or --ref-labels and --pred-labels)")


def _as_scan(image, affine):
    """(a checked channel-first scan tensor, the name errors give it) for a path, a nibabel
    image, or an array with its affine."""
    from medseg.data.io import load_scan, scan_from_array

    if isinstance(image, (str, Path)):
        if affine is not None:
            raise MedsegError(f"{image}: a file carries its own affine; drop the affine argument")
        return load_scan(Path(image)), Path(image)
    if hasattr(image, "dataobj") and hasattr(image, "affine"):  # a nibabel image
        name = image.get_filename() or "the nibabel image"
        return scan_from_array(np.asanyarray(image.dataobj), image.affine, name), Path(name)
    if affine is None:
        raise MedsegError("an array needs its affine: segment(array, model, affine=...)")
    return scan_from_array(image, affine), Path("the array")

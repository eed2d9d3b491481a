"""TotalSegmentator's tasks from its weights folders: `--model totalsegmentator:total`.

TotalSegmentator keeps one nnU-Net v2 model folder per dataset id under
$TOTALSEG_HOME_DIR/nnunet/results (default ~/.totalsegmentator/nnunet/results). A task runs its
parts on the scan reoriented to the closest canonical (RAS) axes and resampled to the task's
isotropic spacing (cubic, rounded to integers, as TotalSegmentator does), merges them into one
mask with TotalSegmentator's class ids (later parts written over earlier ones), and takes the
mask back with nearest-neighbour resampling onto the scan's own grid.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medseg.data.geometry import ras_orientation
from medseg.data.labels import LABEL_MAP_DIR, canonical_name, load_label_map, subset_ids
from medseg.errors import MedsegError
from medseg.models.nnunet.predictor import NNUNetPredictor
from medseg.models.options import EngineOptions

SCHEME = "totalsegmentator:"


@dataclass(frozen=True)
class Task:
    datasets: tuple[int, ...]
    spacing: float  # mm, isotropic, what TotalSegmentator resamples to
    download: str  # the TotalSegmentator command that fetches its weights


# TotalSegmentator 2.x (totalsegmentator/python_api.py, map_to_binary.py).
TASKS = {
    "total": Task((291, 292, 293, 294, 295), 1.5, "totalseg_download_weights -t total"),
    "total_fast": Task((297,), 3.0, "totalseg_download_weights -t total_fast"),
    "total_fastest": Task((298,), 6.0, "totalseg_download_weights -t total_fastest"),
}


def is_totalseg(model) -> bool:
    return isinstance(model, str) and model.startswith(SCHEME)


def weights_home() -> Path:
    """Where TotalSegmentator keeps its nnU-Net folders."""
    home = os.environ.get("TOTALSEG_HOME_DIR")
    base = Path(home) if home else Path.home() / ".totalsegmentator"
    return base / "nnunet" / "results"


def part_folder(home: Path, dataset: int) -> Path | None:
    """The nnU-Net model folder of one dataset id: DatasetNNN_*/Trainer__Plans__config/."""
    for dataset_dir in sorted(home.glob(f"Dataset{dataset:03d}_*")):
        for model in sorted(dataset_dir.iterdir()):
            if (model / "plans.json").exists():
                return model
    return None


def task_folders(name: str) -> tuple[Task, list[Path]]:
    task_name = name[len(SCHEME):]
    if task_name not in TASKS:
        raise MedsegError(f"{name}: unknown TotalSegmentator task; medseg runs "
                          f"{', '.join(SCHEME + t for t in TASKS)}")
    task, home = TASKS[task_name], weights_home()
    folders = [part_folder(home, d) for d in task.datasets]
    missing = [d for d, f in zip(task.datasets, folders) if f is None]
    if missing:
        raise MedsegError(
            f"{name}: TotalSegmentator's weights (datasets {', '.join(map(str, missing))}) are "
            f"not in {home}; medseg does not download them: TotalSegmentator users get them "
            f"with `{task.download}` (set TOTALSEG_HOME_DIR if they live elsewhere)")
    return task, folders


def class_map() -> dict[int, str]:
    """TotalSegmentator's class map {id: canonical name}."""
    return load_label_map(LABEL_MAP_DIR / "totalseg_v2.json")


class TotalSegmentatorPredictor:
    """A TotalSegmentator task behind medseg's predictor interface."""

    spatial_dims = 3

    def __init__(self, name: str, options: EngineOptions | None = None,
                 device: torch.device | None = None, organs: list[str] | None = None):
        self.options = options or EngineOptions()
        self.task, folders = task_folders(name)
        self.cleanup = {}
        classes = class_map()
        ids = {canonical_name(n): i for i, n in classes.items()}
        wanted = self._wanted(organs, classes, name)
        # The merged mask has no class probabilities: the parts keep none.
        part_options = replace(self.options, save_probabilities=False)
        self.parts: list[tuple[NNUNetPredictor, np.ndarray]] = []
        for folder in folders:
            predictor = NNUNetPredictor(folder, part_options, device)
            if predictor.model.regions:
                raise MedsegError(f"{folder}: a region-based model where a TotalSegmentator "
                                  "part with a label map was expected; this is not one of "
                                  "TotalSegmentator's weights folders")
            lookup = np.zeros(len(predictor.labels), dtype=np.uint8)
            for local, label in predictor.labels.items():
                organ = canonical_name(label)
                if local and organ in ids and (wanted is None or organ in wanted):
                    lookup[local] = ids[organ]
            if lookup.any():  # a part none of whose classes are wanted is not run
                self.parts.append((predictor, lookup))
        kept = {int(i) for _, lookup in self.parts for i in lookup if i}
        self.labels = {0: "background", **{i: classes[i] for i in sorted(kept)}}
        # Masks record it in their 80-byte header: the parts run, digested.
        made_by = "+".join(p.model_id for p, _ in self.parts)
        self.model_id = f"{name} " + hashlib.sha256(made_by.encode()).hexdigest()[:16]
        self.spacing = (self.task.spacing,) * 3

    @staticmethod
    def _wanted(organs, classes: dict[int, str], name: str) -> set[str] | None:
        """The canonical names of the organs asked for (None: all), checked against the task's
        whole class map."""
        if not organs:
            return None
        return {canonical_name(classes[i]) for i in subset_ids(organs, classes, name)}

    def predict(self, scan: torch.Tensor) -> tuple[np.ndarray, None]:
        """The merged uint8 mask on exactly the scan's grid (probabilities are not kept)."""
        import nibabel as nib
        from monai.data import MetaTensor

        affine = np.asarray(scan.affine, dtype=float)
        image = np.asarray(scan[0].as_subclass(torch.Tensor).numpy())
        ornt, spacing = ras_orientation(affine)
        canonical = nib.orientations.apply_orientation(image, ornt)  # a view
        canonical_affine = affine @ nib.orientations.inv_ornt_aff(ornt, image.shape)
        zoom = np.asarray(spacing) / self.task.spacing
        # A float64 zoom truncated to integers: TotalSegmentator's change_spacing(dtype=int32).
        resampled = ndimage.zoom(canonical, zoom, order=3, output=np.float64)
        np.trunc(resampled, out=resampled)
        resampled_affine = canonical_affine.copy()
        resampled_affine[:3, :3] = canonical_affine[:3, :3] / zoom
        working = MetaTensor(torch.from_numpy(resampled.astype(np.float32))[None],
                             affine=torch.as_tensor(resampled_affine))
        del resampled
        merged = np.zeros(working.shape[1:], dtype=np.uint8)
        for predictor, lookup in self.parts:
            part, _ = predictor.predict(working)
            found = lookup[part]
            written = found > 0
            merged[written] = found[written]
        back = ndimage.zoom(merged, np.array(canonical.shape) / np.array(merged.shape), order=0)
        mask = nib.orientations.apply_orientation(
            back, nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                  ornt))
        return np.ascontiguousarray(mask, dtype=np.uint8), None

"""TotalSegmentator's tasks from its weights folders: `--model totalsegmentator:total`.

TotalSegmentator keeps one nnU-Net v2 model folder per dataset id under
$TOTALSEG_HOME_DIR/nnunet/results (default ~/.totalsegmentator/nnunet/results). A task runs its
parts on the scan reoriented to the closest canonical (RAS) axes and resampled to the task's
isotropic spacing (cubic, rounded to integers, as TotalSegmentator does), merges them into one
mask with TotalSegmentator's class ids (later parts written over earlier ones), and takes the
mask back with nearest-neighbour resampling onto the scan's own grid.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medseg.data.geometry import ras_orientation
from medseg.data.labels import LABEL_MAP_DIR, canonical_name, load_label_map, subset_ids
from medseg.errors import MedsegError, OutputError
from medseg.models.download import Archive, check_unchanged, install, medseg_home
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
# The release assets TotalSegmentator's own downloader fetches (libs.download_pretrained_
# weights, TotalSegmentator 2.x), one zip per dataset holding DatasetNNN_.../Trainer__Plans__
# config/. TotalSegmentator publishes no checksums: medseg records the SHA-256s at download.
RELEASES = "https://github.com/wasserth/TotalSegmentator/releases/download"
ARCHIVES = {
    291: Archive(f"{RELEASES}/v2.0.0-weights/Dataset291_TotalSegmentator_part1_organs_1559subj"
                 ".zip", "Dataset291_"),
    292: Archive(f"{RELEASES}/v2.0.0-weights/Dataset292_TotalSegmentator_part2_vertebrae_1532"
                 "subj.zip", "Dataset292_"),
    293: Archive(f"{RELEASES}/v2.0.0-weights/Dataset293_TotalSegmentator_part3_cardiac_1559subj"
                 ".zip", "Dataset293_"),
    294: Archive(f"{RELEASES}/v2.0.0-weights/Dataset294_TotalSegmentator_part4_muscles_1559subj"
                 ".zip", "Dataset294_"),
    295: Archive(f"{RELEASES}/v2.0.0-weights/Dataset295_TotalSegmentator_part5_ribs_1559subj"
                 ".zip", "Dataset295_"),
    297: Archive(f"{RELEASES}/v2.0.4-weights/Dataset297_TotalSegmentator_total_3mm_1559subj_v204"
                 ".zip", "Dataset297_"),
    298: Archive(f"{RELEASES}/v2.0.0-weights/Dataset298_TotalSegmentator_total_6mm_1559subj.zip",
                 "Dataset298_", size=134_827_240),
}
# Tasks whose weights need TotalSegmentator's licence (academic or commercial): listed by
# `medseg models`, never fetched.
LICENSED = {"tissue_types": 481, "heartchambers_highres": 301, "appendicular_bones": 304,
            "face": 303}
LICENCE = "Apache-2.0"  # TotalSegmentator's code and its openly released weights


def is_totalseg(model) -> bool:
    return isinstance(model, str) and model.startswith(SCHEME)


def weights_home() -> Path:
    """Where TotalSegmentator's nnU-Net folders are: its own home ($TOTALSEG_HOME_DIR, or
    ~/.totalsegmentator where that exists), else medseg's ($MEDSEG_HOME/totalsegmentator)."""
    home = os.environ.get("TOTALSEG_HOME_DIR")
    own = Path.home() / ".totalsegmentator"
    base = Path(home) if home else own if own.is_dir() else medseg_home() / "totalsegmentator"
    return base / "nnunet" / "results"


def task(name: str) -> Task:
    """The task a 'totalsegmentator:TASK' name names, or one line with the closest names."""
    task_name = name[len(SCHEME):]
    if task_name in LICENSED:
        raise MedsegError(f"{name}: its weights need TotalSegmentator's licence (academic or "
                          "commercial), which medseg does not fetch; get them with "
                          f"TotalSegmentator (`totalseg_set_license`), or use {SCHEME}total")
    if task_name not in TASKS:
        close = difflib.get_close_matches(task_name, list(TASKS), n=2, cutoff=0.5)
        hint = f" (did you mean {' or '.join(SCHEME + c for c in close)}?)" if close else ""
        raise MedsegError(f"{name}: unknown TotalSegmentator task{hint}; medseg runs "
                          f"{', '.join(SCHEME + t for t in TASKS)}")
    return TASKS[task_name]


def install_task(name: str, offline: bool = False, progress: bool = True) -> list[Path]:
    """The task's nnU-Net model folders, fetched from its release assets where missing."""
    home = weights_home()
    for dataset in task(name).datasets:
        install(ARCHIVES[dataset], home, f"{name} (dataset {dataset})", offline, progress)
    return [part_folder(home, d) for d in task(name).datasets]


def part_folder(home: Path, dataset: int) -> Path | None:
    """The nnU-Net model folder of one dataset id: DatasetNNN_*/Trainer__Plans__config/."""
    for dataset_dir in sorted(home.glob(f"Dataset{dataset:03d}_*")):
        for model in sorted(dataset_dir.iterdir()):
            if (model / "plans.json").exists():
                return model
    return None


def task_folders(name: str, offline: bool = False) -> tuple[Task, list[Path]]:
    """The task and its part folders: installed (fetched first where missing, unless offline),
    and, where medseg fetched them, unchanged since."""
    wanted = task(name)
    try:
        folders = install_task(name, offline)
    except OutputError:
        raise
    except MedsegError as exc:
        raise MedsegError(f"{exc}; TotalSegmentator users can also fetch them with "
                          f"`{wanted.download}` (set TOTALSEG_HOME_DIR if they live elsewhere)"
                          ) from None
    for folder in folders:
        check_unchanged(folder)
    return wanted, folders


def class_map() -> dict[int, str]:
    """TotalSegmentator's class map {id: canonical name}."""
    return load_label_map(LABEL_MAP_DIR / "totalseg_v2.json")


class TotalSegmentatorPredictor:
    """A TotalSegmentator task behind medseg's predictor interface."""

    spatial_dims = 3

    def __init__(self, name: str, options: EngineOptions | None = None,
                 device: torch.device | None = None, organs: list[str] | None = None):
        self.options = options or EngineOptions()
        self.task, folders = task_folders(name, self.options.offline)
        self.cleanup = {}
        classes = class_map()
        ids = {canonical_name(n): i for i, n in classes.items()}
        wanted = self._wanted(organs, classes, name)
        # The merged mask has no class probabilities: the parts keep none.
        part_options = replace(self.options, save_probabilities=False)
        self.parts: list[tuple[NNUNetPredictor, np.ndarray]] = []
        for folder in folders:
            predictor = NNUNetPredictor(folder, part_options, device)
            if predictor.region_based:
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

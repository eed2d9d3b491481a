"""Decathlon-format data sets (dataset.json): reading, validating and writing."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import MedsegError
from medseg.io import NIFTI_SUFFIXES, atomic_output, scan_suffix


def parse_labels(raw: dict, source: str, contiguous: bool = True) -> dict[int, str]:
    """Label map {id: name} from Decathlon ({"1": "liver"}) or name->id ({"liver": 1}) form.

    Training needs ids 0..N without gaps (every id is a network output), so that is the default;
    evaluation label maps may have gaps (contiguous=False), e.g. a subset of a public map.
    """
    labels: dict[int, str] = {}
    for key, value in raw.items():
        key_s, value_s = str(key), str(value)
        if key_s.lstrip("-").isdigit():
            labels[int(key_s)] = value_s
        elif value_s.lstrip("-").isdigit():
            labels[int(value_s)] = key_s
        else:
            raise MedsegError(f"{source}: label entry {key!r}: {value!r} has no integer id")
    if 0 not in labels:
        labels[0] = "background"
    ids = sorted(labels)
    if min(ids) < 0:
        raise MedsegError(f"{source}: label ids must not be negative, got {ids}")
    if contiguous and ids != list(range(len(ids))):
        raise MedsegError(f"{source}: label ids must be 0..N without gaps, got {ids}")
    return dict(sorted(labels.items()))


def load_labels(path: Path, contiguous: bool = True) -> dict[int, str]:
    """Label map from a JSON file: a dataset.json (its "labels") or a plain mapping."""
    raw = _read_json(Path(path))
    return parse_labels(raw.get("labels", raw), str(path), contiguous=contiguous)


def load_manifest(path: Path) -> tuple[list[dict], dict[int, str]]:
    """The training cases (absolute image/label paths, plus any extra keys) and the label map."""
    path = Path(path)
    data = _read_json(path)
    for key in ("labels", "training"):
        if key not in data:
            raise MedsegError(f"{path}: missing key {key!r} (a Decathlon dataset.json needs it)")
    labels = parse_labels(data["labels"], str(path))
    cases = []
    for index, entry in enumerate(data["training"]):
        if not isinstance(entry, dict) or not {"image", "label"} <= entry.keys():
            raise MedsegError(f"{path}: training entry {index} needs 'image' and 'label' paths")
        resolved = {k: str((path.parent / v).resolve()) for k, v in entry.items()
                    if k in ("image", "label")}
        cases.append({**entry, **resolved})
    if not cases:
        raise MedsegError(f"{path}: the 'training' list is empty")
    return cases, labels


def check_case_files(case: dict) -> None:
    """Fail early, naming the case, if files are missing or image and label grids disagree."""
    for key in ("image", "label"):
        if not Path(case[key]).exists():
            raise MedsegError(f"{case[key]}: {key} file not found")
    image_path, label_path = Path(case["image"]), Path(case["label"])
    if scan_suffix(image_path) in NIFTI_SUFFIXES and scan_suffix(label_path) in NIFTI_SUFFIXES:
        image, label = _nifti_header(image_path), _nifti_header(label_path)
        if image.shape[:3] != label.shape[:3]:
            raise MedsegError(
                f"{label_path}: label shape {label.shape} does not match image shape "
                f"{image.shape} ({image_path.name})"
            )
        if not np.allclose(image.affine, label.affine, atol=1e-3):
            raise MedsegError(
                f"{label_path}: label affine differs from the image's ({image_path.name}); "
                "resample the label onto the image grid"
            )


def _nifti_header(path: Path):
    try:
        return nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for bad headers
        raise MedsegError(f"{path}: cannot read NIfTI header ({exc})") from None


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise MedsegError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedsegError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MedsegError(f"{path}: expected a JSON object at the top level")
    return data


def write_json(data: dict, path: Path) -> None:
    """Write JSON atomically, pretty-printed."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")

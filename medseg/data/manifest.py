"""Data sets for training: Decathlon (a dataset.json with a "training" list) and nnU-Net v2 raw
folders (a dataset.json with "channel_names" and "file_ending" beside imagesTr/ and labelsTr/),
read as they are and validated."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib

from medseg.data.io import NIFTI_SUFFIXES, read_json, scan_suffix
from medseg.data.scan_checks import check_same_grid
from medseg.errors import MedsegError

_INTEGER = re.compile(r"-?[0-9]+")  # not str.isdigit: it accepts '²', which int() refuses


def parse_labels(raw: dict, source: str, contiguous: bool = True) -> dict[int, str]:
    """Label map {id: name} from Decathlon ({"1": "liver"}) or name->id ({"liver": 1}) form.

    Training needs ids 0..N without gaps (every id is a network output), so that is the default;
    evaluation label maps may have gaps (contiguous=False), e.g. a subset of a public map.
    """
    if not isinstance(raw, dict):
        raise MedsegError(f"{source}: 'labels' must be an object like {{\"1\": \"liver\"}}, "
                          f"not {type(raw).__name__}")
    labels: dict[int, str] = {}
    for key, value in raw.items():
        key_s, value_s = str(key), str(value)
        if _INTEGER.fullmatch(key_s):
            label_id, name = int(key_s), value_s
        elif _INTEGER.fullmatch(value_s):
            label_id, name = int(value_s), key_s
        else:
            raise MedsegError(f"{source}: label entry {key!r}: {value!r} has no integer id")
        if label_id in labels:  # "1" and "01": the second would silently rename the organ
            raise MedsegError(f"{source}: label id {label_id} is given twice ({labels[label_id]!r} "
                              f"and {name!r}); keep one entry per id")
        labels[label_id] = name
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
    raw = read_json(Path(path))
    return parse_labels(raw.get("labels", raw), str(path), contiguous=contiguous)


def load_manifest(path: Path) -> tuple[list[dict], dict[int, str]]:
    """The training cases (absolute image/label paths, plus any extra keys) and the label map."""
    path = Path(path)
    data = read_json(path)
    if "training" not in data and "file_ending" in data:
        return _nnunet_raw_cases(path, data), _nnunet_raw_labels(path, data)
    for key in ("labels", "training"):
        if key not in data:
            raise MedsegError(f"{path}: missing key {key!r} (a Decathlon dataset.json needs it)")
    labels = parse_labels(data["labels"], str(path))
    if not isinstance(data["training"], list):
        raise MedsegError(f"{path}: 'training' must be a list of {{\"image\": ..., \"label\": "
                          "...} entries")
    root = _data_root(path, data.get("root", "."))
    cases = [_training_case(path, root, index, entry)
             for index, entry in enumerate(data["training"])]
    if not cases:
        raise MedsegError(f"{path}: the 'training' list is empty; add image/label entries")
    first_entry: dict[str, int] = {}
    for index, case in enumerate(cases):
        first = first_entry.setdefault(case["image"], index)
        if first != index:
            # Twice listed, a case weighs double and can land in training and validation at once.
            raise MedsegError(f"{path}: training entries {first} and {index} are the same image "
                              f"({case['image']}); remove the duplicate")
    return cases, labels


NNUNET_CHANNEL = "_0000"  # nnU-Net v2's first (here: only) input channel


def _nnunet_raw_labels(path: Path, data: dict) -> dict[int, str]:
    """An nnU-Net v2 raw data set's label map ({name: id}); region-based maps are refused."""
    labels = data.get("labels")
    if isinstance(labels, dict) and any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise MedsegError(f"{path}: a region-based nnU-Net data set (labels with lists of ids); "
                          "medseg trains one class per voxel: give each label one id")
    if labels is None:
        raise MedsegError(f"{path}: missing key 'labels' (an nnU-Net dataset.json needs it)")
    return parse_labels(labels, str(path))


def _nnunet_raw_cases(path: Path, data: dict) -> list[dict]:
    """The cases of an nnU-Net v2 raw folder: every labelsTr/CASE{file_ending} with its
    imagesTr/CASE_0000{file_ending}, as nnU-Net finds them."""
    channels = data.get("channel_names", {})
    if not isinstance(channels, dict) or len(channels) != 1:
        names = ", ".join(map(str, channels.values())) if isinstance(channels, dict) else channels
        raise MedsegError(f"{path}: the data set has {len(channels)} input channels ({names}); "
                          "medseg trains on one scan per case (CT): keep channel 0000 only")
    ending = data["file_ending"]
    if not isinstance(ending, str) or scan_suffix(Path("x" + ending)) != ending.lower():
        raise MedsegError(f"{path}: file_ending {ending!r} is not a format medseg reads "
                          "(.nii.gz, .nii, .nrrd, .mha, ...); convert the files")
    images, labels = path.parent / "imagesTr", path.parent / "labelsTr"
    if not labels.is_dir():
        raise MedsegError(f"{path}: no labelsTr folder beside it; an nnU-Net raw data set keeps "
                          "its training labels in labelsTr/")
    found = sorted(p for p in labels.iterdir() if p.name.endswith(ending)
                   and not p.name.startswith("."))
    cases = []
    for label in found:
        case = label.name[: -len(ending)]
        image = images / f"{case}{NNUNET_CHANNEL}{ending}"
        if not image.is_file():
            raise MedsegError(f"{label}: no image {image.relative_to(path.parent)} for this "
                              "label; nnU-Net raw data sets name images CASE_0000"
                              f"{ending}")
        cases.append({"image": str(image.resolve()), "label": str(label.resolve())})
    if not cases:
        raise MedsegError(f"{labels}: no labels ending in {ending}; add the training cases")
    expected = data.get("numTraining")
    if expected is not None and expected != len(cases):
        raise MedsegError(f"{path}: numTraining is {expected}, but labelsTr holds {len(cases)} "
                          f"cases ending in {ending}; fix numTraining or the folder")
    return cases


def _data_root(manifest: Path, root) -> Path:
    """The folder a manifest's files must lie in: its own folder, or its "root" entry
    (absolute, or relative to the manifest) for data kept elsewhere, e.g. "/data/btcv"."""
    if not isinstance(root, str) or not root.strip() or "\0" in root:
        raise MedsegError(f"{manifest}: 'root' must be a folder path, not {root!r}")
    return Path(os.path.normpath(manifest.parent.absolute() / root))


def _training_case(manifest: Path, root: Path, index: int, entry) -> dict:
    """One training entry with absolute image/label paths, which must lie in the data root.

    Relative paths start at the manifest's folder. The check is on the path as written (not
    following symlinks), so data kept elsewhere can be linked in; '../' and absolute paths
    outside the root cannot make a shared dataset.json read files beyond the data it declares.
    """
    if not isinstance(entry, dict) or not {"image", "label"} <= entry.keys():
        raise MedsegError(f"{manifest}: training entry {index} needs 'image' and 'label' paths")
    root = Path(os.path.normpath(root))
    case = dict(entry)
    for key in ("image", "label"):
        if not isinstance(entry[key], str) or not entry[key].strip() or "\0" in entry[key]:
            raise MedsegError(f"{manifest}: training entry {index}: {key!r} must be a file path, "
                              f"not {entry[key]!r}")
        written = Path(os.path.normpath(root / entry[key]))
        if not written.is_relative_to(root):
            raise MedsegError(f"{manifest}: training entry {index}: {key} {entry[key]!r} lies "
                              f"outside the data root {root}; keep the data under the "
                              "manifest's folder (a symlink there works), or declare its "
                              "folder with \"root\" in the manifest")
        case[key] = str(written.resolve())
    return case


def check_case_files(case: dict) -> None:
    """Fail early, naming the case, if files are missing or image and label grids disagree."""
    for key in ("image", "label"):
        if not Path(case[key]).exists():
            raise MedsegError(f"{case[key]}: {key} file not found; fix its path in the manifest "
                              "(relative paths start at the manifest's folder)")
    image_path, label_path = Path(case["image"]), Path(case["label"])
    if scan_suffix(image_path) in NIFTI_SUFFIXES and scan_suffix(label_path) in NIFTI_SUFFIXES:
        image, label = _nifti_header(image_path), _nifti_header(label_path)
        check_same_grid(image.shape[:3], image.affine, label.shape[:3], label.affine,
                        image_path, label_path)


def _nifti_header(path: Path):
    try:
        return nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for bad headers
        raise MedsegError(f"{path}: cannot read NIfTI header ({exc}); the file is damaged or "
                          "not NIfTI: export it again") from None

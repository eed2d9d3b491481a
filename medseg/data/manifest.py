"""Data sets for training: Decathlon (a dataset.json with a "training" list), nnU-Net v2 raw
folders (a dataset.json with "channel_names" and "file_ending" beside imagesTr/ and labelsTr/),
read as they are and validated, and combinations of them whose label maps differ (a JSON with
"datasets": partial labels)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib

from medseg.data.files import NIFTI_SUFFIXES, read_json, scan_suffix
from medseg.data.labels import canonical_labels, canonical_name, parse_labels
from medseg.data.scan_checks import check_same_grid
from medseg.errors import MedsegError

log = logging.getLogger("medseg")


def load_manifest(path: Path) -> tuple[list[dict], dict[int, str]]:
    """The training cases (absolute image/label paths, plus any extra keys) and the label map."""
    path = Path(path)
    data = read_json(path)
    if "datasets" in data:
        return _combined_data_sets(path, data)
    if "training" not in data and "file_ending" in data:
        return _nnunet_raw_cases(path, data), _nnunet_raw_labels(path, data)
    for key in ("labels", "training"):
        if key not in data:
            raise MedsegError(f"{path}: missing key {key!r} (a Decathlon dataset.json needs it)")
    labels = parse_labels(data["labels"], str(path))
    canonical_labels(labels, str(path))  # two names of one organ: evaluate would refuse them
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
        if Path(case["image"]).resolve() == Path(case["label"]).resolve():
            raise MedsegError(f"{path}: training entry {index} gives the same file as image and "
                              f"label ({case['image']}); point 'label' at the organ mask")
        first = first_entry.setdefault(case["image"], index)
        if first != index:
            # Twice listed, a case weighs double and can land in training and validation at once.
            raise MedsegError(f"{path}: training entries {first} and {index} are the same image "
                              f"({case['image']}); remove the duplicate")
    return cases, labels


def _combined_data_sets(path: Path, data: dict) -> tuple[list[dict], dict[int, str]]:
    """Data sets that label different organ sets, trained as one (partial labels).

    {"datasets": ["btcv/dataset.json", "liver/dataset.json"], "labels": {...}}: organs are
    matched across the data sets' maps by canonical name; the combined map is "labels" if given,
    else every data set's organs in order of first appearance. Each case keeps how its ids move
    onto the combined map ("combined_ids", indexed by its own id) and which combined classes its
    data set annotates ("annotated"): the loss must not call the others background there.
    """
    entries = data["datasets"]
    if not isinstance(entries, list) or not entries or not all(
            isinstance(e, str) and e.strip() for e in entries):
        raise MedsegError(f"{path}: 'datasets' must be a list of data set files, like "
                          '["btcv/dataset.json", "liver/dataset.json"]')
    parts = []
    for entry in entries:
        part = Path(os.path.normpath(path.parent.absolute() / entry))
        if part.resolve() == path.resolve() or "datasets" in read_json(part):
            raise MedsegError(f"{path}: data set {entry!r} combines data sets itself; list the "
                              "data sets it combines instead")
        if any(part.resolve() == seen.resolve() for seen, *_ in parts):
            raise MedsegError(f"{path}: data set {entry!r} is listed twice; list it once")
        parts.append((part, *load_manifest(part)))
    check_one_meaning_per_name([(part, labels) for part, _, labels in parts])
    combined = (parse_labels(data["labels"], str(path)) if "labels" in data
                else _union_of_labels([labels for _, _, labels in parts]))
    cases, first_seen = [], {}
    for part, part_cases, labels in parts:
        combined_ids = _ids_on_combined_map(part, labels, combined)
        annotated = sorted({0, *combined_ids})
        for case in part_cases:
            first = first_seen.setdefault(case["image"], part)
            if first != part:
                raise MedsegError(f"{path}: {case['image']} is a case of both {first} and "
                                  f"{part}; keep it in one data set")
            cases.append({**case, "combined_ids": combined_ids, "annotated": annotated,
                          "dataset": str(part)})
    return cases, combined


def _union_of_labels(maps: list[dict[int, str]]) -> dict[int, str]:
    """Every organ of every map, once, in order of first appearance (names as first spelt)."""
    union, seen = {0: "background"}, {"background"}
    for labels in maps:
        for label_id, name in canonical_labels(labels, "a data set's labels").items():
            if name not in seen:
                seen.add(name)
                union[len(union)] = labels[label_id]
    return union


def _ids_on_combined_map(part: Path, labels: dict[int, str],
                         combined: dict[int, str]) -> list[int]:
    """Where each of a data set's ids goes on the combined map (by canonical name); an organ
    the combined map lacks becomes background, with a warning."""
    target = {name: i for i, name in canonical_labels(combined, "labels").items()}
    own = canonical_labels(labels, str(part))
    moved, missing = [0] * (max(own) + 1), []
    for label_id, name in own.items():
        if label_id and name not in target:
            missing.append(labels[label_id])
        moved[label_id] = target.get(name, 0)
    if missing:
        log.warning("%s: %s not in the combined label map; counted as background there",
                    part, ", ".join(missing))
    return moved


# Spellings of a left/right pair after canonical_name (kidney -> left_kidney, kidney_left, ...).
_SIDES = ("left_{}", "right_{}", "{}_left", "{}_right")


def check_one_meaning_per_name(maps: list[tuple[Path, dict[int, str]]]) -> None:
    """Refuse data sets that use one name for different organs: one calling both sides
    "kidney" while another splits them into left and right kidney. Combined, the two meanings
    would compete for the same voxels."""
    names = [(part, set(canonical_labels(labels, str(part)).values())) for part, labels in maps]
    for part, own in names:
        for other, theirs in names:
            for name in sorted(own - {"background"} if other != part else ()):
                sided = sorted({canonical_name(form.format(name)) for form in _SIDES} & theirs)
                if sided:
                    raise MedsegError(
                        f"{part}: its {name!r} covers both sides, while {other} labels "
                        f"{' and '.join(sided)} apart: one name, different organs; split the "
                        f"first data set's {name!r} into sides or merge the other's, then "
                        "combine them")


NNUNET_CHANNEL = "_0000"  # nnU-Net v2's first (here: only) input channel


def _nnunet_raw_labels(path: Path, data: dict) -> dict[int, str]:
    """An nnU-Net v2 raw data set's label map ({name: id}); region-based maps are refused."""
    labels = data.get("labels")
    if isinstance(labels, dict) and any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise MedsegError(f"{path}: a region-based nnU-Net data set (labels with lists of ids); "
                          "medseg trains one class per voxel: give each label one id")
    if labels is None:
        raise MedsegError(f"{path}: missing key 'labels' (an nnU-Net dataset.json needs it)")
    parsed = parse_labels(labels, str(path))
    canonical_labels(parsed, str(path))  # two names of one organ: evaluate would refuse them
    return parsed


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

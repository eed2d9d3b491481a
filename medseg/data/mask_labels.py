"""Masks that say what their ids mean: CASE.labels.json beside each mask, and the same names in
the NIfTI header as a label-table extension in TotalSegmentator's format (a CARET XML label
table), so TotalSegmentator's tools read medseg's masks and medseg reads TotalSegmentator's."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import nibabel as nib

from medseg.data.files import NIFTI_SUFFIXES, case_name, scan_suffix, write_json
from medseg.data.labels import load_labels
from medseg.data.organ_codes import colours

CARET_CODE = 30  # NIFTI_ECODE_CARET; TotalSegmentator writes the same XML under code 0
LABELS_SUFFIX = ".labels.json"


def label_extension(labels: dict[int, str]) -> nib.nifti1.Nifti1Extension:
    """The label table (ids above 0, names and colours) as a NIfTI header extension."""
    root = ET.Element("CaretExtension")
    volume = ET.SubElement(root, "VolumeInformation", Index="0")
    table = ET.SubElement(volume, "LabelTable")
    for label_id, rgb in colours(labels).items():
        red, green, blue = (f"{c / 255:.4g}" for c in rgb)
        entry = ET.SubElement(table, "Label", Key=str(label_id), Red=red, Green=green, Blue=blue,
                              Alpha="1")
        entry.text = labels[label_id]
    ET.SubElement(volume, "VolumeType").text = "Label"
    text = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")
    return nib.nifti1.Nifti1Extension(CARET_CODE, text)


def labels_from_header(header) -> dict[int, str] | None:
    """{id: name} (background 0 added) from a CARET label-table extension, or None."""
    for extension in getattr(header, "extensions", ()):
        if extension.get_code() not in (0, CARET_CODE):
            continue
        try:
            root = ET.fromstring(extension.content)
        except ET.ParseError:
            continue
        entries = root.findall("./VolumeInformation/LabelTable/Label")
        if root.tag == "CaretExtension" and entries:
            named = {int(e.get("Key")): (e.text or "").strip() for e in entries}
            return {0: named.pop(0, "background") or "background", **dict(sorted(named.items()))}
    return None


def labels_file(mask: Path) -> Path:
    """CASE.labels.json beside a mask CASE.nii.gz."""
    mask = Path(mask)
    return mask.parent / f"{case_name(mask)}{LABELS_SUFFIX}"


def write_labels_file(labels: dict[int, str], mask: Path) -> Path:
    """Write CASE.labels.json ({"labels": {"0": "background", "1": ...}}) atomically."""
    target = labels_file(mask)
    write_json({"labels": {str(i): name for i, name in sorted(labels.items())}}, target)
    return target


def described_labels(mask: Path) -> dict[int, str] | None:
    """The label map a mask carries: its CASE.labels.json, else its header's label table, else
    None (a folder of organ files is described by its file names instead)."""
    mask = Path(mask)
    beside = labels_file(mask)
    if beside.is_file():
        return load_labels(beside, contiguous=False)
    if mask.is_file() and scan_suffix(mask) in NIFTI_SUFFIXES:
        try:
            return labels_from_header(nib.load(str(mask)).header)
        except Exception:  # noqa: BLE001 - an unreadable file is reported where it is loaded
            return None
    return None

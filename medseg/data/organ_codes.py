"""What each organ is in DICOM terms and which colour every output draws it in, from
data_manifests/organ_codes.csv (one row per canonical organ name)."""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass

from medseg.data.labels import LABEL_MAP_DIR, canonical_name

CODES_FILE = LABEL_MAP_DIR.parent / "organ_codes.csv"
ANATOMICAL_STRUCTURE = ("91723000", "Anatomical Structure")  # SCT; the segments' category
# Organs without a row: distinct colours that read on a grey CT (Trubetskoy's 20 colours).
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
           (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
           (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128))


@dataclass(frozen=True)
class OrganCode:
    """SNOMED CT type of a segment (and its laterality), and its display colour."""

    type_code: str
    type_meaning: str
    modifier: tuple[str, str] | None  # (code, meaning): Right or Left
    rgb: tuple[int, int, int]


@functools.cache
def _table() -> dict[str, OrganCode]:
    with open(CODES_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    return {row["organ"]: OrganCode(
        row["type_code"], row["type_meaning"],
        (row["modifier_code"], row["modifier_meaning"]) if row["modifier_code"] else None,
        tuple(int(v) for v in row["rgb"].split())) for row in rows}


def organ_code(name: str, label_id: int) -> OrganCode:
    """The code and colour of an organ by any spelling of its name; an organ the table lacks is
    a generic anatomical structure, coloured by its label id."""
    known = _table().get(canonical_name(name))
    if known is not None:
        return known
    return OrganCode(*ANATOMICAL_STRUCTURE, None, PALETTE[label_id % len(PALETTE)])


def colours(labels: dict[int, str]) -> dict[int, tuple[int, int, int]]:
    """{label id: RGB} for every organ of a label map (background left out)."""
    return {i: organ_code(name, i).rgb for i, name in labels.items() if i}

"""Organ names: one canonical vocabulary, the aliases public label maps use, and name matching.

Label ids differ between data sets (liver is 6 in BTCV, 1 in FLARE22, 5 in TotalSegmentator), so
evaluation pairs reference and prediction labels by canonical organ name, never by number.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.data.files import read_json
from medseg.errors import MedsegError

LABEL_MAP_DIR = Path(__file__).resolve().parents[2] / "data_manifests" / "label_maps"
SHIPPED_MAPS = ("synthetic", "btcv", "amos", "flare22", "totalseg_v2")

# The canonical names: BTCV's 13 organs (as in label_maps/btcv.json) and AMOS's extra three.
# Any other structure (TotalSegmentator's vertebrae, ribs, ...) keeps its own snake_case name.
CANONICAL_ORGANS = (
    "spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver", "stomach",
    "aorta", "inferior_vena_cava", "portal_and_splenic_veins", "pancreas",
    "right_adrenal_gland", "left_adrenal_gland", "duodenum", "urinary_bladder",
    "prostate_or_uterus",
)

# Spellings seen in public label maps (after snake-casing) -> canonical name. The short forms
# are BTCV's original ones (rkid, gall, rad), "arota" and "postcava" are AMOS's dataset.json.
ALIASES = {
    "kidney_right": "right_kidney", "rkid": "right_kidney", "kidney_r": "right_kidney",
    "kidney_left": "left_kidney", "lkid": "left_kidney", "kidney_l": "left_kidney",
    "gall_bladder": "gallbladder", "gall": "gallbladder",
    "oesophagus": "esophagus", "eso": "esophagus",
    "sto": "stomach",
    "arota": "aorta",
    "ivc": "inferior_vena_cava", "postcava": "inferior_vena_cava",
    "portal_vein_and_splenic_vein": "portal_and_splenic_veins", "veins": "portal_and_splenic_veins",
    "portal_and_splenic_vein": "portal_and_splenic_veins",
    "portal_vein_splenic_vein": "portal_and_splenic_veins",
    "adrenal_gland_right": "right_adrenal_gland", "right_adrenal": "right_adrenal_gland",
    "rad": "right_adrenal_gland",
    "adrenal_gland_left": "left_adrenal_gland", "left_adrenal": "left_adrenal_gland",
    "lad": "left_adrenal_gland",
    "bladder": "urinary_bladder",
    "prostate_uterus": "prostate_or_uterus",
    "bg": "background",
}


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


def canonical_name(name: str) -> str:
    """The canonical snake_case name of any spelling ('Kidney Right', 'rkid' -> right_kidney)."""
    key = re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")
    return ALIASES.get(key, key)


def canonical_labels(labels: dict[int, str], source: str) -> dict[int, str]:
    """A label map with canonical names; two ids that name the same organ are an error."""
    named = {i: canonical_name(n) for i, n in sorted(labels.items())}
    seen: dict[str, int] = {}
    for label_id, name in named.items():
        if name in seen:
            raise MedsegError(f"{source}: ids {seen[name]} and {label_id} both name {name!r} "
                              f"({labels[seen[name]]!r}, {labels[label_id]!r}); keep one of them")
        seen[name] = label_id
    return named


def load_label_map(spec: str | Path | Mapping) -> dict[int, str]:
    """A label map {id: name} from a JSON file, a shipped map name ('btcv', ...), or a mapping
    in either JSON form ({1: "liver"} or {"liver": 1}). Names stay as the map spells them
    (reports show them); two ids naming the same organ are refused."""
    if isinstance(spec, Mapping):
        labels = parse_labels(dict(spec), "the label map", contiguous=False)
        canonical_labels(labels, "the label map")
        return labels
    path = Path(spec)
    if not path.exists() and str(spec) in SHIPPED_MAPS:
        path = LABEL_MAP_DIR / f"{spec}.json"
    elif not path.exists():
        raise MedsegError(f"{spec}: no such label map file; shipped maps are "
                          f"{', '.join(SHIPPED_MAPS)}")
    labels = load_labels(path, contiguous=False)
    canonical_labels(labels, str(path))
    return labels


@dataclass
class LabelMatch:
    """Both label maps (names as their maps spell them), the organs they share and those only
    one side has."""

    reference: dict[int, str]
    prediction: dict[int, str]
    organs: list[tuple[str, int, int]]  # (reference's name, reference id, prediction id)
    reference_only: list[str]
    prediction_only: list[str]


def match_label_maps(ref: dict[int, str], pred: dict[int, str]) -> LabelMatch:
    """Pair reference and prediction ids by canonical organ name (kidney_right and Right Kidney
    are one organ); the pairs carry the reference's own spelling."""
    ref_ids = {n: i for i, n in canonical_labels(ref, "reference labels").items() if i > 0}
    pred_ids = {n: i for i, n in canonical_labels(pred, "prediction labels").items() if i > 0}
    organs = [(ref[ref_ids[key]], ref_ids[key], pred_ids[key]) for key in ref_ids
              if key in pred_ids]
    if not organs:
        raise MedsegError("the reference and prediction label maps share no organ name; "
                          "check --ref-labels and --pred-labels")
    return LabelMatch(dict(ref), dict(pred), organs,
                      [ref[i] for key, i in ref_ids.items() if key not in pred_ids],
                      [pred[i] for key, i in pred_ids.items() if key not in ref_ids])


def totalsegmentator_map(classmap: Path) -> dict:
    """Our label-map JSON from TotalSegmentator's class map ({"1": "spleen", ...})."""
    raw = json.loads(Path(classmap).read_text())
    labels = {0: "background", **{int(k): v for k, v in raw.items()}}
    named = canonical_labels(labels, str(classmap))
    return {"labels": {str(k): named[k] for k in sorted(named)}}


def remap_by_name(mask: np.ndarray, source: dict[int, str], target: dict[int, str]) -> np.ndarray:
    """A mask's ids moved from one label map to another by organ name (uint8); organs the
    target lacks become background. E.g. a TotalSegmentator mask onto a data set's labels."""
    source, target = canonical_labels(source, "source labels"), canonical_labels(target,
                                                                                "target labels")
    target_ids = {name: i for i, name in target.items()}
    lookup = np.zeros(max(max(source), int(mask.max())) + 1, dtype=np.uint8)
    for source_id, name in source.items():
        lookup[source_id] = target_ids.get(name, 0)
    return lookup[np.asarray(mask).astype(np.intp)]


def subset_ids(names: list[str], labels: dict[int, str], model: str) -> list[int]:
    """The label ids of the named organs, in label order; unknown names refused with
    suggestions from the model's own organ names."""
    ids = {canonical_name(name): i for i, name in labels.items() if i}
    unknown = [n for n in names if canonical_name(n) not in ids]
    if unknown:
        known = [labels[i] for i in sorted(ids.values())]
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(canonical_name(name), list(ids), n=3, cutoff=0.6)
            shown = " or ".join(labels[ids[c]] for c in close)
            hints.append(f"{name!r}" + (f" (did you mean {shown}?)" if close else ""))
        listing = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
        raise MedsegError(f"--roi-subset: {', '.join(hints)} not among {model}'s organs "
                          f"({listing})")
    return sorted({ids[canonical_name(n)] for n in names})

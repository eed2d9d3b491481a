"""Property-based checks: random manifests and random NIfTI/NRRD headers either work or raise
medseg's own MedsegError (one clear line in the CLI), never another exception (a traceback).

What "works" means is checked too: label ids 0..N, case paths inside the data root, and scans
that come back 3D with finite geometry and a plausible spacing.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from medseg.data.io import load_mask, load_scan
from medseg.data.labels import parse_labels
from medseg.data.manifest import load_manifest
from medseg.data.scan_checks import SPACING_RANGE_MM
from medseg.errors import MedsegError

SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

# ------------------------------------------------------------------------------- manifests

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


def often(valid, odd):
    """Mostly the valid strategy, sometimes the odd one: so both outcomes are explored."""
    return st.sampled_from([valid, valid, valid, odd]).flatmap(lambda strategy: strategy)


valid_paths = st.integers(0, 3).map(lambda i: f"imagesTr/case{i}.nii.gz") \
    | st.sampled_from(["./labelsTr/a.nii.gz", "a.nii.gz", "sub/../b.nrrd", "DICOM/series1"])
odd_paths = st.sampled_from(["../a.nii.gz", "x/../../a.nii.gz", "/etc/passwd", "", " ",
                             "a\0b.nii.gz", "./imagesTr/../imagesTr/case0.nii.gz"]) \
    | st.text(max_size=12) | json_values
entries = often(st.fixed_dictionaries({"image": often(valid_paths, odd_paths),
                                       "label": often(valid_paths, odd_paths)},
                                      optional={"fold": json_values}), json_values)
valid_labels = st.integers(1, 4).flatmap(lambda n: st.sampled_from([
    {str(i): f"organ{i}" for i in range(n)}, {f"organ{i}": i for i in range(1, n + 1)}]))
label_keys = st.sampled_from(["0", "1", "2", "-1", "²", "01", "+1", "liver"]) | st.text(max_size=4)
odd_labels = st.dictionaries(label_keys, label_keys | st.integers(-2, 4), max_size=4) \
    | json_values
label_maps = often(valid_labels, odd_labels)
manifests = often(st.fixed_dictionaries({"labels": label_maps,
                                         "training": often(st.lists(entries, max_size=4),
                                                           json_values)},
                                        optional={"name": json_values}),
                  st.fixed_dictionaries({}, optional={"labels": label_maps,
                                                      "training": json_values}) | json_values)


def check_manifest_result(cases: list[dict], labels: dict, root: Path) -> None:
    assert sorted(labels) == list(range(len(labels)))
    assert all(isinstance(name, str) for name in labels.values())
    assert cases and len({c["image"] for c in cases}) == len(cases)
    for case in cases:
        for key in ("image", "label"):
            assert Path(case[key]).is_absolute() and Path(case[key]).is_relative_to(root)


@SETTINGS
@given(document=manifests)
def test_manifest_parser_works_or_raises_medseg_error(tmp_path, document):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(document))
    try:
        cases, labels = load_manifest(path)
    except MedsegError as exc:
        event(f"refused: {str(exc).split(':')[1][:30]}")
        return
    event("works")
    check_manifest_result(cases, labels, tmp_path.resolve())


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_manifest_parser_survives_arbitrary_bytes(tmp_path, content):
    path = tmp_path / "dataset.json"
    path.write_bytes(content)
    with pytest.raises(MedsegError):  # a few bytes are never a complete manifest
        load_manifest(path)


@settings(max_examples=200, deadline=None, database=None)
@given(raw=label_maps, contiguous=st.booleans())
def test_label_maps_parse_or_raise_medseg_error(raw, contiguous):
    try:
        labels = parse_labels(raw, "labels.json", contiguous=contiguous)
    except MedsegError:
        return
    assert 0 in labels and min(labels) >= 0
    assert not contiguous or sorted(labels) == list(range(len(labels)))


# --------------------------------------------------------------------------- scan headers

odd_floats = st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.5, 1e-4, 1e3, 1e6, -0.0, math.nan, math.inf,
                              -math.inf]) | st.floats(-100, 100)


def check_loaded(volume_or_array, affine) -> None:
    """What every successful load guarantees downstream code."""
    shape = tuple(volume_or_array.shape)[-3:]
    assert len(shape) == 3 and min(shape) >= 1
    affine = np.asarray(affine, dtype=np.float64)
    assert np.isfinite(affine).all()
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    assert np.all((spacing >= SPACING_RANGE_MM[0]) & (spacing <= SPACING_RANGE_MM[1]))


def geometry(draw) -> tuple[np.ndarray, np.ndarray]:
    """A voxel-to-world affine: a plausible one (axes permuted, flipped, offset) or an odd one."""
    if draw(st.sampled_from([True, True, False])):
        spacing = np.array(draw(st.lists(st.sampled_from([0.5, 0.8, 1.0, 2.5, 5.0]),
                                         min_size=3, max_size=3)))
        axes = np.eye(3)[:, draw(st.permutations([0, 1, 2]))]
        axes = axes * draw(st.lists(st.sampled_from([1.0, -1.0]), min_size=3, max_size=3))
        affine = np.eye(4)
        affine[:3, :3] = axes * spacing
        affine[:3, 3] = draw(st.lists(st.floats(-300, 300), min_size=3, max_size=3))
        return affine, spacing
    affine = np.eye(4)
    affine[:3] = np.array(draw(st.lists(odd_floats, min_size=12, max_size=12))).reshape(3, 4)
    return affine, np.array(draw(st.lists(odd_floats, min_size=3, max_size=3)))


@st.composite
def nifti_files(draw):
    """A NIfTI with a random shape, type, sform/qform codes, pixdim and sform (plausible or
    not); the file may then be cut off, or have its header scribbled on."""
    shape = draw(often(st.tuples(*[st.integers(1, 4)] * 3),
                       st.lists(st.integers(0, 4), min_size=1, max_size=5).map(tuple)))
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.uint16, np.int32, np.float32,
                                  np.float64]))
    values = draw(st.sampled_from(["ct", "ct", "ct", "constant", "unit", "nonfinite"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    array = {"ct": lambda: rng.integers(-1000, 400, shape), "constant": lambda: np.zeros(shape),
             "unit": lambda: rng.random(shape),
             "nonfinite": lambda: np.where(rng.random(shape) < 0.1, np.nan, 1.0)}[values]()
    with np.errstate(invalid="ignore"):
        array = array.astype(dtype)
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    affine, pixdim = geometry(draw)
    header["sform_code"] = draw(st.sampled_from([1, 1, 2, 0, 4]))
    header["qform_code"] = draw(st.sampled_from([0, 0, 1, 3]))
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
    header["pixdim"][1:4] = pixdim
    header["pixdim"][0] = draw(st.sampled_from([1.0, -1.0, 0.0]))  # qfac
    header["quatern_b"], header["quatern_c"], header["quatern_d"] = draw(
        often(st.just((0.0, 0.0, 0.0)), st.tuples(*[st.floats(-1.5, 1.5)] * 3)))
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "scribble"]))
    suffix = draw(st.sampled_from([".nii", ".nii.gz"]))
    return array, header, damage, suffix, draw(st.integers(0, 400))


@SETTINGS
@given(case=nifti_files())
def test_nifti_headers_load_or_raise_medseg_error(tmp_path, case):
    array, header, damage, suffix, where = case
    path = tmp_path / f"scan{suffix}"
    try:
        nib.save(nib.Nifti1Image(array, None, header=header), str(path))
    except Exception:  # noqa: BLE001 - nibabel refusing to write it is not what is tested
        assume(False)
    if damage != "none":
        raw = gzip.decompress(path.read_bytes()) if suffix == ".nii.gz" else path.read_bytes()
        raw = raw[:where] if damage == "truncate" else \
            raw[:where % 348] + b"\xff\x00" + raw[where % 348 + 2:]
        path.write_bytes(gzip.compress(raw) if suffix == ".nii.gz" else raw)
    for load in (load_scan, load_mask):
        try:
            result = load(path)
        except MedsegError as exc:
            event(f"{load.__name__} refused: {str(exc).split(': ', 1)[1][:25]}")
            continue
        event(f"{load.__name__} works")
        volume, affine = (result, result.affine) if load is load_scan else result
        check_loaded(volume, affine)


NRRD_TYPES = {"short": "<i2", "uchar": "u1", "float": "<f4", "double": "<f8", "int": "<i4"}


@st.composite
def nrrd_files(draw):
    """A valid NRRD header (spacings or space directions, raw or gzip) and its data, then
    maybe a field dropped or given an odd value, and maybe the data cut short."""
    sizes = draw(often(st.lists(st.integers(1, 4), min_size=3, max_size=3),
                       st.lists(st.integers(0, 4), min_size=1, max_size=4)))
    kind = draw(st.sampled_from(sorted(NRRD_TYPES)))
    affine, spacing = geometry(draw)
    fields = {"type": kind, "dimension": str(len(sizes)), "sizes": " ".join(map(str, sizes)),
              "endian": "little", "encoding": draw(st.sampled_from(["raw", "gzip"]))}
    if draw(st.booleans()):
        fields["spacings"] = " ".join(f"{v}" for v in spacing[:len(sizes)])
    else:
        fields["space"] = "left-posterior-superior"
        fields["space directions"] = " ".join(
            "(" + ",".join(f"{v}" for v in affine[:3, i]) + ")" for i in range(len(sizes)))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        key = draw(st.sampled_from(sorted(fields)))
        fields[key] = draw(st.sampled_from(["", "nan", "0", "-1", "1e9", "block", "x y z",
                                            "(0,0,0) (0,1,0) (0,0,1)", "big", "hex"]))
    drop = draw(st.sampled_from([None] * 8 + sorted(fields)))
    header = "NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in fields.items() if k != drop)
    values = np.random.default_rng(0).integers(-1000, 400, max(1, math.prod(sizes)))
    payload = values.astype(NRRD_TYPES[kind]).tobytes()
    if draw(st.sampled_from([False, False, False, True])):
        payload = payload[: draw(st.integers(0, len(payload)))]
    if fields["encoding"] == "gzip":
        payload = gzip.compress(payload)
    return (header + "\n").encode() + payload


@SETTINGS
@given(content=nrrd_files())
def test_nrrd_headers_load_or_raise_medseg_error(tmp_path, content):
    path = tmp_path / "scan.nrrd"
    path.write_bytes(content)
    try:
        volume = load_scan(path)
    except MedsegError as exc:
        event(f"refused: {str(exc).split(': ', 1)[1][:25]}")
        return
    event("works")
    check_loaded(volume, volume.affine)

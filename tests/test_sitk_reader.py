"""Tests of medseg.data.sitk_reader.SimpleITKReader against independent geometry computations."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import write_dicom_series
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirst,
    EnsureChannelFirstd,
    LoadImage,
    LoadImaged,
    Orientation,
    Orientationd,
)
from monai.utils import MetaKeys, SpaceKeys

from medseg.data.sitk_reader import SimpleITKReader

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
PETCT = REAL / "petct_dicom"
DCMQI = REAL / "dcmqi_3slice"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# A small image whose geometry exercises every part of the affine: anisotropic spacing, an offset
# origin and a direction that swaps x/y and flips z (improper, like many scanner volumes).
SIZE = (7, 5, 4)
SPACING = (0.7, 1.3, 2.1)
ORIGIN = (10.5, -20.25, 33.0)
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def _require(path: Path) -> Path:
    """Skip the test when the shared real data set is not beside the checkout."""
    if not path.exists():
        pytest.skip(f"real test data not found at {path}")
    return path


def _synthetic(components: int = 1) -> sitk.Image:
    """Return a 7x5x4 int16 image (or vector image) with unique voxel values and odd geometry."""
    x, y, z = SIZE
    values = np.arange(x * y * z * components, dtype=np.int16).reshape(z, y, x, components)
    img = sitk.GetImageFromArray(
        values if components > 1 else values[..., 0], isVector=components > 1
    )
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    return img


def _world(affine: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """Return the world coordinate of a voxel index under a 4x4 affine."""
    return (np.asarray(affine, dtype=np.float64) @ np.array([*index, 1.0]))[:3]


def _corner_centres(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Return the world coordinates of the 8 corner voxel centres, sorted (order-free)."""
    corners = itertools.product(*[(0, n - 1) for n in shape[:3]])
    points = np.array([_world(affine, c) for c in corners])
    return points[np.lexsort(np.round(points, 3).T[::-1])]


# ---------------------------------------------------------------------------- suffixes


def test_verify_suffix(tmp_path: Path) -> None:
    reader = SimpleITKReader()
    for name in ["a.nrrd", "a.NHDR", "a.mha", "a.MHD", "a.dcm", str(tmp_path)]:
        assert reader.verify_suffix(name), name
    assert reader.verify_suffix(["a.nrrd", "b.mha"])
    for name in ["a.nii.gz", "a.nii", "a.png", "a.nrrd.bak", str(tmp_path / "missing_dir")]:
        assert not reader.verify_suffix(name), name
    assert not reader.verify_suffix(["a.nrrd", "b.nii.gz"])


# ---------------------------------------------------------------------------- real data


def test_petct_dicom_folder_geometry_and_hu() -> None:
    folder = _require(PETCT / "dicom")
    img, meta = LoadImage(reader=SimpleITKReader(), image_only=False)(folder)
    affine = np.asarray(meta[MetaKeys.AFFINE])
    assert tuple(img.shape) == (512, 512, 20)
    assert np.allclose(
        np.linalg.norm(affine[:3, :3], axis=0), [0.9765625, 0.9765625, 2.0], atol=1e-4
    )
    assert img.min() <= -1000 and img.max() > 1000
    assert meta[MetaKeys.SPACE] == SpaceKeys.RAS
    assert np.isnan(meta[MetaKeys.ORIGINAL_CHANNEL_DIM])
    assert tuple(meta[MetaKeys.SPATIAL_SHAPE]) == (512, 512, 20)

    # Oracle: nibabel's reading of the reference mask, made on the same grid. That NIfTI stores its
    # rows in the opposite order (its j axis runs anterior, DICOM's posterior), so the two
    # index->world maps differ by a y flip; the grids must still coincide centre for centre.
    mask = nib.load(PETCT / "reference_seg_totalsegmentator_v2fast.nii.gz")
    assert mask.shape == tuple(img.shape)
    assert np.allclose(
        _corner_centres(affine, img.shape), _corner_centres(mask.affine, mask.shape), atol=1e-3
    )
    flip_y = np.diag([1.0, -1.0, 1.0, 1.0])
    flip_y[1, 3] = mask.shape[1] - 1
    assert np.allclose(affine, mask.affine @ flip_y, atol=1e-3)


def test_petct_pipeline_reorients_to_ras_and_aligns_with_mask() -> None:
    folder = _require(PETCT / "dicom")
    keys = ["image", "label"]
    # the .nii.gz mask is refused by SimpleITKReader.read, so LoadImaged falls back to nibabel
    pipeline = Compose(
        [
            LoadImaged(keys, reader=SimpleITKReader()),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS"),
        ]
    )
    mask_path = PETCT / "reference_seg_totalsegmentator_v2fast.nii.gz"
    data = pipeline({"image": str(folder), "label": str(mask_path)})
    image, label = data["image"], data["label"]
    affine = image.affine.numpy()
    assert np.all(np.diag(affine)[:3] > 0)
    assert np.allclose(affine[:3, :3], np.diag(np.diag(affine)[:3]), atol=1e-6)
    # independent oracle: nibabel's own reorientation of the mask
    assert np.allclose(affine, nib.as_closest_canonical(nib.load(mask_path)).affine, atol=1e-3)
    assert np.allclose(affine, label.affine.numpy(), atol=1e-3)
    # voxel alignment: the README's mean HU of liver (label 5, ~89) and aorta (label 52, ~177)
    hu, lab = image[0].numpy(), label[0].numpy()
    assert 70 < hu[lab == 5].mean() < 110
    assert 150 < hu[lab == 52].mean() < 210


@pytest.mark.parametrize("name, label", [("liver", 1), ("spine", 2), ("heart", 3)])
def test_dcmqi_nrrd_masks_share_the_dicom_grid(name: str, label: int) -> None:
    _require(DCMQI)
    load = LoadImage(reader=SimpleITKReader(), image_only=False)
    ct, ct_meta = load(DCMQI / "dicom")
    seg, seg_meta = load(DCMQI / f"{name}_seg.nrrd")
    assert tuple(seg.shape) == (512, 512, 3)
    assert set(np.unique(seg.numpy()).tolist()) == {0, label}
    assert np.allclose(seg_meta[MetaKeys.AFFINE], ct_meta[MetaKeys.AFFINE], atol=1e-3)
    if name == "spine":  # a mask on the wrong rows would miss the bone
        assert ct.numpy()[seg.numpy() == label].mean() > 150


# ---------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".mha", ".mhd"])
def test_synthetic_round_trip_matches_sitk_physical_points(tmp_path: Path, suffix: str) -> None:
    img = _synthetic()
    path = tmp_path / f"img{suffix}"
    sitk.WriteImage(img, str(path))
    reader = SimpleITKReader()
    array, meta = reader.get_data(reader.read(path))
    assert array.shape == SIZE and array.dtype == np.int16
    assert tuple(meta[MetaKeys.SPATIAL_SHAPE]) == SIZE
    assert np.allclose(meta["spacing"], SPACING)
    assert meta[MetaKeys.SPACE] == SpaceKeys.RAS
    assert meta["filename_or_obj"] == str(path)
    for index in [(0, 0, 0), (6, 0, 0), (0, 4, 0), (0, 0, 3), (6, 4, 3), (3, 2, 1)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(index))
        assert np.allclose(_world(meta[MetaKeys.AFFINE], index), LPS_TO_RAS @ lps), index
        assert array[index] == img.GetPixel(index), index


def test_synthetic_matches_nibabel_reading_sitk_nifti_export(tmp_path: Path) -> None:
    # SimpleITK's NIfTI writer does its own LPS->RAS conversion; nibabel reads it back.
    img = _synthetic()
    sitk.WriteImage(img, str(tmp_path / "img.nrrd"))
    sitk.WriteImage(img, str(tmp_path / "img.nii.gz"))
    ours = LoadImage(reader=SimpleITKReader())(tmp_path / "img.nrrd")
    ref = nib.load(tmp_path / "img.nii.gz")
    assert np.allclose(ours.affine.numpy(), ref.affine, atol=1e-5)
    assert np.array_equal(ours.numpy(), np.asanyarray(ref.dataobj))


def test_vector_image_puts_components_last(tmp_path: Path) -> None:
    img = _synthetic(components=3)
    sitk.WriteImage(img, str(tmp_path / "vec.mha"))
    loaded = LoadImage(reader=SimpleITKReader())(tmp_path / "vec.mha")
    assert tuple(loaded.shape) == (*SIZE, 3)
    assert loaded.meta[MetaKeys.ORIGINAL_CHANNEL_DIM] == -1
    assert tuple(loaded.meta[MetaKeys.SPATIAL_SHAPE]) == SIZE
    for index in [(0, 0, 0), (6, 4, 3), (2, 3, 1)]:
        assert tuple(loaded[index].tolist()) == img.GetPixel(index)
    first = EnsureChannelFirst()(loaded)
    assert tuple(first.shape) == (3, *SIZE)


def test_list_of_files_stacks_as_channels(tmp_path: Path) -> None:
    img = _synthetic()
    sitk.WriteImage(img, str(tmp_path / "a.nrrd"))
    sitk.WriteImage(img * 2, str(tmp_path / "b.mha"))
    reader = SimpleITKReader()
    array, meta = reader.get_data(reader.read([tmp_path / "a.nrrd", tmp_path / "b.mha"]))
    assert array.shape == (2, *SIZE)
    assert meta[MetaKeys.ORIGINAL_CHANNEL_DIM] == 0
    assert np.array_equal(array[1], 2 * array[0])


def test_lps_mode_keeps_itk_affine_and_orients_like_ras_mode(tmp_path: Path) -> None:
    img = _synthetic()
    path = tmp_path / "img.nrrd"
    sitk.WriteImage(img, str(path))
    lps = LoadImage(reader=SimpleITKReader(affine_lps_to_ras=False))(path)
    ras = LoadImage(reader=SimpleITKReader())(path)
    assert lps.meta[MetaKeys.SPACE] == SpaceKeys.LPS
    index = (6, 4, 3)
    assert np.allclose(_world(lps.affine, index), img.TransformIndexToPhysicalPoint(index))
    # MONAI 1.6 only reads the "space" key when labels=None is passed explicitly
    lps_ras = Orientation(axcodes="RAS", labels=None)(EnsureChannelFirst()(lps))
    ras_ras = Orientation(axcodes="RAS")(EnsureChannelFirst()(ras))
    assert torch.equal(lps_ras.as_tensor(), ras_ras.as_tensor())
    assert isinstance(lps_ras, MetaTensor)


def test_dicom_slices_are_ordered_by_position_not_instance_number(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "one", "1.2.826.0.1.3680043.2.1125.7", [5.0, 0.0, 2.5])
    reader = SimpleITKReader()
    array, meta = reader.get_data(reader.read(tmp_path / "one"))
    assert array.shape == (3, 4, 3)
    # slices sit at z = 0.0, 2.5, 5.0 -> written as slice 1, 2, 0
    assert array[0, 0, :].tolist() == [1, 2, 0]
    assert np.allclose(np.linalg.norm(meta[MetaKeys.AFFINE][:3, :3], axis=0), [1.0, 1.0, 2.5])


# ---------------------------------------------------------------------------- errors


def test_corrupt_nrrd_raises_value_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken_mask.nrrd"
    path.write_bytes(b"\x00\xffnot an nrrd\x13\x37" * 20)
    with pytest.raises(ValueError, match=r"cannot read .*broken_mask\.nrrd: ") as err:
        SimpleITKReader().read(path)
    assert "\n" not in str(err.value)


def test_truncated_nrrd_names_the_cause(tmp_path: Path) -> None:
    path = tmp_path / "short.nrrd"
    header = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nendian: little\nencoding: raw\n\n"
    path.write_bytes(header + b"12")
    with pytest.raises(ValueError, match=r"short\.nrrd: .*fread"):
        SimpleITKReader().read(path)


def test_missing_and_unsupported_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.nrrd"):
        SimpleITKReader().read(tmp_path / "missing.nrrd")
    with pytest.raises(ValueError, match="not .*mask.nii.gz"):
        SimpleITKReader().read(tmp_path / "mask.nii.gz")


def test_empty_folder_has_no_dicom_series(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"no DICOM series found in folder {tmp_path}"):
        SimpleITKReader().read(tmp_path)


def test_folder_with_two_series_is_refused_unless_one_is_named(tmp_path: Path) -> None:
    uid_a, uid_b = "1.2.826.0.1.3680043.2.1125.1.1", "1.2.826.0.1.3680043.2.1125.1.2"
    write_dicom_series(tmp_path, uid_a, [0.0, 1.0])
    write_dicom_series(tmp_path, uid_b, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=f"folder {tmp_path} holds 2 DICOM series"):
        SimpleITKReader().read(tmp_path)
    reader = SimpleITKReader(series_name=uid_b)
    array, _ = reader.get_data(reader.read(tmp_path))
    assert array.shape == (3, 4, 3)

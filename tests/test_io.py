"""Reading scans with clear errors, naming cases, and writing outputs atomically."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import write_nifti

from medseg.data.files import atomic_output, case_name
from medseg.data.io import list_scans, load_scan, save_nifti
from medseg.errors import MedsegError


@pytest.mark.parametrize("name, expected", [
    ("case_001.nii.gz", "case_001"), ("ct.nii", "ct"), ("abd.nrrd", "abd"), ("x.mha", "x"),
    ("liver_7_0000.nii.gz", "liver_7"),  # nnU-Net channel suffix
])
def test_case_names(tmp_path, name, expected):
    assert case_name(tmp_path / name) == expected


def test_case_name_of_a_dicom_folder_is_the_folder_name(tmp_path):
    (tmp_path / "series_A").mkdir()
    assert case_name(tmp_path / "series_A") == "series_A"


def test_list_scans_finds_files_and_series_folders_and_rejects_empty(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", np.zeros((2, 2, 2), np.int16))
    (tmp_path / "notes.txt").write_text("not a scan")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "1.dcm").write_bytes(b"")
    assert [p.name for p in list_scans(tmp_path)] == ["a.nii.gz", "series"]
    assert list_scans(tmp_path / "series") == [tmp_path / "series"]  # a folder that is a series
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsegError, match="holds no scans"):
        list_scans(tmp_path / "empty")
    with pytest.raises(MedsegError, match="no such file"):
        list_scans(tmp_path / "missing")


def test_load_scan_gives_channel_first_volume_with_the_file_affine(tmp_path):
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-100, 50, 20]
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    volume = load_scan(write_nifti(tmp_path / "x.nii.gz", data, affine))
    assert tuple(volume.shape) == (1, 2, 3, 4)
    np.testing.assert_allclose(volume.affine.numpy(), affine)
    np.testing.assert_array_equal(volume[0].numpy(), data)


def test_bad_scans_raise_one_clear_error(tmp_path):
    with pytest.raises(MedsegError, match="not found"):
        load_scan(tmp_path / "missing.nii.gz")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(b"this is not a nifti header" * 20)[:120])
    with pytest.raises(MedsegError, match="cannot read image"):
        load_scan(corrupt)
    four_d = write_nifti(tmp_path / "4d.nii.gz", np.zeros((4, 4, 4, 3), np.float32))
    with pytest.raises(MedsegError, match="expected a 3D image"):
        load_scan(four_d)
    nan = np.zeros((4, 4, 4), np.float32)
    nan[1, 1, 1] = np.nan
    with pytest.raises(MedsegError, match="NaN"):
        load_scan(write_nifti(tmp_path / "nan.nii.gz", nan))


def test_atomic_output_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out" / "mask.nii.gz"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half of a file")
        raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(MedsegError, match="cannot write output"):
        with atomic_output(blocker / "mask.nii.gz"):
            pass


def test_save_nifti_keeps_qform_and_sform_of_the_reference(tmp_path):
    ref_img = nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), None)
    qform = np.array([[-0.7, 0, 0, 90], [0, -0.7, 0, 80], [0, 0, 3, -40], [0, 0, 0, 1]])
    sform = qform.copy()
    sform[:3, 3] += 0.004  # float noise between the two, as some scanners write them
    ref_img.set_qform(qform, code=1)
    ref_img.set_sform(sform, code=2)
    ref = tmp_path / "ref.nii.gz"
    nib.save(ref_img, str(ref))
    mask = np.random.default_rng(0).integers(0, 5, (3, 4, 5)).astype(np.uint8)
    save_nifti(mask, sform, tmp_path / "mask.nii.gz", like=ref)
    out = nib.load(str(tmp_path / "mask.nii.gz"))
    np.testing.assert_allclose(out.header.get_qform(), qform, atol=1e-5)
    np.testing.assert_allclose(out.header.get_sform(), sform, atol=1e-5)
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 2
    assert out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(out.dataobj), mask)


def test_save_nifti_gives_a_mask_of_an_ambiguous_reference_one_geometry(tmp_path):
    """Forms 0.25 mm apart are two geometries: the mask carries the one medseg used in both."""
    ref_img = nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), None)
    qform = np.array([[-0.7, 0, 0, 90], [0, -0.7, 0, 80], [0, 0, 3, -40], [0, 0, 0, 1]])
    sform = qform.copy()
    sform[:3, 3] += 0.25
    ref_img.set_qform(qform, code=1)
    ref_img.set_sform(sform, code=2)
    nib.save(ref_img, str(tmp_path / "ref.nii.gz"))
    save_nifti(np.zeros((3, 4, 5), np.uint8), sform, tmp_path / "mask.nii.gz",
               like=tmp_path / "ref.nii.gz")
    out = nib.load(str(tmp_path / "mask.nii.gz")).header
    np.testing.assert_allclose(out.get_qform(), sform, atol=1e-5)
    np.testing.assert_allclose(out.get_sform(), sform, atol=1e-5)
    assert int(out["qform_code"]) == 1 and int(out["sform_code"]) == 2


def test_load_mask_keeps_the_file_dtype_and_agrees_with_load_scan(tmp_path):
    from medseg.data.io import load_mask

    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-100, 50, 20]
    data = (np.arange(60) % 7).astype(np.uint8).reshape(3, 4, 5)
    path = write_nifti(tmp_path / "m.nii.gz", data, affine)
    array, mask_affine = load_mask(path)
    assert array.dtype == np.uint8
    np.testing.assert_array_equal(array, load_scan(path)[0].numpy())
    np.testing.assert_allclose(mask_affine, load_scan(path).affine.numpy())
    swapped = write_nifti(tmp_path / "big_endian.nii.gz", data.astype(">i2"), affine)
    array, _ = load_mask(swapped)
    assert array.dtype.isnative and np.array_equal(array, data)
    with pytest.raises(MedsegError, match="expected a 3D mask"):
        load_mask(write_nifti(tmp_path / "4d.nii.gz", np.zeros((3, 4, 5, 2), np.uint8)))
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(MedsegError, match="broken.nii.gz: cannot read mask"):
        load_mask(tmp_path / "broken.nii.gz")


def test_outputs_get_ordinary_permissions_not_owner_only(tmp_path):
    import os
    import stat

    with atomic_output(tmp_path / "mask.nii.gz") as tmp:
        tmp.write_bytes(b"x")
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "mask.nii.gz").stat().st_mode)
    assert mode == 0o666 & ~umask


@pytest.mark.parametrize("name, gzipped, advice", [("plain.nii.gz", False, "not gzip-compressed; "
                                                    "rename it to end in .nii"),
                                                   ("packed.nii", True, "gzip-compressed; rename "
                                                    "it to end in .nii.gz")])
def test_a_nifti_whose_compression_contradicts_its_name_is_named_precisely(tmp_path, name,
                                                                          gzipped, advice):
    source = tmp_path / ("s.nii.gz" if gzipped else "s.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(source))
    source.rename(tmp_path / name)
    with pytest.raises(MedsegError, match=f"{name}: named .* but {advice}"):
        load_scan(tmp_path / name)


def test_a_damaged_slice_of_a_dicom_series_is_named(tmp_path):
    from conftest import write_dicom_series

    series = tmp_path / "series"
    write_dicom_series(series, "1.2.3.4", [0.0, 2.0, 4.0, 6.0])
    victim = sorted(series.iterdir())[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 20])  # pixel data cut short
    with pytest.raises(MedsegError, match=f"its slice {victim.name} is damaged"):
        load_scan(series)


def test_another_dicom_object_beside_a_series_is_left_alone(tmp_path):
    from conftest import write_dicom_series

    series = tmp_path / "series"
    write_dicom_series(series, "1.2.3.4", [0.0, 2.0, 4.0])
    write_dicom_series(tmp_path / "other", "1.2.3.9", [0.0])
    other = next((tmp_path / "other").iterdir())
    other.write_bytes(other.read_bytes()[:200])  # damaged, but not of this series
    other.rename(series / "other.dcm")
    assert load_scan(series).shape == (1, 3, 4, 3)

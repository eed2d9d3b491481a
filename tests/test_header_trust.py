"""NIfTI headers whose two transforms disagree or are unusable, and non-CT DICOM: one warning
line saying what medseg used, and masks that ITK and nibabel read alike."""

from __future__ import annotations

import locale

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ct, tiny_checkpoint

from medseg.data.io import load_scan
from medseg.errors import MedsegError
from medseg.inference.batch import infer_cases
from medseg.inference.options import InferOptions
from medseg.models.options import EngineOptions

SFORM = np.array([[-1.0, 0, 0, 40], [0, -1.0, 0, 30], [0, 0, 2.0, -10], [0, 0, 0, 1]])
QFORM = np.array([[1.0, 0, 0, -20], [0, 1.0, 0, -25], [0, 0, 2.0, -10], [0, 0, 0, 1]])


def nifti(path, sform=None, s_code=1, qform=None, q_code=1, pixdim=None):
    """A CT NIfTI whose header holds exactly these forms (built on the header: an image's own
    affine would overwrite them on saving)."""
    data = ct((12, 10, 8))
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header.set_qform(QFORM if qform is None else qform, code=q_code)
    header.set_sform(QFORM if sform is None else sform, code=s_code)
    nib.save(nib.Nifti1Image(data, None, header), str(path))
    if pixdim is not None:  # nibabel would fix a zero pixdim on saving: patch the bytes
        raw = bytearray(path.read_bytes())
        raw[80:92] = np.asarray(pixdim, "<f4").tobytes()  # pixdim[1:4] of the NIfTI-1 header
        path.write_bytes(bytes(raw))
    return path


def itk_affine(path) -> np.ndarray:
    """The voxel-to-RAS map ITK reads: its LPS direction, spacing and origin, made RAS."""
    image = sitk.ReadImage(str(path))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def segment(scan, tmp_path):
    infer_cases(tiny_checkpoint(tmp_path / "m.pt"), scan, tmp_path / "out",
                InferOptions(EngineOptions(device="cpu")))
    return tmp_path / "out" / scan.name


def test_qform_and_sform_that_disagree_warn_and_the_mask_is_one_geometry(tmp_path,
                                                                         warnings_seen):
    scan = nifti(tmp_path / "both.nii.gz", sform=SFORM, qform=QFORM)
    volume = load_scan(scan)
    np.testing.assert_allclose(np.asarray(volume.affine), SFORM)
    said = [w for w in warnings_seen if "qform and sform disagree" in w]
    assert len(said) == 1 and "uses the sform" in said[0] and "both.nii.gz" in said[0]
    mask = nib.load(str(segment(scan, tmp_path)))
    np.testing.assert_allclose(mask.affine, SFORM, atol=1e-5)
    np.testing.assert_allclose(mask.header.get_qform(), SFORM, atol=1e-5)  # one geometry
    np.testing.assert_allclose(itk_affine(mask.get_filename()), SFORM, atol=1e-4)


def test_a_zero_sform_falls_back_to_the_qform_with_a_warning(tmp_path, warnings_seen):
    scan = nifti(tmp_path / "zero.nii.gz", sform=np.zeros((4, 4)), qform=QFORM)
    np.testing.assert_allclose(np.asarray(load_scan(scan).affine), QFORM)
    assert any("sform is set but unusable" in w and "uses the qform" in w for w in warnings_seen)
    mask = segment(scan, tmp_path)
    np.testing.assert_allclose(nib.load(str(mask)).affine, QFORM, atol=1e-5)
    np.testing.assert_allclose(itk_affine(mask), QFORM, atol=1e-4)


def test_a_zero_pixdim_with_a_usable_sform_warns_and_uses_the_sform(tmp_path, warnings_seen):
    scan = nifti(tmp_path / "pixdim.nii", sform=SFORM, q_code=0, pixdim=[0, 0, 0])
    np.testing.assert_allclose(np.asarray(load_scan(scan).affine), SFORM)
    assert any("pixdim is [0.0, 0.0, 0.0]" in w and "uses the sform" in w
               for w in warnings_seen)


def test_a_header_with_no_usable_transform_is_refused(tmp_path):
    scan = nifti(tmp_path / "none.nii.gz", sform=np.zeros((4, 4)), q_code=0)
    # The sform is what is broken (it was blamed on pixdim: "voxel spacing 0 x 0 x 0 mm").
    with pytest.raises(MedsegError, match=r"none.nii.gz: the header's sform \(srow_x, srow_y, "
                                          r"srow_z\) is set \(sform_code 1\) but zero"):
        load_scan(scan)


def test_a_consistent_header_is_copied_into_the_mask_unchanged(tmp_path, warnings_seen):
    scan = nifti(tmp_path / "fine.nii.gz", sform=QFORM, qform=QFORM, s_code=2, q_code=1)
    mask = nib.load(str(segment(scan, tmp_path)))
    assert int(mask.header["sform_code"]) == 2 and int(mask.header["qform_code"]) == 1
    assert not [w for w in warnings_seen if "fine.nii.gz" in w]


def test_a_dicom_series_that_is_not_ct_is_named(tmp_path, warnings_seen):
    from conftest import write_dicom_series

    series = tmp_path / "mr"
    write_dicom_series(series, "1.2.3.5", [0.0, 2.0, 4.0])
    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer switches it to "C"
    try:
        for path in series.iterdir():  # the same slices, relabelled as MR
            image = sitk.ReadImage(str(path))
            image.SetMetaData("0008|0060", "MR")
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            writer.SetFileName(str(path))
            writer.Execute(image)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)
    load_scan(series)
    assert any("a DICOM MR series, not CT" in w for w in warnings_seen)

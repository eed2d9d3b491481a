"""Which of a NIfTI header's two transforms to trust, said in one line when it matters.

A NIfTI file stores its voxel-to-world map twice: the qform (rotation, pixdim, offset) and the
sform (a free 3x4 matrix), each with a code saying whether it is set. nibabel (and MONAI) use
the sform when its code is set; ITK-based tools may prefer the qform. When they disagree, or
one is unusable (all zeros, NaN), the same file lands in different places in different tools.
medseg picks one, says which, and writes masks whose two transforms agree.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError

log = logging.getLogger("medseg")

# Largest difference between the two transforms' 3x4 entries (mm, or mm per voxel) that is
# still one geometry: float rounding and the qform's own orthonormalisation stay far below.
FORMS_AGREE_MM = 1e-2


def usable(affine) -> bool:
    """A transform that maps voxels somewhere: finite, and not collapsing an axis."""
    return (affine is not None and bool(np.isfinite(affine).all())
            and abs(np.linalg.det(np.asarray(affine)[:3, :3])) > 1e-9)


def forms_disagree(a: np.ndarray, b: np.ndarray) -> float:
    """How far apart two transforms are (0 when the same)."""
    return float(np.abs(np.asarray(a)[:3] - np.asarray(b)[:3]).max())


def trusted_affine(header, path: Path) -> np.ndarray:
    """The transform medseg uses for a NIfTI header, warning where the header is ambiguous.

    The sform when set and usable (as nibabel), else the qform when set and usable, else
    nibabel's own choice, which load_scan's geometry check then refuses by what is wrong
    (a zero or NaN spacing).
    """
    sform, s_code = header.get_sform(coded=True)
    qform, q_code = _qform(header)
    pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if s_code > 0 and usable(sform):
        if q_code > 0 and usable(qform) and forms_disagree(sform, qform) > FORMS_AGREE_MM:
            log.warning("%s: the header's qform and sform disagree (by up to %.3g mm); medseg "
                        "uses the sform, as nibabel does (other tools may use the qform), and "
                        "writes masks with both set to it: check which is right", path,
                        forms_disagree(sform, qform))
        elif not (np.isfinite(pixdim).all() and (pixdim > 0).all()):
            log.warning("%s: the header's pixdim is %s; medseg uses the sform, which is usable",
                        path, pixdim.tolist())
        return sform
    if q_code > 0 and usable(qform):
        if s_code > 0:
            log.warning("%s: the header's sform is set but unusable (zero or NaN); medseg uses "
                        "the qform, and writes masks with both set to it", path)
        return qform
    if s_code > 0 and not np.isnan(sform).any() and not np.any(sform[:3, :3]):
        # nibabel would use the sform, and its zero spacing would be blamed on pixdim
        raise MedsegError(f"{path}: the header's sform (srow_x, srow_y, srow_z) is set "
                          f"(sform_code {s_code}) but zero, and no qform is usable; fix the "
                          "sform, or set sform_code to 0 so that the qform and pixdim place the "
                          "voxels")
    with np.errstate(all="ignore"):  # none usable: load_scan's geometry check names the problem
        return header.get_best_affine()


def _qform(header) -> tuple[np.ndarray | None, int]:
    """The qform and its code; None where pixdim or the quaternion make it unusable."""
    try:
        with np.errstate(all="ignore"):
            return header.get_qform(coded=True)
    except Exception:  # noqa: BLE001 - nibabel raises for NaN quaternions and the like
        return None, int(header["qform_code"])

"""Reading scans and writing masks: validation on the way in, exact geometry on the way out.
(What a file's name means and how outputs are written safely: medseg.data.files.)"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medseg.data.files import FORMATS, NIFTI_SUFFIXES, atomic_output, scan_suffix
from medseg.data.mask_labels import label_extension
from medseg.data.nifti_header import FORMS_AGREE_MM, forms_disagree, trusted_affine
from medseg.data.scan_checks import check_geometry, check_intensities, check_label
from medseg.errors import MedsegError, find_medseg_error, first_line
from medseg.runtime import available_bytes

log = logging.getLogger("medseg")


def list_scans(path: Path) -> list[Path]:
    """The scans a user means by path: one file, a DICOM series folder, or a folder of either."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise MedsegError(f"{path}: a symbolic link that leads nowhere (a loop, or its "
                              "target is gone); point at the scan itself")
        raise MedsegError(f"{path}: no such file or folder; check the path")
    if not (path.is_file() or path.is_dir()):
        raise MedsegError(f"{path}: neither a file nor a folder (a FIFO, device or socket); give "
                          "a scan file or a folder of scans")
    if path.is_file():
        _check_scan_file(path)
        return [path]
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    scans = [p for p in entries if (p.is_file() and scan_suffix(p)) or p.is_dir()]
    for odd in (p for p in entries if not (p.is_file() or p.is_dir())):
        log.warning("%s: left out, it is %s, not a scan file or folder", odd,
                    "a link that leads nowhere" if odd.is_symlink() else
                    "a FIFO, device or socket")
    if not scans and any(p.is_file() for p in entries):
        return [path]  # the folder itself holds a DICOM series
    if not scans:
        raise MedsegError(f"{path}: the folder holds no scans; put scans ({FORMATS}) in it, or "
                          "point at another folder")
    return scans


GZIP_MAGIC = b"\x1f\x8b"


def _check_scan_file(path: Path) -> None:
    """Refuse a file that is no scan format medseg reads, or a NIfTI whose compression
    contradicts its name, before anything is loaded."""
    suffix = scan_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        with open(path, "rb") as f:
            gzipped = f.read(2) == GZIP_MAGIC
        if gzipped != (suffix == ".nii.gz"):
            right = ".nii.gz" if gzipped else ".nii"
            raise MedsegError(f"{path}: named {suffix} but {'' if gzipped else 'not '}"
                              f"gzip-compressed; rename it to end in {right}")
    if suffix:
        return
    with open(path, "rb") as f:
        is_dicom = f.read(132)[128:] == b"DICM"  # the DICOM preamble's magic word
    if is_dicom or path.name.lower().endswith(".dcm"):
        raise MedsegError(f"{path}: a single DICOM slice; pass the folder that holds the whole "
                          "series")
    raise MedsegError(f"{path}: not a scan format medseg reads ({FORMATS}); convert it, or "
                      "point at the scan itself")


def stored_format(path: Path) -> tuple[tuple[str, ...], str] | None:
    """(the suffixes its content calls for, what it is) from a file's first bytes, for the
    formats medseg reads; None for anything else."""
    import gzip

    with open(path, "rb") as f:
        start = f.read(352)
    if start[:2] == GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as f:
                inner = f.read(352)
        except (OSError, EOFError):
            return None
        return ((".nii.gz",), "gzip-compressed NIfTI image") if inner[344:347] == b"n+1" \
            else None
    if start[344:347] == b"n+1":
        return (".nii",), "NIfTI image"
    if start.startswith(b"NRRD"):
        return (".nrrd", ".nhdr"), "NRRD image"
    if b"ObjectType" in start[:64]:
        return (".mha", ".mhd"), "MetaImage"
    return None


def stored_header(path: Path):
    """A NIfTI header as the file holds it: nibabel's loader quietly fixes some fields (a
    zero pixdim becomes 1), which hides what is wrong with the header."""
    header_class = type(nib.load(str(path)).header)
    with nib.openers.ImageOpener(str(path)) as f:
        return header_class.from_fileobj(f, check=False)


def _reader_for(path: Path):
    """MONAI reader for a path: nibabel for NIfTI, SimpleITK for the rest (and DICOM folders)."""
    if scan_suffix(path) in NIFTI_SUFFIXES:
        from monai.data import NibabelReader

        class NiftiReader(NibabelReader):
            """nibabel, with the header's transform chosen (and warned about) once per file.

            From the header as stored: MONAI's reader "corrects" headers whose pixdim and
            sform disagree, silently, sometimes by putting the qform in the sform's place.
            """

            def read(self, data, **kwargs):
                chosen = trusted_affine(stored_header(path), path)
                images = super().read(data, **kwargs)
                for image in images if isinstance(images, (list, tuple)) else [images]:
                    image.medseg_affine = chosen
                return images

            def _get_affine(self, img):
                return np.array(getattr(img, "medseg_affine", img.affine), copy=True)

        return NiftiReader()
    from medseg.data.sitk_reader import SimpleITKReader

    return SimpleITKReader()


@functools.cache
def _image_loader(dtype):
    """MONAI's LoadImage, built once per dtype. Building it instantiates every reader MONAI
    knows; with pydicom installed (for DICOM outputs) that includes a GPU DICOM decoder which
    warns, on every machine without it, that it is unavailable. medseg passes its own reader at
    each call, so that decoder is never used: its warning is kept from users."""
    from monai.transforms import LoadImage

    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
            return LoadImage(image_only=True, ensure_channel_first=True, dtype=dtype)
    finally:
        plugin_log.setLevel(level)


# Reading holds a scan's voxels as float32, with a second copy on the way through the reader.
READ_BYTES_PER_VOXEL = 8


def check_claimed_size(path: Path) -> None:
    """Refuse, from the header alone, a scan whose voxels could not be held in memory: a
    damaged or hostile header claiming 2000^3 voxels would otherwise grow the process until
    the kernel kills it (and the machine's other work with it)."""
    claimed = claimed_shape(path)
    if claimed is not None and claimed[1] < 0:
        raise MedsegError(f"{path}: holds complex numbers; a CT is real-valued: export its "
                          "magnitude or real part")
    budget = available_bytes()
    if claimed is None or budget is None:
        return
    shape, itemsize = claimed
    need = math.prod(shape) * (READ_BYTES_PER_VOXEL + itemsize)
    if need > budget:
        raise MedsegError(f"{path}: its header claims {'x'.join(map(str, shape))} voxels, about "
                          f"{need / 1e9:.3g} GB to read, but {budget / 1e9:.3g} GB of memory is "
                          "available; check the file (a damaged header claims a size its data "
                          "does not have), or use a machine with more memory")


def claimed_shape(path: Path) -> tuple[tuple[int, ...], int] | None:
    """(the voxel grid's size, bytes per stored voxel; -1 for complex voxels) a scan file's
    header claims, read without its data; None for a DICOM folder or a header that cannot be
    read (the reader then says what is wrong)."""
    try:
        if scan_suffix(path) in NIFTI_SUFFIXES:
            header = nib.load(str(path)).header
            dtype = header.get_data_dtype()
            return (tuple(int(n) for n in header.get_data_shape()),
                    -1 if dtype.kind == "c" else dtype.itemsize)
        if scan_suffix(path):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            components = reader.GetNumberOfComponents()
            return tuple(reader.GetSize()) + ((components,) if components > 1 else ()), 8
    except Exception:  # noqa: BLE001 - unreadable headers are reported by the reader itself
        return None
    return None


def load_scan(path: Path, what: str = "image", dtype=np.float32) -> torch.Tensor:
    """Load a 3D volume as a channel-first MetaTensor (1, X, Y, Z), or raise a clear MedsegError.

    dtype=None keeps the file's own type (a uint8 mask stays 1 byte per voxel).
    """
    path = Path(path)
    if not path.exists():
        raise MedsegError(f"{path}: {what} file not found; check the path")
    if path.is_file():
        _check_scan_file(path)
        check_claimed_size(path)
    try:
        # The reader given at call time, so its own error (not MONAI's "no suitable reader") shows.
        volume = _image_loader(dtype)(str(path), reader=_reader_for(path))
    except Exception as exc:  # noqa: BLE001 - readers raise anything from EOFError to RuntimeError
        if find_medseg_error(exc) is not None:  # medseg's own header checks, in the reader
            raise find_medseg_error(exc) from None
        reason = first_line(exc).replace(f"cannot read {path}: ", "")
        held = stored_format(path) if path.is_file() else None
        if held is not None and scan_suffix(path) not in held[0]:
            raise MedsegError(f"{path}: holds a {held[1]} but is named {scan_suffix(path)}; "
                              f"rename it to end in {held[0][0]}") from None
        advice = "" if path.is_dir() else "; the file is damaged or not a scan: export it again"
        raise MedsegError(f"{path}: cannot read {what} ({reason}){advice}") from None
    return checked_volume(volume, path, what)


def scan_from_array(array, affine, name: str = "the array") -> torch.Tensor:
    """A 3D array in memory (HU) and its affine (RAS, mm), checked like a scan read from disk."""
    from monai.data import MetaTensor

    array = np.asarray(array)
    if array.ndim == 4 and array.shape[3] == 1:  # NIfTI's 3D volume with a trailing axis
        array = array[..., 0]
    if array.ndim != 3:
        raise MedsegError(f"{name}: expected a 3D array (X, Y, Z), got shape {array.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise MedsegError(f"{name}: expected a 4 x 4 affine, got shape {affine.shape}")
    array = np.require(array, dtype=np.float32, requirements=["C", "W"])  # copies only if needed
    volume = MetaTensor(torch.from_numpy(array)[None],
                        affine=torch.as_tensor(affine), meta={"filename_or_obj": name})
    return checked_volume(volume, Path(name), "image")


def checked_volume(volume: torch.Tensor, path: Path, what: str = "image") -> torch.Tensor:
    """Refuse a volume that would give garbage (not 3D, not finite, bad geometry, a blank scan,
    a label volume that is no label); repair slightly skewed axes. Returns the volume."""
    _check_volume(volume, path, what)
    check_geometry(volume.affine, path, what)
    _repair_direction_cosines(volume, path)
    if what == "image":
        check_intensities(volume, path)
    elif what == "label":
        check_label(volume, path)
    return volume


def load_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 3D label volume in the file's own dtype and memory order, and its RAS affine.

    NIfTI is read with nibabel directly: MONAI's LoadImage copies the volume into C order, which
    took 1.5-2.5 s on top of nibabel's 0.2 s for a 512 x 512 x 400 uint8 mask. Other formats
    (NRRD, MHA, DICOM) go through load_scan.
    """
    path = Path(path)
    if scan_suffix(path) not in NIFTI_SUFFIXES:
        volume = load_scan(path, what="mask", dtype=None)
        return volume[0].numpy(), np.asarray(volume.affine, dtype=np.float64)
    if not path.exists():
        raise MedsegError(f"{path}: mask file not found; check the path")
    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for broken files
        raise MedsegError(f"{path}: cannot read mask ({first_line(exc)}); the file is damaged or "
                          "not a mask: export it again") from None
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3 or min(array.shape) < 1:
        raise MedsegError(f"{path}: expected a 3D mask, got shape {array.shape}; split 4D series "
                          "into 3D files")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    affine = np.asarray(image.affine, dtype=np.float64)
    check_geometry(affine, path, "mask")  # distances and volumes are measured with it
    return array, affine


def _check_volume(volume: torch.Tensor, path: Path, what: str) -> None:
    """Refuse volumes that would silently produce garbage: not 3D, empty, or not finite."""
    spatial = tuple(volume.shape[1:])
    stored = tuple(int(n) for n in volume.meta.get("spatial_shape", spatial))
    if volume.numel() == 0:
        raise MedsegError(f"{path}: the {what} holds no voxels (size {stored}); export it again")
    if volume.shape[0] == 1 and len(spatial) == 2:
        raise MedsegError(f"{path}: a 2D {what} (size {spatial}); medseg segments 3D volumes: "
                          "give the whole series as one 3D file or a DICOM folder")
    if volume.shape[0] != 1 or len(spatial) != 3:
        raise MedsegError(
            f"{path}: expected a 3D {what}, got shape {tuple(volume.shape)} "
            f"({volume.ndim - 1}D with {volume.shape[0]} channel(s)); split 4D series into 3D files"
        )
    if what == "image" and sum(n > 1 for n in spatial) < 2:
        raise MedsegError(f"{path}: the {what} is {'x'.join(map(str, spatial))} voxels, not a "
                          "slice or a volume; export the whole scan")
    if volume.is_floating_point():
        # On the plain tensor, and counted only when needed: summing the inverted MetaTensor
        # mask took 1.4 GB for a 512 x 512 x 600 scan.
        finite = torch.isfinite(volume.as_tensor())
        bad = 0 if bool(finite.all()) else int(finite.numel() - finite.sum())
        if bad:
            raise MedsegError(f"{path}: {what} contains {bad} NaN or infinite voxels; replace "
                              "them (air is -1024) or export the scan again (a stored value "
                              "beyond 3.4e38, what 32-bit floats hold, also reads as infinite)")


# Direction cosines this close to orthonormal are a rounding defect of the header, not a shear.
ORTHONORMAL_TOLERANCE = 1e-2


def _repair_direction_cosines(volume: torch.Tensor, path: Path) -> None:
    """Make slightly non-orthonormal direction cosines orthonormal (with a warning), in place.

    Many scanners write headers whose axes are a hair off perpendicular, which ITK refuses
    outright. The nearest orthonormal directions (polar decomposition) change voxel positions by
    far less than a voxel. The file's own affine stays in meta["original_affine"], which is what
    the output mask is written with. Real shears are refused.
    """
    affine = np.asarray(volume.affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    directions = affine[:3, :3] / spacing
    deviation = float(np.abs(directions.T @ directions - np.eye(3)).max())
    if deviation < 1e-6:
        return
    if deviation > ORTHONORMAL_TOLERANCE:
        raise MedsegError(f"{path}: the axes are sheared (direction cosines off orthonormal by "
                          f"{deviation:.3g}); resample the scan onto a regular grid first")
    u, _, vt = np.linalg.svd(directions)
    repaired = affine.copy()
    repaired[:3, :3] = (u @ vt) * spacing
    volume.meta.setdefault("original_affine", affine)
    volume.affine = torch.as_tensor(repaired)
    log.warning("%s: direction cosines were off orthonormal by %.2g; repaired", path, deviation)


# Write errors that no retry of the next case would avoid: the batch stops with one message.
def _forms_match(header, affine: np.ndarray) -> bool:
    """Whether every transform the header sets is `affine` (so every reader agrees on it)."""
    try:
        forms = [header.get_sform(coded=True), header.get_qform(coded=True)]
    except Exception:  # noqa: BLE001 - a NaN quaternion: not a form to keep
        return False
    return all(form is not None and forms_disagree(form, affine) <= FORMS_AGREE_MM
               for form, code in forms if code > 0)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, like: Path | None = None,
               description: str | None = None, labels: dict[int, str] | None = None) -> None:
    """Write array atomically as NIfTI; with a NIfTI `like`, keep its qform and sform exactly.

    `description` goes into the header's descrip field (80 bytes), e.g. which model wrote it;
    `labels` into a label-table extension (medseg.data.mask_labels). Extensions of `like` (what
    the scan's header carried) are not copied.
    """
    if like is not None and scan_suffix(Path(like)) in NIFTI_SUFFIXES:
        header = nib.load(str(like)).header
        image = nib.Nifti1Image(array, None, header=header.copy())
        image.set_qform(header.get_qform(), code=int(header["qform_code"]))
        image.set_sform(header.get_sform(), code=int(header["sform_code"]))
        if not _forms_match(image.header, affine):  # an ambiguous header: make it one map
            image.set_qform(affine, code=max(1, int(header["qform_code"])))
            image.set_sform(affine, code=max(1, int(header["sform_code"])))
    else:
        image = nib.Nifti1Image(array, affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
    image.set_data_dtype(array.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    if description is not None:
        image.header["descrip"] = description.encode()[:80]
    image.header.extensions.clear()
    if labels is not None:
        image.header.extensions.append(label_extension(labels))
    with atomic_output(path) as tmp:
        nib.save(image, str(tmp))

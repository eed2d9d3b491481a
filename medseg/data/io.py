"""Reading scans and writing masks: validation on the way in, exact geometry on the way out."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import shutil
import stat
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medseg.data.nifti_header import FORMS_AGREE_MM, forms_disagree, trusted_affine
from medseg.data.scan_checks import check_geometry, check_intensities, check_label
from medseg.errors import MedsegError, OutputError, first_line

log = logging.getLogger("medseg")

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
SCAN_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES
NNUNET_CHANNEL = "_0000"
FORMATS = ", ".join(SCAN_SUFFIXES) + " or a DICOM series folder"


def scan_suffix(path: Path) -> str:
    """The recognised suffix of a scan file ('' for a DICOM folder)."""
    name = path.name.lower()
    return next((s for s in SCAN_SUFFIXES if name.endswith(s)), "")


def case_name(path: Path) -> str:
    """A scan's case name: file name without suffix (and nnU-Net's _0000), or the folder name."""
    path = Path(path)
    name = path.name if path.is_dir() else path.name[: len(path.name) - len(scan_suffix(path))]
    return name[: -len(NNUNET_CHANNEL)] if name.endswith(NNUNET_CHANNEL) else name


def list_scans(path: Path) -> list[Path]:
    """The scans a user means by path: one file, a DICOM series folder, or a folder of either."""
    path = Path(path)
    if not path.exists():
        raise MedsegError(f"{path}: no such file or folder; check the path")
    if not (path.is_file() or path.is_dir()):
        raise MedsegError(f"{path}: neither a file nor a folder (a FIFO, device or socket); give "
                          "a scan file or a folder of scans")
    if path.is_file():
        _check_scan_file(path)
        return [path]
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    scans = [p for p in entries if (p.is_file() and scan_suffix(p)) or p.is_dir()]
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


def load_scan(path: Path, what: str = "image", dtype=np.float32) -> torch.Tensor:
    """Load a 3D volume as a channel-first MetaTensor (1, X, Y, Z), or raise a clear MedsegError.

    dtype=None keeps the file's own type (a uint8 mask stays 1 byte per voxel).
    """
    path = Path(path)
    if not path.exists():
        raise MedsegError(f"{path}: {what} file not found; check the path")
    if path.is_file():
        _check_scan_file(path)
    try:
        # The reader given at call time, so its own error (not MONAI's "no suitable reader") shows.
        volume = _image_loader(dtype)(str(path), reader=_reader_for(path))
    except Exception as exc:  # noqa: BLE001 - readers raise anything from EOFError to RuntimeError
        reason = first_line(exc).replace(f"cannot read {path}: ", "")
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
    if volume.is_floating_point():
        # On the plain tensor, and counted only when needed: summing the inverted MetaTensor
        # mask took 1.4 GB for a 512 x 512 x 600 scan.
        finite = torch.isfinite(volume.as_tensor())
        bad = 0 if bool(finite.all()) else int(finite.numel() - finite.sum())
        if bad:
            raise MedsegError(f"{path}: {what} contains {bad} NaN or infinite voxels; replace "
                              "them (air is -1024) or export the scan again")


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
_FULL = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded"}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def _output_error(path: Path, exc: OSError) -> OutputError:
    """One line for a failed write: the file (or folder), the reason, and what to do."""
    if exc.errno in _FULL:
        return OutputError(f"{path}: {_FULL[exc.errno]} while writing ({exc.strerror}); nothing "
                           "half-written is left: free space or choose another output folder, "
                           "then run again")
    return OutputError(f"{path}: cannot write output here ({exc.strerror}); choose another "
                       "output folder or fix its permissions")


def check_writable(folder: Path) -> None:
    """Fail before any work if outputs could not be written to `folder` (created later)."""
    folder = Path(folder).absolute()
    try:
        existing = next(p for p in (folder, *folder.parents) if p.exists())
    except OSError as exc:  # e.g. ENAMETOOLONG: exists() raises for such names
        raise _output_error(folder, exc) from None
    if not existing.is_dir():
        raise OutputError(f"{folder}: cannot write output here ({existing} is a file); choose "
                          "another output folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _output_error(folder, OSError(errno.EACCES, os.strerror(errno.EACCES)))


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISLNK, "a symbolic link"))


def check_replaceable(path: Path) -> None:
    """Refuse to replace anything but a regular file of this user's: a folder, a device, a
    FIFO, a link, or another user's file stays as it is."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    kind = next((name for test, name in _KINDS if test(info.st_mode)), None)
    if kind is not None:
        raise OutputError(f"{path}: is {kind}, not a file medseg writes; refusing to replace it: "
                          "choose another output path")
    if info.st_uid != os.getuid():
        raise OutputError(f"{path}: belongs to another user (uid {info.st_uid}); refusing to "
                          "replace it: choose another output path")


def check_apart(inputs: Path, output: Path, what: str = "input") -> None:
    """Refuse an output that is, contains or lies inside an input: writing there would replace
    the input's files, or put outputs where the next run reads inputs."""
    source, target = Path(inputs).resolve(), Path(output).resolve()
    if source == target:
        relation = "is"
    elif target.is_relative_to(source):
        relation = "lies inside"
    elif source.is_relative_to(target):
        relation = "contains"
    else:
        return
    raise MedsegError(f"{output}: the output folder {relation} the {what} {inputs}; outputs would "
                      f"overwrite or mix with it: choose an output folder apart from the {what}")


def check_not_input(output: Path, inputs: list[Path]) -> None:
    """Refuse an output file that is one of the command's own inputs (--overwrite or not)."""
    target = Path(output).resolve()
    for source in inputs:
        if Path(source).resolve() == target:
            raise MedsegError(f"{output}: is an input of this command ({source}); writing there "
                              "would destroy it: choose another output path")


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    Only a regular file of this user's is ever replaced (check_replaceable). A full disk or a
    refused write raises OutputError; the temporary file is removed either way.
    """
    path = Path(path)
    check_replaceable(path)
    # The temp name ends like the target so writers that go by suffix (nibabel: .gz) still work.
    suffix = ".part" + (scan_suffix(path) or path.suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise _output_error(path.parent, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes owner-only files; give outputs the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno in _FULL or exc.errno in _DENIED:
            raise _output_error(path, exc) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_outputs(folder: Path, last: str) -> Iterator[Path]:
    """Yield a hidden folder inside `folder` to write one case's files into; when the block
    succeeds they move into `folder`, the file named `last` (the mask, which marks the case
    done) after all others. On an error or Ctrl-C nothing of the case is left; a killed process
    leaves at most the hidden folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{last}.", suffix=".stage", dir=folder))
    except OSError as exc:
        raise _output_error(folder, exc) from None
    try:
        yield stage
        written = sorted(stage.iterdir(), key=lambda p: p.name == last)
        for path in written:
            check_replaceable(folder / path.name)
        for path in written:
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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
        from medseg.data.mask_labels import label_extension

        image.header.extensions.append(label_extension(labels))
    with atomic_output(path) as tmp:
        nib.save(image, str(tmp))


def read_json(path: Path) -> dict:
    """A JSON file holding an object, or a one-line MedsegError naming it."""
    if not path.is_file():
        raise MedsegError(f"{path}: {'a folder, not a' if path.is_dir() else 'no such'} JSON "
                          "file; check the path")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedsegError(f"{path}: not valid JSON ({exc}); fix it there") from None
    except RecursionError:
        raise MedsegError(f"{path}: nested too deeply to be a data set or plan; fix the "
                          "file") from None
    if not isinstance(data, dict):
        raise MedsegError(f"{path}: expected a JSON object at the top level, like "
                          "{\"labels\": ..., \"training\": [...]}")
    return data


def write_json(data: dict, path: Path) -> None:
    """Write JSON atomically, pretty-printed."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def save_png(figure, path: Path, dpi: int = 90) -> Path:
    """Write a matplotlib figure as PNG atomically."""
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return Path(path)

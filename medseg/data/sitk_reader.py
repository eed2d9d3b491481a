"""A MONAI ``ImageReader`` backed by SimpleITK: DICOM series folders, NRRD and MetaImage files.

MONAI's own ``ITKReader`` needs the ``itk`` package; this reader gives the same results through
SimpleITK, with ``NibabelReader``'s conventions (arrays in (x, y, z) order, components last,
affines in RAS+), so that downstream transforms treat these files exactly like NIfTI.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.config import PathLike
from monai.data.image_reader import ImageReader, _copy_compatible_dict, _stack_images
from monai.data.utils import orientation_ras_lps
from monai.utils import ImageMetaKey, MetaKeys, SpaceKeys, ensure_tuple

log = logging.getLogger("medseg")

__all__ = ["SimpleITKReader", "SUFFIXES"]

SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")

# SimpleITK prefixes its messages with a C++ source location and ITK object addresses.
_SITK_NOISE = re.compile(r"^(?:s?itk::ERROR:|ITK ERROR:)\s*|\w+\(0x[0-9a-fA-F]+\):\s*")


def _sitk_reason(err: RuntimeError) -> str:
    """Return the informative part of a SimpleITK error message, on one line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Exception thrown in SimpleITK")]
    if not lines:
        return str(err).strip() or type(err).__name__
    reason = _SITK_NOISE.sub("", lines[0])
    # NRRD/GDCM errors open with "Error reading <file>:" and give the cause on the last line.
    if reason.endswith(":") and len(lines) > 1:
        reason = f"{reason} {lines[-1]}"
    return reason


def dicom_series_files(folder: Path, series_name: str = "") -> tuple[str, ...]:
    """Return the slice files of the one DICOM series in `folder`, sorted along the slice normal."""
    with _itk_warnings_hidden():  # "No Series were found": said below
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise ValueError(f"no DICOM series found in folder {folder}; it should hold the slice "
                         "files of one series")
    if series_name:
        if series_name not in series_ids:
            raise ValueError(f"DICOM series {series_name!r} not found in folder {folder}")
    elif len(series_ids) > 1:
        raise ValueError(
            f"folder {folder} holds {len(series_ids)} DICOM series ({', '.join(series_ids)}); "
            "put each series in its own folder, or pass series_name=<SeriesInstanceUID>"
        )
    else:
        # a de-identified series may have an empty SeriesInstanceUID, which GDCM reports as ""
        series_name = series_ids[0]
    files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_name))
    _check_left_out(folder, files)
    return files


def _looks_like_dicom(path: Path) -> bool:
    """A .dcm name, or the DICOM preamble's magic word."""
    return path.suffix.lower() == ".dcm" or _head(path, 132)[128:] == b"DICM"


def _check_left_out(folder: Path, files: Sequence[str]) -> None:
    """GDCM leaves slices it cannot parse out of a series, silently: a damaged one is named.

    Only files that carry this series' UID count: another object in the folder (an RTSTRUCT,
    a DICOMDIR) is left alone. A de-identified series has no UID: then every DICOM file left
    out counts, a readable one (another object) still being left alone.
    """
    kept = {Path(name).resolve() for name in files}
    others = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")
              and p.resolve() not in kept and _looks_like_dicom(p)]
    if not others or not files:
        return
    uid = _slice_tags(files[0], "0020|000e")["0020|000e"]
    ours = [str(p) for p in others if not uid or uid.encode() in _head(p)]
    damaged = _first_unreadable(ours)
    if damaged is not None:
        raise ValueError(f"cannot read {folder}: its slice {Path(damaged[0]).name} is damaged "
                         f"({damaged[1]}); remove that file or export the series again")


@contextlib.contextmanager
def _itk_warnings_hidden() -> Iterator[None]:
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


NON_UNIFORM_SAMPLING = "ITK_non_uniform_sampling_deviation"  # set by ImageSeriesReader
# Steps between neighbouring slices may differ by this factor (scanner round-off, not a gap).
SLICE_STEP_TOLERANCE = 1.5


def _slice_tags(name: str, *tags: str) -> dict[str, str]:
    """Some tags of one slice file, read from its header only ('' where a tag is missing)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(name)
    reader.ReadImageInformation()
    return {tag: reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""
            for tag in tags}


def _head(path: Path, size: int = 1 << 16) -> bytes:
    """A file's first bytes, where a DICOM header's tags are."""
    with open(path, "rb") as f:
        return f.read(size)


def _slice_positions(files: Sequence[str]) -> np.ndarray | None:
    """Each slice's position along the slice normal (mm), or None where the tags are missing."""
    positions = []
    for name in files:
        tags = _slice_tags(name, "0020|0032", "0020|0037")
        if not all(tags.values()):
            return None
        origin = [float(v) for v in tags["0020|0032"].split("\\")]
        cosines = [float(v) for v in tags["0020|0037"].split("\\")]
        positions.append(float(np.dot(np.cross(cosines[:3], cosines[3:]), origin)))
    return np.sort(np.asarray(positions))


def _check_slice_positions(folder: Path, files: Sequence[str]) -> None:
    """Refuse a series with a missing or doubled slice: ITK would only warn and stretch it."""
    positions = _slice_positions(files) if len(files) >= 3 else None
    if positions is None:
        return
    steps = np.diff(positions)
    step = float(np.median(steps))
    if step <= 0 or steps.min() < step / SLICE_STEP_TOLERANCE:
        raise ValueError(f"DICOM series in folder {folder} has slices at the same position; it "
                         "mixes acquisitions: keep one series per folder")
    if steps.max() > step * SLICE_STEP_TOLERANCE:
        k = int(np.argmax(steps))
        raise ValueError(
            f"DICOM series in folder {folder} is missing slices: {steps[k]:.3g} mm between "
            f"slices at {positions[k]:.4g} and {positions[k + 1]:.4g} mm, {step:.3g} mm "
            "elsewhere; export the complete series"
        )


def _first_unreadable(files: Sequence[str]) -> tuple[str, str] | None:
    """The first slice file that cannot be read alone, and why (only after a series failed)."""
    for name in files:
        try:
            with _itk_warnings_hidden():
                sitk.ReadImage(name)
        except RuntimeError as err:
            return name, _sitk_reason(err)
    return None


def _read_one(path: Path, series_name: str, **kwargs: Any) -> sitk.Image:
    """Read one file, or one DICOM series folder, into a SimpleITK image."""
    if not path.exists():
        raise FileNotFoundError(f"cannot read {path}: no such file or folder")
    if not path.is_dir():
        try:
            return sitk.ReadImage(str(path), **kwargs)
        except RuntimeError as err:
            raise ValueError(f"cannot read {path}: {_sitk_reason(err)}") from err
    files = dicom_series_files(path, series_name)
    try:
        # A list of slice files makes sitk.ReadImage use ImageSeriesReader (rescale slope
        # applied). Its "non uniform sampling" warning is judged below instead of printed.
        with _itk_warnings_hidden():
            image = sitk.ReadImage(list(files), **kwargs)
    except RuntimeError as err:
        damaged = _first_unreadable(files)
        if damaged is not None:
            raise ValueError(f"cannot read {path}: its slice {Path(damaged[0]).name} is damaged "
                             f"({damaged[1]}); remove that file or export the series "
                             "again") from err
        raise ValueError(f"cannot read {path}: {_sitk_reason(err)}") from err
    # ITK marks uneven slice steps; only then are the slices' headers read a second time.
    if image.HasMetaDataKey(NON_UNIFORM_SAMPLING):
        _check_slice_positions(path, files)
    _warn_if_not_ct(path, files[0])
    return image


def _warn_if_not_ct(folder: Path, first_slice: str) -> None:
    """medseg's models see CT in Hounsfield units; an MR or PET series gets one line."""
    modality = _slice_tags(first_slice, "0008|0060")["0008|0060"]
    if modality and modality != "CT":
        log.warning("%s: a DICOM %s series, not CT: medseg's models are trained on CT in "
                    "Hounsfield units, so their masks of it may mean nothing", folder, modality)


class SimpleITKReader(ImageReader):
    """Load DICOM series folders, NRRD (.nrrd/.nhdr) and MetaImage (.mha/.mhd) files via SimpleITK.

    Args:
        channel_dim: channel dimension of the returned array, stored as ``original_channel_dim``;
            if None it is "no_channel" for scalar images and -1 for multi-component ones.
        series_name: SeriesInstanceUID to read when a folder holds several DICOM series.
        affine_lps_to_ras: convert the affine from SimpleITK's LPS to RAS (as ``NibabelReader``).
        kwargs: passed to ``SimpleITK.ReadImage`` (e.g. ``outputPixelType``, ``imageIO``).
    """

    def __init__(
        self,
        channel_dim: str | int | None = None,
        series_name: str = "",
        affine_lps_to_ras: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.channel_dim = float("nan") if channel_dim == "no_channel" else channel_dim
        self.series_name = series_name
        self.affine_lps_to_ras = affine_lps_to_ras
        self.kwargs = kwargs
        self.filenames: tuple[str, ...] = ()

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Return True if every name is a folder (DICOM series) or has a supported suffix."""
        names = ensure_tuple(filename)
        return bool(names) and all(
            Path(n).is_dir() or str(n).lower().endswith(SUFFIXES) for n in names
        )

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        """Read one image (or a list of images, for channel stacking) as SimpleITK images."""
        kwargs_ = {**self.kwargs, **kwargs}
        self.filenames = tuple(f"{n}" for n in ensure_tuple(data))
        # LoadImage(reader=...) calls read() without verify_suffix(); refusing other formats lets
        # it fall back to MONAI's own readers, so that NIfTI still goes through NibabelReader.
        if not self.verify_suffix(self.filenames):
            raise ValueError(
                f"SimpleITKReader reads DICOM folders and {'/'.join(SUFFIXES)} files, "
                f"not {', '.join(self.filenames)}"
            )
        images = [_read_one(Path(n), self.series_name, **kwargs_) for n in self.filenames]
        return images if len(images) > 1 else images[0]

    def get_data(self, img: sitk.Image | Sequence[sitk.Image]) -> tuple[np.ndarray, dict]:
        """Return the (x, y, z[, c]) array and its meta dict; several images stack as channels."""
        # not ensure_tuple: a sitk.Image is iterable (over its pixels)
        images = [img] if isinstance(img, sitk.Image) else list(img)
        # filenames are only known for the images of the latest read() call
        names = self.filenames if len(self.filenames) == len(images) else ("",) * len(images)
        arrays: list[np.ndarray] = []
        compatible_meta: dict = {}
        for image, name in zip(images, names, strict=True):
            data = self._get_array_data(image)
            arrays.append(data)
            _copy_compatible_dict(self._get_meta_dict(image, data, name), compatible_meta)
        return _stack_images(arrays, compatible_meta), compatible_meta

    def _get_meta_dict(self, img: sitk.Image, data: np.ndarray, filename: str) -> dict:
        """Build the MONAI meta dict (affine, shape, space, channel dim) of one image."""
        affine = self._get_affine(img)
        spatial_shape = self._get_spatial_shape(img)
        if self.channel_dim is None:  # same rule as NibabelReader / ITKReader
            channel_dim: Any = float("nan") if data.ndim == len(spatial_shape) else -1
        else:
            channel_dim = self.channel_dim
        return {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: spatial_shape,
            MetaKeys.SPACE: SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: channel_dim,
            "spacing": np.asarray(img.GetSpacing()[: len(spatial_shape)], dtype=np.float64),
            ImageMetaKey.FILENAME_OR_OBJ: filename,
        }

    def _get_affine(self, img: sitk.Image) -> np.ndarray:
        """Return the (rank+1)-square affine, direction * spacing and origin, LPS or RAS."""
        ndim = img.GetDimension()
        rank = min(ndim, 3)  # a 4D image (e.g. time) keeps a 3D spatial affine, as in ITKReader
        direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(ndim, ndim)
        affine = np.eye(rank + 1, dtype=np.float64)
        affine[:rank, :rank] = direction[:rank, :rank] @ np.diag(img.GetSpacing()[:rank])
        affine[:rank, rank] = img.GetOrigin()[:rank]
        # ITK/DICOM world space is LPS; flipping x and y gives NIfTI's RAS
        return orientation_ras_lps(affine) if self.affine_lps_to_ras else affine

    def _get_spatial_shape(self, img: sitk.Image) -> np.ndarray:
        """Return the spatial size in (x, y, z) order, without a user-declared channel dim."""
        size = list(img.GetSize())
        if isinstance(self.channel_dim, int) and img.GetNumberOfComponentsPerPixel() == 1:
            size.pop(self.channel_dim)  # the declared channel is one of SimpleITK's dimensions
        return np.asarray(size[: min(img.GetDimension(), 3)])

    @staticmethod
    def _get_array_data(img: sitk.Image) -> np.ndarray:
        """Return the voxels indexed [x, y, z] (components last), keeping the pixel dtype."""
        array = sitk.GetArrayFromImage(img)  # a copy, indexed [z, y, x(, c)]
        if img.GetNumberOfComponentsPerPixel() == 1:
            return array.T
        return np.moveaxis(array.T, 0, -1)  # (c, x, y, z) -> (x, y, z, c)

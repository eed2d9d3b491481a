"""Run an nnU-Net v2 model the way nnU-Net does, with medseg's inference engine around it.

nnU-Net's prediction, step by step (nnunetv2 2.x, DefaultPreprocessor and nnUNetPredictor):
the array in its image reader's axis order (SimpleITK's z, y, x; never reoriented), transposed
by the plan's transpose_forward; cropped to the box of nonzero voxels; normalised (CT: clipped
to the foreground's 0.5-99.5 percentiles, then the foreground's mean and std); resampled to
the configuration's spacing (cubic spline, or for anisotropic spacing in-plane cubic and
nearest along the thick axis); padded to the patch if smaller; sliding windows placed evenly
with step patch x (1 - overlap) and weighted by a Gaussian (sigma 1/8 of the patch); mirrored
along the checkpoint's axes under TTA; folds' logits averaged; logits resampled back linearly
(nearest along a thick axis) and argmax'd, uncropped and transposed back.

The one change: the logits go back to the scan's grid slab by slab in float32 torch, argmax'd
as they come, instead of all classes at once in float64, which is where nnU-Net spends most of
its time and memory on large scans.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medseg.data.geometry import voxel_spacing
from medseg.distributed import local_device
from medseg.errors import MedsegError
from medseg.inference.crf import EPS as CRF_EPS
from medseg.inference.crf import refine, softmax_
from medseg.inference.nnunet_folder import NNUNetModel, read_model_folder
from medseg.inference.options import InferOptions
from medseg.inference.postprocess import clean_components, voxels_for_volume
from medseg.inference.predictor import MODEL_ID_PREFIX
from medseg.runtime import autocast, resolve_device

ANISOTROPY = 3.0  # nnU-Net's ANISO_THRESHOLD: spacing ratios above it resample "separate z"
SLAB_BYTES = 256 << 20  # float32 logits resampled back per slab


# --- geometry: medseg's (X, Y, Z) scan <-> nnU-Net's transposed array ---------------------

def network_axes(transpose_forward) -> list[int]:
    """For each axis of nnU-Net's array, the scan axis it is. SimpleITK's array is the scan's
    (X, Y, Z) reversed; transpose_forward then permutes that."""
    return [2 - int(t) for t in transpose_forward]


def separate_axis(current, new) -> int | None:
    """The thick axis nnU-Net resamples on its own (nearest), or None (nnU-Net's rules)."""
    for spacing in (current, new):
        spacing = np.asarray(spacing, dtype=float)
        if spacing.max() / spacing.min() > ANISOTROPY:
            axes = np.where(spacing.max() / spacing == 1)[0]
            return int(axes[0]) if len(axes) == 1 else None
    return None


def new_shape(shape, spacing, target) -> tuple[int, ...]:
    return tuple(int(round(s / t * n)) for n, s, t in zip(shape, spacing, target))


def nonzero_box(image: np.ndarray) -> tuple[slice, ...]:
    """nnU-Net's crop: the bounding box of nonzero voxels (holes filled do not change it)."""
    nonzero = image != 0
    box = []
    for axis in range(image.ndim):
        other = tuple(a for a in range(image.ndim) if a != axis)
        hits = np.flatnonzero(nonzero.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else
                   slice(0, image.shape[axis]))
    return tuple(box)


# --- preprocessing ---------------------------------------------------------------------------

def normalize(image: np.ndarray, scheme: str, intensity: dict, use_mask: bool) -> np.ndarray:
    """nnU-Net's normalisation schemes, in place on a float32 array."""
    if scheme == "CTNormalization":
        np.clip(image, intensity["percentile_00_5"], intensity["percentile_99_5"], out=image)
        image -= intensity["mean"]
        image /= max(intensity["std"], 1e-8)
    elif scheme == "ZScoreNormalization":
        if use_mask:
            inside = ndimage.binary_fill_holes(image != 0)
            values = image[inside]
            image[inside] = (values - values.mean()) / max(values.std(), 1e-8)
        else:
            mean, std = image.mean(), image.std()
            image -= mean
            image /= max(std, 1e-8)
    elif scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= max(image.max(), 1e-8)
    return image


def _spline_resize(image: np.ndarray, shape, order: int) -> np.ndarray:
    """skimage.transform.resize(order, mode='edge', anti_aliasing=False) as nnU-Net calls it:
    scipy's zoom on the cell grid, clipped to the input's range."""
    if tuple(image.shape) == tuple(shape):
        return image
    factors = [n / o for n, o in zip(shape, image.shape)]
    out = ndimage.zoom(image, factors, order=order, mode="nearest", grid_mode=True,
                       output=np.float32)
    if order > 1:
        np.clip(out, image.min(), image.max(), out=out)
    return out


def _nearest_index(old: int, new: int) -> np.ndarray:
    """Source index of each output position, as map_coordinates(order=0) picks it."""
    scale = float(old) / new
    coords = scale * (np.arange(new) + 0.5) - 0.5
    return np.clip(np.floor(coords + 0.5).astype(int), 0, old - 1)


def resample_image(image: np.ndarray, shape, spacing, target) -> np.ndarray:
    """nnU-Net's resampling of the image: cubic, or in-plane cubic and nearest along a thick
    axis."""
    shape = tuple(int(s) for s in shape)
    if tuple(image.shape) == shape:
        return image
    axis = separate_axis(spacing, target)
    if axis is None:
        return _spline_resize(image, shape, 3)
    moved = np.moveaxis(image, axis, 0)
    plane = tuple(s for a, s in enumerate(shape) if a != axis)
    slices = np.stack([_spline_resize(moved[i], plane, 3) for i in range(moved.shape[0])])
    slices = slices[_nearest_index(moved.shape[0], shape[axis])]
    return np.ascontiguousarray(np.moveaxis(slices, 0, axis))


# --- the sliding window ----------------------------------------------------------------------

def window_starts(size: int, patch: int, step: float) -> list[int]:
    """nnU-Net's window positions along one axis: evenly spread, first at 0, last at the end."""
    count = int(math.ceil((size - patch) / (patch * step))) + 1
    if count == 1:
        return [0]
    stride = (size - patch) / (count - 1)
    return [int(np.round(stride * i)) for i in range(count)]


@lru_cache(maxsize=2)
def gaussian_weights(patch: tuple[int, ...]) -> torch.Tensor:
    """nnU-Net's importance map: a delta blurred with sigma patch/8, peak 10, no zeros."""
    delta = np.zeros(patch)
    delta[tuple(p // 2 for p in patch)] = 1
    weights = ndimage.gaussian_filter(delta, [p / 8 for p in patch], 0, mode="constant", cval=0)
    weights = torch.from_numpy(weights / weights.max() * 10).to(torch.float16).float()
    weights[weights == 0] = weights[weights > 0].min()
    return weights


def pad_to_patch(image: torch.Tensor, patch) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad axes smaller than the patch, evenly (nnU-Net's pad_nd_image)."""
    pads, keep = [], []
    for size, p in zip(image.shape, patch):
        extra = max(0, p - size)
        pads.append((extra // 2, extra - extra // 2))
        keep.append(slice(extra // 2, extra // 2 + size))
    if any(sum(p) for p in pads):
        image = F.pad(image, [v for pair in reversed(pads) for v in pair])
    return image, tuple(keep)


# --- back onto the scan ------------------------------------------------------------------------

def _linear_weights(old: int, new: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation on the cell grid with edge clamping (torch's align_corners=False,
    skimage's resize order 1): lower index, upper index, weight of the upper."""
    coords = np.maximum((np.arange(new) + 0.5) * (old / new) - 0.5, 0)
    low = np.minimum(np.floor(coords).astype(int), old - 1)
    high = np.minimum(low + 1, old - 1)
    return low, high, (coords - low).astype(np.float32)


class NNUNetPredictor:
    """An nnU-Net v2 model folder behind medseg's predictor interface (labels, model_id,
    spacing, predict(scan) -> mask on the scan's grid)."""

    spatial_dims = 3

    def __init__(self, model: NNUNetModel | str, options: InferOptions | None = None,
                 folds: str | None = None):
        self.options = options or InferOptions()
        self.model = model if isinstance(model, NNUNetModel) else read_model_folder(model, folds)
        self.device = resolve_device(local_device(self.options.device))
        self.labels = dict(self.model.labels)
        if self.model.regions and self.options.save_probabilities:
            raise MedsegError(f"{self.model.folder}: a region-based model (overlapping regions, "
                              "one sigmoid each) has no class probabilities to save; drop "
                              "--save-probabilities")
        self._check_crf()
        self.model_id = MODEL_ID_PREFIX + "nnunet " + self.model.model_id()
        self.network = self.model.build_network().to(self.device).eval()
        for path, weights in zip(self.model.checkpoints, self.model.weights):
            self._check_weights(path, weights)
        self.outputs = len(self.model.regions or self.labels)  # the network's output channels
        config = self.model.configuration
        self.patch = tuple(int(p) for p in config["patch_size"])
        self.target = tuple(float(s) for s in config["spacing"])
        self.axes = network_axes(self.model.transpose_forward)
        # The working spacing in the scan's axis order (for the memory estimate).
        self.spacing = tuple(self.target[self.axes.index(a)] for a in range(3))

    def _check_crf(self) -> None:
        """--crf needs class probabilities and intensities that map back to HU."""
        if not self.options.crf:
            return
        scheme = self.model.configuration["normalization_schemes"][0]
        if self.model.regions or scheme != "CTNormalization":
            why = ("a region-based model (one sigmoid per region) has no class probabilities"
                   if self.model.regions else
                   f"its input is normalised with {scheme}, not CTNormalization, so its "
                   "intensities do not map back to HU")
            raise MedsegError(f"{self.model.folder}: --crf cannot refine this model: {why}; "
                              "drop --crf")

    def _check_weights(self, path, weights: dict) -> None:
        try:
            self.network.load_state_dict(weights)
        except RuntimeError as exc:
            detail = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise MedsegError(f"{path}: the weights do not fit the network plans.json describes "
                              f"({detail[:160]}); trainer {self.model.trainer} builds another "
                              "network than its plan, which medseg cannot reproduce") from None

    # The steps, in order -----------------------------------------------------------------

    def predict(self, scan: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """A uint8 mask (and uint8 probabilities if asked) on exactly the scan's grid."""
        affine = np.asarray(scan.affine, dtype=float)
        scan_spacing = voxel_spacing(affine)
        image = np.asarray(scan[0].as_subclass(torch.Tensor).numpy(), dtype=np.float32)
        array = np.transpose(image, self.axes)  # a view: nnU-Net's axis order
        spacing = tuple(float(scan_spacing[a]) for a in self.axes)
        box = nonzero_box(array)
        cropped = np.array(array[box], dtype=np.float32)  # a copy, normalised in place
        config = self.model.configuration
        cropped = normalize(cropped, config["normalization_schemes"][0], self.model.intensity,
                            bool(config.get("use_mask_for_norm", [False])[0]))
        working = resample_image(cropped, new_shape(cropped.shape, spacing, self.target),
                                 spacing, self.target)
        logits = self.logits(torch.from_numpy(working))
        if self.options.crf:
            logits = self.refined(logits, working)
        mask_cropped, probs_cropped = self.back_to_crop(logits, cropped.shape, spacing)
        del logits
        mask = np.zeros(array.shape, dtype=np.uint8)
        mask[box] = mask_cropped
        probabilities = None
        if probs_cropped is not None:  # outside the crop: background, certainly
            probabilities = np.zeros((len(self.labels), *array.shape), dtype=np.uint8)
            probabilities[0] = 255
            probabilities[(slice(None), *box)] = probs_cropped
            probabilities = np.transpose(probabilities, [0, *[1 + self.axes.index(a)
                                                                  for a in range(3)]])
        mask = np.ascontiguousarray(np.transpose(mask, [self.axes.index(a) for a in range(3)]))
        min_voxels = voxels_for_volume(self.options.min_volume_mm3, affine)
        mask = clean_components(mask, self.options.keep_largest, min_voxels)
        return mask, probabilities

    @torch.inference_mode()
    def refined(self, logits: torch.Tensor, working: np.ndarray) -> torch.Tensor:
        """The dense CRF on the working grid, on intensities mapped back to HU (clipped as
        CTNormalization clipped them); its log-probabilities replace the logits."""
        intensity = self.model.intensity
        hu = torch.from_numpy(working).mul(max(intensity["std"], 1e-8)).add_(intensity["mean"])
        probabilities = softmax_(logits)  # in place: the logits are not needed again
        refined = refine(probabilities, hu, self.target, self.options.crf_settings)
        return refined.clamp_(min=CRF_EPS).log_()

    @torch.inference_mode()
    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Fold-averaged, Gaussian-weighted sliding-window logits (C, *image.shape), float32."""
        padded, keep = pad_to_patch(image, self.patch)
        starts = [window_starts(s, p, 1.0 - self.options.overlap)
                  for s, p in zip(padded.shape, self.patch)]
        windows = [tuple(slice(s, s + p) for s, p in zip(corner, self.patch))
                   for corner in itertools.product(*starts)]
        gaussian = gaussian_weights(self.patch)
        total = None
        for weights in self.model.weights:
            self.network.load_state_dict(weights)
            summed = torch.zeros((self.outputs, *padded.shape))
            counts = torch.zeros(padded.shape)
            batch = max(1, self.options.sw_batch_size)
            for first in range(0, len(windows), batch):
                group = windows[first:first + batch]
                inputs = torch.stack([padded[w] for w in group])[:, None].to(self.device)
                outputs = self._mirrored(inputs).float().cpu()
                for window, output in zip(group, outputs):
                    summed[(slice(None), *window)] += output * gaussian
                    counts[window] += gaussian
            summed /= counts
            total = summed if total is None else total.add_(summed)
        if len(self.model.weights) > 1:
            total /= len(self.model.weights)
        return total[(slice(None), *keep)]

    def _mirrored(self, inputs: torch.Tensor) -> torch.Tensor:
        """The network's logits, averaged over the checkpoint's mirror axes under --tta."""
        with autocast(self.device, self.options.precision):
            result = self.network(inputs).float()
            if not self.options.tta or not self.model.mirror_axes:
                return result
            axes = [a + 2 for a in self.model.mirror_axes]
            flips = [c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]
            for dims in flips:
                result += torch.flip(self.network(torch.flip(inputs, dims)).float(), dims)
        return result / (len(flips) + 1)

    def back_to_crop(self, logits: torch.Tensor, shape, spacing
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits resampled back to the cropped scan's shape and argmax'd, slab by slab along
        the thick axis (or the first): linear in-plane, nearest or linear along the slab axis,
        as nnU-Net's order-1 resampling with its separate-z rule."""
        shape = tuple(int(s) for s in shape)
        axis = separate_axis(self.target, spacing)
        slab_axis = 0 if axis is None else axis
        logits = logits.movedim(slab_axis + 1, 1)  # (C, S, A, B)
        out_shape = [shape[slab_axis]] + [s for a, s in enumerate(shape) if a != slab_axis]
        plane = tuple(out_shape[1:])
        old = logits.shape[1]
        if axis is None:
            low, high, weight = _linear_weights(old, out_shape[0])
        else:
            low = high = _nearest_index(old, out_shape[0])
            weight = np.zeros(out_shape[0], dtype=np.float32)
        mask = np.empty(out_shape, dtype=np.uint8)
        keep = self.options.save_probabilities
        probs = np.empty((logits.shape[0], *out_shape), dtype=np.uint8) if keep else None
        # Source slices resized in-plane per step: each once, however many rows use it.
        sources_per_step = max(2, SLAB_BYTES // (logits.shape[0] * math.prod(plane) * 4))
        step = max(1, int((sources_per_step - 1) * out_shape[0] / old))
        for first in range(0, out_shape[0], step):
            rows = range(first, min(first + step, out_shape[0]))
            sources = np.unique(np.concatenate([low[rows], high[rows]]))
            planes = self._plane(logits, sources, plane)  # (S, C, A, B), classes innermost
            for row in rows:
                slab = planes[int(np.searchsorted(sources, low[row]))]
                if axis is None and weight[row] > 0:
                    upper = planes[int(np.searchsorted(sources, high[row]))]
                    slab = torch.lerp(slab, upper, float(weight[row]))
                mask[row] = self._segment(slab)
                if keep:
                    probs[:, row] = (torch.softmax(slab, 0) * 255).round().to(
                        torch.uint8).numpy()
        order = list(range(1, 3))
        order.insert(slab_axis, 0)
        mask = np.transpose(mask, order)
        if keep:
            probs = np.transpose(probs, [0, *[o + 1 for o in order]])
        return mask, probs

    def _segment(self, logits: torch.Tensor) -> np.ndarray:
        """Labels from logits: argmax; for a region model each region whose sigmoid exceeds
        0.5 (logit > 0) writes its value, in regions_class_order (nnU-Net's LabelManager)."""
        if not self.model.regions:
            return logits.argmax(0).to(torch.uint8).numpy()
        mask = torch.zeros(logits.shape[1:], dtype=torch.uint8)
        for channel, value in enumerate(self.model.regions):
            mask[logits[channel] > 0] = value
        return mask.numpy()

    @staticmethod
    def _plane(logits: torch.Tensor, rows: np.ndarray, plane) -> torch.Tensor:
        """The given slices of (C, S, A, B) resized bilinearly in-plane to `plane`, as
        (S, C, A, B) with the classes innermost in memory (channels_last), so that the argmax
        over classes reads contiguous memory."""
        picked = logits[:, torch.from_numpy(rows)].transpose(0, 1)
        picked = picked.contiguous(memory_format=torch.channels_last)
        if tuple(picked.shape[2:]) == tuple(plane):
            return picked
        return F.interpolate(picked, size=plane, mode="bilinear", align_corners=False)

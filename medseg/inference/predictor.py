"""The predictor: scan -> RAS + working spacing -> sliding window -> back onto the scan's grid."""

from __future__ import annotations

import hashlib
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.transforms import Compose

from medseg.data.network_input import NetworkInput
from medseg.errors import MedsegError, first_line
from medseg.inference.postprocess import clean_components, voxels_for_volume
from medseg.nets.checkpoint import INFERENCE_KEYS, load_checkpoint, resolve_checkpoint
from medseg.nets.registry import build_model, volume_model
from medseg.runtime import autocast, resolve_device

log = logging.getLogger("medseg")

# Mirroring TTA flips anterior-posterior and superior-inferior only: a left-right flip turns the
# right kidney into a left one, so averaging it in would blur the two labels together.
TTA_AXES = (1, 2)


# Windows overlap by half: training validates with it too, so its Dice is what infer gives (at
# 0.25 a model 12 epochs into the real case scored aorta 0.01 on the working grid, at 0.5 0.69).
OVERLAP = 0.5


@dataclass
class InferOptions:
    """How to run inference; the model-specific settings come from the checkpoints."""

    device: str = "auto"
    overlap: float = OVERLAP
    sw_batch_size: int = 2
    precision: str = "auto"
    tta: bool = False
    keep_largest: bool = False
    min_volume_mm3: float = 0.0
    save_probabilities: bool = False
    overwrite: bool = False


@dataclass
class _Member:
    """One network of an ensemble and the input it expects."""

    model: torch.nn.Module
    spec: NetworkInput


MODEL_ID_PREFIX = "medseg model "


def model_id(checkpoints: list[Path]) -> str:
    """Names the model (its checkpoint files' contents); masks record it in their header, so a
    rerun skips only masks this very model finished."""
    digest = hashlib.sha256()
    for path in checkpoints:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return MODEL_ID_PREFIX + digest.hexdigest()[:16]


class Predictor:
    """One or more trained models (an ensemble averages their probabilities).

    `Predictor(checkpoints)` loads them for `medseg infer`; `Predictor.for_network` wraps a
    network in memory, which is how training validates: through this very code.
    """

    def __init__(self, checkpoints, options: InferOptions | None = None):
        self.options = options or InferOptions()
        self.device = resolve_device(self.options.device)
        paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
        configs = [load_checkpoint(p, needs=INFERENCE_KEYS) | {"path": p} for p in paths]
        self.labels = {int(k): v for k, v in configs[0]["config"]["labels"].items()}
        self.spec = NetworkInput.from_config(configs[0]["config"])
        self.model_id = model_id([resolve_checkpoint(p) for p in paths])
        self.members = [self._load_member(c) for c in configs]
        # 3 if any member sees volumes: then a single-slice scan cannot be segmented.
        self.spatial_dims = max(m.spec.spatial_dims for m in self.members)

    @classmethod
    def for_network(cls, network: torch.nn.Module, spec: NetworkInput, labels: dict[int, str],
                    options: InferOptions | None = None) -> Predictor:
        """A predictor over a network already built (and placed on options.device)."""
        self = cls.__new__(cls)
        self.options = options or InferOptions()
        self.device = resolve_device(self.options.device)
        self.labels, self.spec, self.spatial_dims = dict(labels), spec, spec.spatial_dims
        self.model_id = f"{MODEL_ID_PREFIX}in-memory"
        model = volume_model(network, spec.spatial_dims, spec.context_slices,
                             spec.end_slice_padding)
        self.members = [_Member(model, spec)]
        return self

    @property
    def spacing(self) -> tuple[float, ...]:
        """The working spacing every member shares."""
        return self.spec.spacing

    def _load_member(self, payload: dict) -> _Member:
        config, path = payload["config"], payload["path"]
        if {int(k): v for k, v in config["labels"].items()} != self.labels:
            raise MedsegError(f"{path}: its label map differs from the first checkpoint's")
        spec = NetworkInput.from_config(config)
        if spec.spacing != self.spec.spacing:
            raise MedsegError(f"{path}: spacing {list(spec.spacing)} differs from the first "
                              f"checkpoint's {list(self.spacing)}; ensembles share one grid")
        settings = config["model"]
        net = build_model(settings["name"], settings["in_channels"], len(self.labels),
                          spatial_dims=spec.spatial_dims, **settings["kwargs"])
        try:
            net.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise MedsegError(f"{path}: weights do not fit the model they claim "
                              f"({first_line(exc)}); use the checkpoint its own run wrote, or "
                              "retrain") from None
        # 2D models see windows that span all slices, so each slice gets its true neighbours.
        model = volume_model(net, spec.spatial_dims, spec.context_slices, spec.end_slice_padding)
        return _Member(model.to(self.device).eval(), spec)

    @property
    def model(self) -> torch.nn.Module:
        """The first member's network (the only one for a single checkpoint)."""
        return self.members[0].model

    @model.setter
    def model(self, network: torch.nn.Module) -> None:
        self.members[0].model = network

    def resample_to_working_grid(self, scan: torch.Tensor) -> torch.Tensor:
        """Reorient to RAS and resample to the working spacing, exactly as training does."""
        return Compose(self.spec.working_grid())({"image": scan})["image"]

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Mean softmax over ensemble members and TTA flips, (C, X, Y, Z) on the stitch device."""
        total, count = None, 0
        for member in self.members:
            normalized = member.spec.normalize()({"image": image})["image"]
            batch = normalized.as_subclass(torch.Tensor)[None].to(self.device)
            for flips in self._flip_sets():
                flipped = batch.flip(flips) if flips else batch
                logits = self._sliding_window(flipped, member)
                probs = torch.softmax(logits.float(), dim=1)
                probs = probs.flip(flips) if flips else probs
                total = probs if total is None else total + probs.to(total.device)
                count += 1
        return total[0] / count

    def _flip_sets(self) -> list[tuple[int, ...]]:
        """Tensor dims to flip for each TTA pass (none without --tta)."""
        if not self.options.tta:
            return [()]
        axes = [2 + a for a in TTA_AXES]  # skip batch and channel dims
        return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]

    def _sliding_window(self, batch: torch.Tensor, member: _Member) -> torch.Tensor:
        """Gaussian-weighted sliding window; stitches on the device, on the CPU if that is full."""
        def run(stitch_device):
            with torch.inference_mode(), autocast(self.device, self.options.precision):
                # Scans smaller than a window are padded as training padded them.
                return sliding_window_inference(
                    batch, member.spec.window, self.options.sw_batch_size, member.model,
                    overlap=self.options.overlap, mode="gaussian", padding_mode="constant",
                    cval=member.spec.pad_value, sw_device=self.device, device=stitch_device)

        try:
            return run(self.device)
        except torch.OutOfMemoryError:
            if self.device.type == "cpu":
                raise
            log.warning("the volume does not fit on %s; stitching on the CPU", self.device)
            torch.cuda.empty_cache()
            return run(torch.device("cpu"))

    def predict(self, scan: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """A uint8 organ mask on exactly the scan's grid, and uint8 probabilities if asked."""
        image = self.resample_to_working_grid(scan)
        probs = self.probabilities(image)
        mask, probabilities = resample_to_grid(
            probs, np.asarray(image.affine), np.asarray(scan.affine), tuple(scan.shape[1:]),
            keep_probabilities=self.options.save_probabilities)
        min_voxels = voxels_for_volume(self.options.min_volume_mm3, np.asarray(scan.affine))
        mask = clean_components(mask, self.options.keep_largest, min_voxels)
        return mask, probabilities


def resample_to_grid(probs: torch.Tensor, src_affine: np.ndarray, dst_affine: np.ndarray,
                     dst_shape: tuple[int, int, int], keep_probabilities: bool = False,
                     max_chunk_bytes: int = 128 << 20) -> tuple[np.ndarray, np.ndarray | None]:
    """Trilinearly resample class probabilities onto another grid and take the argmax, in slabs.

    Works for any pair of affines, because each output voxel's position in the source grid comes
    from the affines themselves. Slab by slab along the first axis, so memory stays bounded
    whatever the output size; only uint8 results are kept (labels, and probabilities scaled to
    0..255 when asked for). Labels alone take the exact shortcut of `_sparse_labels`.
    """
    num_classes = probs.shape[0]
    dst_to_src = np.linalg.inv(src_affine) @ dst_affine
    if not keep_probabilities and min(probs.shape[1:]) >= 2:
        agreed = _cell_agreement(probs)
        if (agreed < 0).float().mean() <= SPARSE_MAX_BOUNDARY:
            return _sparse_labels(probs, agreed, dst_to_src, dst_shape, max_chunk_bytes), None
    sample = _GridSampler(probs, dst_to_src, dst_shape)
    slab = _slab_size(dst_shape, (num_classes + 3) * 4, max_chunk_bytes)
    labels = np.empty(dst_shape, dtype=np.uint8)
    kept = np.empty((num_classes, *dst_shape), np.uint8) if keep_probabilities else None
    for i0 in range(0, dst_shape[0], slab):
        i1 = min(i0 + slab, dst_shape[0])
        sampled = sample.dense(i0, i1)
        # max().indices gives argmax's answer several times faster on the CPU.
        labels[i0:i1] = sampled.max(0).indices.to(torch.uint8).cpu().numpy()
        if kept is not None:
            kept[:, i0:i1] = (sampled * 255).round_().to(torch.uint8).cpu().numpy()
    return labels, kept


# Above this fraction of boundary cells (a noisy, e.g. untrained, model) interpolating every
# voxel is cheaper than picking out the boundary ones; trained models have a few percent.
SPARSE_MAX_BOUNDARY = 0.5


def _sparse_labels(probs: torch.Tensor, agreed: torch.Tensor, dst_to_src: np.ndarray, dst_shape,
                   max_chunk_bytes: int) -> np.ndarray:
    """The trilinear argmax, interpolating only where the 8 surrounding source voxels disagree.

    Exact, not an approximation: if class c wins at all 8 corners of a source cell, then
    p_c - p_k >= 0 at each corner for every k, and trilinear weights are a convex combination,
    so c also wins anywhere inside the cell. Most of a scan lies inside such cells (organ
    interiors, air, fat), so only the voxels near label boundaries pay for `grid_sample`.
    """
    sample = _GridSampler(probs, dst_to_src, dst_shape)
    # The cell holding each point: its first corner, clamped so border-clamped points (and
    # points on the last voxel plane) use the last cell, which contains every corner they touch.
    last_corner = [float(n - 1) for n in agreed.shape]
    flat = agreed.flatten()
    labels = np.empty(dst_shape, dtype=np.uint8)
    slab = _slab_size(dst_shape, 32, max_chunk_bytes)
    for i0 in range(0, dst_shape[0], slab):
        i1 = min(i0 + slab, dst_shape[0])
        src = sample.coordinates(i0, i1)
        cell = torch.zeros(src.shape[:-1], dtype=torch.int32, device=src.device)
        for axis, top in enumerate(last_corner):
            cell *= agreed.shape[axis]
            cell += src[..., axis].clamp(0, top).floor_().to(torch.int32)
        slab_labels = flat[cell]
        del cell
        boundary = slab_labels < 0
        points = src[boundary]
        if len(points):
            slab_labels[boundary] = sample.at(points).max(0).indices.to(slab_labels.dtype)
        labels[i0:i1] = slab_labels.to(torch.uint8).cpu().numpy()
    return labels


def _cell_agreement(probs: torch.Tensor) -> torch.Tensor:
    """Per source cell (2 x 2 x 2 neighbouring voxels), the label all 8 share, else -1."""
    winner = probs.max(0).indices[None, None].float()
    highest = F.max_pool3d(winner, 2, stride=1)[0, 0]
    lowest = -F.max_pool3d(-winner, 2, stride=1)[0, 0]
    return torch.where(highest == lowest, highest, -1.0).to(torch.int16)


def _slab_size(dst_shape, bytes_per_voxel: int, max_chunk_bytes: int) -> int:
    """Output planes per slab so that one slab's working memory stays under max_chunk_bytes."""
    return max(1, max_chunk_bytes // (bytes_per_voxel * dst_shape[1] * dst_shape[2]))


class _GridSampler:
    """Source-grid coordinates of output voxels, and trilinear samples there (any affine)."""

    def __init__(self, probs: torch.Tensor, dst_to_src: np.ndarray, dst_shape):
        self.probs = probs
        self.matrix = torch.as_tensor(dst_to_src, dtype=torch.float32, device=probs.device)
        # grid_sample with align_corners=True maps -1 and 1 to the first and last voxel centres.
        self.extent = torch.tensor([max(s - 1, 1) for s in probs.shape[1:]],
                                   dtype=torch.float32, device=probs.device)
        j = torch.arange(dst_shape[1], dtype=torch.float32, device=probs.device)
        k = torch.arange(dst_shape[2], dtype=torch.float32, device=probs.device)
        self.jk = self.matrix[:3, 1] * j[:, None, None] + self.matrix[:3, 2] * k[None, :, None]

    def coordinates(self, i0: int, i1: int) -> torch.Tensor:
        """(i1 - i0, J, K, 3) source voxel coordinates of output planes i0..i1."""
        i = torch.arange(i0, i1, dtype=torch.float32, device=self.probs.device)
        return self.matrix[:3, 0] * i[:, None, None, None] + self.jk[None] + self.matrix[:3, 3]

    def _interpolate(self, src: torch.Tensor) -> torch.Tensor:
        grid = (2.0 * src / self.extent - 1.0).flip(-1)  # grid_sample wants (z, y, x) order last
        return F.grid_sample(self.probs[None], grid[None], mode="bilinear",
                             padding_mode="border", align_corners=True)[0]

    def dense(self, i0: int, i1: int) -> torch.Tensor:
        """(C, i1 - i0, J, K) probabilities on output planes i0..i1."""
        return self._interpolate(self.coordinates(i0, i1))

    def at(self, points: torch.Tensor) -> torch.Tensor:
        """(C, N) probabilities at N source coordinates, shape (N, 3)."""
        return self._interpolate(points[None, None])[:, 0, 0]


def resample_labels(probs: torch.Tensor, src_affine: np.ndarray, dst_affine: np.ndarray,
                    dst_shape: tuple[int, int, int], max_chunk_bytes: int = 128 << 20
                    ) -> np.ndarray:
    """Labels only: resample_to_grid without probabilities."""
    return resample_to_grid(probs, src_affine, dst_affine, dst_shape,
                            max_chunk_bytes=max_chunk_bytes)[0]

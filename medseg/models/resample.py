"""Resampling back: class probabilities on the working grid -> a label mask (and optionally
probabilities) on the scan's own grid, exactly, in bounded memory."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# What one slab of the result may take while probabilities or logits go back onto a scan's
# grid: every kind of model's resampling keeps to it.
SLAB_BYTES = 128 << 20


def resample_to_grid(probs: torch.Tensor, src_affine: np.ndarray, dst_affine: np.ndarray,
                     dst_shape: tuple[int, int, int], keep_probabilities: bool = False,
                     max_chunk_bytes: int = SLAB_BYTES) -> tuple[np.ndarray, np.ndarray | None]:
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
                    dst_shape: tuple[int, int, int], max_chunk_bytes: int = SLAB_BYTES
                    ) -> np.ndarray:
    """Labels only: resample_to_grid without probabilities."""
    return resample_to_grid(probs, src_affine, dst_affine, dst_shape,
                            max_chunk_bytes=max_chunk_bytes)[0]

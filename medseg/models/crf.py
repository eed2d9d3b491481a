"""Fully connected CRF refinement (DeepLab v1/v2's post-processing) in 3D, in millimetres.

Krähenbühl and Koltun's mean-field inference for a dense CRF with Potts compatibility:

    Q <- softmax(log P + w_s * G(Q) + w_a * B(Q))

P is the network's class probabilities, G a Gaussian smoothness kernel over position and B an
appearance (bilateral) kernel over position and CT intensity, so that a label spreads to
nearby voxels of similar HU and stops at intensity edges. Both kernels are normalised (each
message is a weighted average of Q, between 0 and 1), so the weights mean the same at any voxel
size; the kernel widths are in millimetres and HU, converted per axis with the grid's spacing.

No maintained dense-CRF package installs here (pydensecrf and SimpleCRF ship no wheels for
Python 3.11; MONAI's CRF needs its compiled C++ extension), so the updates are written in torch:
- G is an exact Gaussian, applied separably (edges replicated);
- B is approximated on a bilateral grid (Chen, Paris and Durand 2007): every voxel is splatted
  into a grid of cells half a kernel width wide in space and one wide in HU (linearly between
  two HU bins), the grid is blurred with the Gaussian, and each voxel reads its value back by
  linear interpolation in all four dimensions. Tested against the exact sum on small volumes.
Both filters are linear and keep constants, so the background's message is what the organs'
leave (1 minus their sum), and each organ is filtered only within its bounding box (where its
probability exceeds BOX_PROBABILITY, widened by the kernels' reach). Memory: three copies of the
probabilities, a few bytes per voxel, and one organ's grid at a time.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from monai.networks.layers.convutils import gaussian_1d

from medseg.models.options import CRFSettings

# Probabilities are floored before the log: a class the network rules out entirely can still be
# chosen only if the kernels' messages (at most w_s + w_a) outweigh log(1 / EPS) = 13.8.
EPS = 1e-6
# An organ's messages are computed where its probability exceeds this, plus the kernels' reach;
# elsewhere (every voxel within reach below it) they are taken as 0. Such voxels could turn to
# the organ only with weights summing to more than log(1 / BOX_PROBABILITY) = 6.9.
BOX_PROBABILITY = 1e-3
TRUNCATE = 3.0  # Gaussians are cut at 3 standard deviations
# Bilateral grid cells per appearance kernel width (standard deviation), in space and in HU.
# Against the exact sum (tests/test_crf.py), for a message in [0, 1] across a step edge, with
# 10 mm and 10 HU kernels: max error 0.027-0.028 at 1.5 x 1.5 x 3 and 0.8 x 2 x 1 mm, 0.064 at
# 3 mm and 0.071 at 4 mm (cells 1.25 voxels wide); mean error 0.002-0.009. Half-width bins in
# HU halved the max error and doubled the time; full-width cells in space: max 0.07 at 1.5 mm.
CELLS_PER_MM_WIDTH = 2
BINS_PER_HU_WIDTH = 1


# Bytes per working voxel that refine holds besides three copies of the probabilities: the
# scan's bins and normaliser (10), one class's lookup (coordinates and two reads, about 28) and
# the background's sum (4). Per grid cell: the grid and the blur's copies, 4 of float32.
VOXEL_BYTES, GRID_BYTES = 48, 16


def cell_widths(spacing, settings: CRFSettings) -> list[float]:
    """The bilateral grid's cell width along each axis, in voxels (half a kernel width, at
    least a voxel; a fraction of voxels in general): the blur is then two cells wide."""
    return [max(1.0, settings.appearance_mm / float(s) / CELLS_PER_MM_WIDTH) for s in spacing]


def bin_hu(settings: CRFSettings) -> float:
    """The width of the grid's intensity bins."""
    return settings.appearance_hu / BINS_PER_HU_WIDTH


def bin_count(settings: CRFSettings) -> int:
    """Intensity bins over the window, one more so that every voxel has a bin above it."""
    lo, hi = settings.window
    return int(math.floor((hi - lo) / bin_hu(settings))) + 2


def workspace_bytes(shape, spacing, settings: CRFSettings) -> int:
    """What refine needs beyond three copies of the probabilities, at most (a box that is the
    whole working grid), for the up-front memory estimate."""
    cells = [math.floor((n - 1) / c) + 2 for n, c in zip(shape, cell_widths(spacing, settings))]
    return VOXEL_BYTES * math.prod(shape) + GRID_BYTES * bin_count(settings) * math.prod(cells)


def refine(probabilities: torch.Tensor, image: torch.Tensor, spacing,
           settings: CRFSettings | None = None) -> torch.Tensor:
    """Mean-field refined probabilities, (C, X, Y, Z) like `probabilities` (class 0 the
    background). image: (X, Y, Z) in HU on the same grid; spacing: its voxel size in mm.
    `probabilities` is consumed (its memory becomes the unary term)."""
    settings = settings or CRFSettings()
    if settings.iterations == 0:
        return probabilities
    kernels = Kernels(image, spacing, settings)
    boxes = {c: kernels.box(probabilities[c]) for c in range(1, probabilities.shape[0])}
    unary = probabilities.float().clamp_(min=EPS).log_()
    q = torch.softmax(unary, dim=0)
    for _ in range(settings.iterations):
        message = torch.zeros_like(q)
        for c, box in boxes.items():
            if box is not None:
                message[c][box] = kernels.message(q[c][box], box)
        # Each filter averages, so the classes' messages sum to the sum of the weights.
        message[0] = (settings.appearance_weight + settings.smoothness_weight
                      - message[1:].sum(dim=0))
        del q
        q = softmax_(message.add_(unary))
    return q


def softmax_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 0, in place."""
    x.sub_(x.amax(dim=0, keepdim=True)).exp_()
    return x.div_(x.sum(dim=0, keepdim=True))


@lru_cache(maxsize=64)
def band_matrix(n: int, sigma: float, replicate: bool) -> torch.Tensor:
    """The n x n matrix of a 1D normalised Gaussian convolution (sigma in samples), zero
    beyond the ends or, with replicate, the ends repeated. A dense matrix product runs
    several times faster than a convolution here."""
    kernel = gaussian_1d(torch.tensor(float(sigma)), truncated=TRUNCATE, approx="sampled",
                         normalize=True)
    radius = len(kernel) // 2
    offset = torch.arange(n)[None, :] - torch.arange(n)[:, None] + radius
    inside = (offset >= 0) & (offset < len(kernel))
    matrix = torch.where(inside, kernel[offset.clamp(0, len(kernel) - 1)], torch.zeros(()))
    if replicate:  # the weight that falls beyond an end goes to that end's sample
        beyond = torch.arange(-radius, radius + 1)[:, None] + torch.arange(n)[None, :]
        matrix[:, 0] += (kernel[:, None] * (beyond < 0)).sum(0)
        matrix[:, -1] += (kernel[:, None] * (beyond > n - 1)).sum(0)
    return matrix


def blur(volume: torch.Tensor, sigmas, replicate: bool) -> torch.Tensor:
    """A volume convolved with a Gaussian of the given width (in samples) along each axis."""
    for axis, sigma in enumerate(sigmas):
        matrix = band_matrix(volume.shape[axis], float(sigma), replicate).to(volume.device)
        volume = torch.tensordot(matrix, volume, dims=([1], [axis])).movedim(0, axis)
    return volume


class Kernels:
    """The smoothness and appearance kernels' messages for one scan.

    appearance(q)(i) ~ sum_j k(i, j) q(j) / sum_j k(i, j), with
    k(i, j) = exp(-|x_i - x_j|^2 / 2 a^2 - (I_i - I_j)^2 / 2 b^2) (x in mm, I in HU).
    """

    def __init__(self, image: torch.Tensor, spacing, settings: CRFSettings):
        self.settings, self.shape = settings, tuple(image.shape)
        spacing = [float(s) for s in spacing]
        self.cell = cell_widths(spacing, settings)
        self.cell_sigma = [settings.appearance_mm / (s * c) for s, c in zip(spacing, self.cell)]
        self.smoothness_sigma = [settings.smoothness_mm / s for s in spacing]
        reach = TRUNCATE * max(settings.appearance_mm,
                               settings.smoothness_mm if settings.smoothness_weight else 0)
        self.margin = [math.ceil(reach / s + c) for s, c in zip(spacing, self.cell)]
        lo, hi = settings.window
        self.bins = bin_count(settings)
        level = (image.float().clamp(lo, hi) - lo).div_(bin_hu(settings))
        lower = level.floor().clamp_(max=self.bins - 2)
        self.upper_weight = level.sub_(lower)  # linear weights between two intensity bins
        self.lower_bin = lower.to(torch.int16)
        del lower
        everything = tuple(slice(0, n) for n in self.shape)
        self.norm = self._appearance(torch.ones(self.shape, device=image.device), everything)

    def box(self, probability: torch.Tensor) -> tuple[slice, ...] | None:
        """Where a class's messages matter: its probability's bounding box, widened by the
        kernels' reach; None if it is nowhere likely."""
        present = probability > BOX_PROBABILITY
        if not present.any():
            return None
        box = []
        for axis, (n, m) in enumerate(zip(self.shape, self.margin)):
            other = tuple(a for a in range(3) if a != axis)
            where = present.any(dim=other[1]).any(dim=other[0]).nonzero()
            box.append(slice(max(0, int(where[0]) - m), min(n, int(where[-1]) + m + 1)))
        return tuple(box)

    def message(self, q: torch.Tensor, box: tuple[slice, ...]) -> torch.Tensor:
        """w_a * appearance + w_s * smoothness of one class map q, the part inside box."""
        message = self._appearance(q, box).div_(self.norm[box])
        message.mul_(self.settings.appearance_weight)
        if self.settings.smoothness_weight:
            message.add_(blur(q, self.smoothness_sigma, replicate=True),
                         alpha=self.settings.smoothness_weight)
        return message

    def _appearance(self, q: torch.Tensor, box: tuple[slice, ...]) -> torch.Tensor:
        """sum_j k(i, j) q(j) over the box: splat, blur, slice."""
        axes = [self._axis(sl, c, q.device) for sl, c in zip(box, self.cell)]
        lower_bin, upper_weight = self.lower_bin[box], self.upper_weight[box]
        grid = self._splat(q, lower_bin, upper_weight, axes)
        grid = blur(grid, [BINS_PER_HU_WIDTH, *self.cell_sigma], replicate=False)
        return self._slice(grid, lower_bin, upper_weight, axes)

    @staticmethod
    def _axis(voxels: slice, cell: float, device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Along one axis of a box: each voxel's cell (the nearest cell centre; centres lie
        every `cell` voxels from the scan's first voxel), its position in cell units, both
        counted from the box's first cell, and the number of cells."""
        position = torch.arange(voxels.start, voxels.stop, dtype=torch.float64,
                                device=device) / cell
        first = round(voxels.start / cell)
        position -= first
        index = position.round().long()
        return index, position.float(), int(index[-1]) + 1

    def _splat(self, q, lower_bin, upper_weight, axes) -> torch.Tensor:
        """Each voxel's value into its cell, shared linearly between its two intensity bins:
        a (bins, gx, gy, gz) grid."""
        cells = [g for _, _, g in axes]
        per_bin = math.prod(cells)
        index = lower_bin.long().mul_(per_bin)
        for axis, (along, _, _) in enumerate(axes):
            view = [1, 1, 1]
            view[axis] = len(along)
            index.add_(along.view(view) * math.prod(cells[axis + 1:]))
        index = index.view(-1)
        share = q * upper_weight
        grid = torch.zeros(self.bins * per_bin, device=q.device)
        grid.index_add_(0, index.add_(per_bin), share.view(-1))  # the upper bin
        grid.index_add_(0, index.sub_(per_bin), share.neg_().add_(q).view(-1))  # the lower
        return grid.view(self.bins, *cells)

    def _slice(self, grid: torch.Tensor, lower_bin, upper_weight, axes) -> torch.Tensor:
        """Each voxel's value read back: trilinear in space within its lower bin, then within
        the bin above (one lookup each, no copy of the grid), and linear between the two."""
        bins, gx, gy, gz = grid.shape
        stacked = grid.view(1, 1, bins * gx, gy, gz)
        coords = self._coords(lower_bin, axes)
        lower = F.grid_sample(stacked, coords, mode="bilinear", padding_mode="border",
                              align_corners=True)[0, 0]
        coords[..., 2] += 2 * gx / max(bins * gx - 1, 1)  # the next bin's rows (always there:
        upper = F.grid_sample(stacked, coords, mode="bilinear",  # lower bins stop one short)
                              padding_mode="border", align_corners=True)[0, 0]
        return upper.sub_(lower).mul_(upper_weight).add_(lower)

    def _coords(self, lower_bin: torch.Tensor, axes) -> torch.Tensor:
        """grid_sample coordinates of every voxel in its lower bin's grid: the bins' grids are
        stacked along the first axis; a voxel's position (in cell units) is clamped to its
        bin's grid so that interpolation never reads into the next. grid_sample wants
        (z, y, x) order, in [-1, 1]."""
        px, py, pz = (position.clamp(0, g - 1) / max(g - 1, 1) for _, position, g in axes)
        gx = axes[0][2]
        stacked_x = ((px.view(-1, 1, 1) * (gx - 1) + lower_bin.float() * gx)
                     / max(self.bins * gx - 1, 1))
        coords = torch.broadcast_tensors((pz * 2 - 1).view(1, 1, -1), (py * 2 - 1).view(1, -1, 1),
                                         stacked_x * 2 - 1)
        return torch.stack(coords, dim=-1)[None]

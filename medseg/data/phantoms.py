"""Seeded synthetic abdominal CT phantoms: the project's built-in training and test data.

Each phantom is drawn in patient RAS+ millimetres (+x towards the patient's right, so the liver
sits at +x; +y anterior; +z superior), so organ positions and sizes are physical and independent
of the voxel grid. The grid (spacing,
field of view) and the stored orientation (RAS, LPS, ...) are drawn per case, which is what makes
these phantoms useful for testing resampling and geometry, not only for training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from medseg.choices import PHASES

# Organ names follow BTCV's; ids are contiguous so every id is a network output channel.
SYNTHETIC_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right_kidney",
    3: "left_kidney",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "aorta",
    8: "inferior_vena_cava",
    9: "pancreas",
}
ORGAN_ID = {name: idx for idx, name in SYNTHETIC_LABELS.items()}

# Mean HU per contrast phase: (non-contrast, arterial, portal venous).
_PHASE_HU = {
    "liver": (60, 75, 110),
    "spleen": (45, 110, 120),
    "right_kidney": (30, 180, 160),
    "left_kidney": (30, 180, 160),
    "pancreas": (40, 110, 90),
    "aorta": (40, 280, 160),
    "inferior_vena_cava": (40, 90, 140),
    "stomach": (20, 35, 55),
    "gallbladder": (10, 10, 12),
}
_ORIENTATIONS = ("RAS", "LPS", "LAS", "RPS", "LPI", "RAI")
AIR_HU, FAT_HU, MUSCLE_HU, BONE_HU = -1000.0, -100.0, 50.0, 700.0


@dataclass(frozen=True)
class Phantom:
    """One synthetic case: HU image and organ labels on the same grid, with its RAS affine."""

    image: np.ndarray  # int16 HU, (i, j, k) voxel order
    label: np.ndarray  # uint8 organ ids (SYNTHETIC_LABELS)
    affine: np.ndarray  # 4x4 voxel -> RAS mm
    phase: str


class _Canvas:
    """An axis-aligned RAS grid being painted: image, label and helpers for local boxes."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, spacing: np.ndarray):
        shape = np.ceil((hi - lo) / spacing).astype(int) + 1
        self.axes = [lo[d] + spacing[d] * np.arange(shape[d]) for d in range(3)]
        self.affine = np.diag([*spacing, 1.0])
        self.affine[:3, 3] = lo
        self.image = np.full(shape, AIR_HU, dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)

    def box(self, lo, hi):
        """Voxel slices covering the world box [lo, hi] and its sparse world coordinates."""
        sl = tuple(
            slice(np.searchsorted(ax, lo_d), np.searchsorted(ax, hi_d, side="right"))
            for ax, lo_d, hi_d in zip(self.axes, lo, hi)
        )
        coords = np.meshgrid(*(ax[s] for ax, s in zip(self.axes, sl)), indexing="ij", sparse=True)
        return sl, coords

    def paint(self, sl, mask: np.ndarray, hu, label: int | None) -> None:
        """Set HU (scalar or per-voxel array) and optionally the label where mask is true."""
        region = self.image[sl]
        region[mask] = hu[mask] if isinstance(hu, np.ndarray) else hu
        if label is not None:
            self.label[sl][mask] = label


def _wobble(rng: np.random.Generator, coords, amplitude: float, wavelength: float) -> np.ndarray:
    """A smooth random field (sum of three plane waves) that deforms shapes and textures."""
    field = 0.0
    for _ in range(3):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        freq = 2 * np.pi / (wavelength * rng.uniform(0.7, 1.4))
        phase = rng.uniform(0, 2 * np.pi)
        arg = sum(direction[d] * coords[d] for d in range(3)) * freq + phase
        field = field + amplitude / 3 * np.sin(arg)
    return field


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation matrix with each Euler angle within +-max_deg."""
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _ellipsoid(canvas, rng, center, semi, max_rot=15.0, bumpiness=0.15):
    """Mask of a randomly rotated, smoothly deformed ellipsoid; returns (slices, mask, coords)."""
    center, semi = np.asarray(center, float), np.asarray(semi, float)
    reach = semi.max() * (1.0 + bumpiness) + 10.0  # room for a fat shell around the organ
    sl, (x, y, z) = canvas.box(center - reach, center + reach)
    rot = _rotation(rng, max_rot)
    d = (x - center[0], y - center[1], z - center[2])
    u = [sum(rot[r, c] * d[c] for c in range(3)) / semi[r] for r in range(3)]
    level = u[0] ** 2 + u[1] ** 2 + u[2] ** 2
    level = level + _wobble(rng, u, bumpiness * 2, wavelength=2.5)
    return sl, level < 1.0, (x, y, z)


def _tube_along_z(canvas, rng, xy, radius, z_range, sway=6.0):
    """Mask of a vertical vessel whose centre line sways; returns (slices, mask, coords)."""
    margin = radius + sway + 6.0
    lo = np.array([xy[0] - margin, xy[1] - margin, z_range[0]])
    hi = np.array([xy[0] + margin, xy[1] + margin, z_range[1]])
    sl, (x, y, z) = canvas.box(lo, hi)
    px, py = rng.uniform(0, 2 * np.pi, size=2)
    cx = xy[0] + sway * np.sin(z / 90.0 + px)
    cy = xy[1] + sway * 0.5 * np.sin(z / 70.0 + py)
    r = radius * (1.0 + 0.08 * np.sin(z / 40.0 + px))
    return sl, (x - cx) ** 2 + (y - cy) ** 2 < r**2, (x, y, z)


def _pancreas(canvas, rng, head, tail):
    """Mask of a curved tube from head (right) to tail (left), thinning towards the tail."""
    head, tail = np.asarray(head, float), np.asarray(tail, float)
    lo = np.minimum(head, tail) - 20.0
    hi = np.maximum(head, tail) + 20.0
    sl, (x, y, z) = canvas.box(lo, hi)
    t = np.clip((x - head[0]) / (tail[0] - head[0]), 0.0, 1.0)  # 0 at head, 1 at tail
    bow = rng.uniform(8.0, 16.0)  # the body arches anteriorly over the spine
    cy = head[1] + (tail[1] - head[1]) * t + bow * np.sin(np.pi * t)
    cz = head[2] + (tail[2] - head[2]) * t
    r = rng.uniform(13.0, 16.0) * (1.0 - 0.4 * t)
    inside_x = (x >= min(head[0], tail[0])) & (x <= max(head[0], tail[0]))
    return sl, inside_x & ((y - cy) ** 2 + (z - cz) ** 2 < r**2), (x, y, z)


def _organ_hu(rng, coords, organ: str, phase_idx: int, enhancement: float) -> np.ndarray:
    """Per-voxel HU for an organ: phase mean, scaled enhancement, smooth texture."""
    base = _PHASE_HU[organ][0]
    mean = base + enhancement * (_PHASE_HU[organ][phase_idx] - base) + rng.normal(0, 6)
    return (mean + _wobble(rng, coords, 8.0, wavelength=25.0)).astype(np.float32)


def _paint_body(canvas: _Canvas, rng, body: np.ndarray) -> np.ndarray:
    """Body outline with subcutaneous fat, muscle wall and visceral fat; returns inner semi-axes."""
    ax, ay = body
    fat = rng.uniform(10.0, 30.0)
    wall = rng.uniform(8.0, 14.0)
    lo = np.array([-ax, -ay, canvas.axes[2][0]])
    sl, (x, y, z) = canvas.box(lo, -lo * np.array([1, 1, 0]) + np.array([0, 0, canvas.axes[2][-1]]))
    squash = 1.0 + 0.04 * np.sin(z / 60.0)
    rho = np.sqrt((x / (ax * squash)) ** 2 + (y / (ay * squash)) ** 2)
    canvas.paint(sl, rho < 1.0, FAT_HU, None)
    inner = np.array([ax - fat, ay - fat])
    rho_m = np.sqrt((x / (inner[0] * squash)) ** 2 + (y / (inner[1] * squash)) ** 2)
    canvas.paint(sl, rho_m < 1.0, MUSCLE_HU, None)
    visceral = inner - wall
    rho_v = np.sqrt((x / (visceral[0] * squash)) ** 2 + (y / (visceral[1] * squash)) ** 2)
    canvas.paint(sl, rho_v < 1.0, FAT_HU + 10.0, None)
    return visceral


def _paint_distractors(canvas: _Canvas, rng, visceral: np.ndarray) -> None:
    """Unlabelled soft tissue: psoas muscles and bowel loops with gas, so HU alone is not enough."""
    z0, z1 = canvas.axes[2][0], canvas.axes[2][-1]
    spine_y = -visceral[1] + 25.0
    for side in (-1, 1):
        sl, mask, _ = _ellipsoid(canvas, rng, (side * 38, spine_y + 5, z0 + 40), (18, 16, 80), 5)
        canvas.paint(sl, mask, MUSCLE_HU, None)
    for _ in range(rng.integers(6, 11)):
        c = (rng.uniform(-0.6, 0.6) * visceral[0], rng.uniform(0.0, 0.6) * visceral[1],
             rng.uniform(z0, 0.5 * (z0 + z1)))
        sl, mask, coords = _ellipsoid(canvas, rng, c, rng.uniform(12, 25, size=3), 40, 0.25)
        hu = rng.uniform(15, 45) + _wobble(rng, coords, 10.0, 15.0)
        if rng.random() < 0.4:  # bowel gas
            hu = np.where(_wobble(rng, coords, 1.0, 20.0) > 0.5, AIR_HU, hu)
        canvas.paint(sl, mask, np.asarray(hu, np.float32), None)


def _paint_organs(canvas: _Canvas, rng, visceral: np.ndarray, phase_idx: int) -> None:
    """The nine labelled organs, at plausible positions relative to the body's inner wall."""
    enhancement = rng.uniform(0.75, 1.2)
    spacing = np.diag(canvas.affine)[:3]
    ax, ay = visceral
    back = -ay
    jitter = lambda s=8.0: rng.normal(0, s, size=3)  # noqa: E731
    scale = lambda: rng.uniform(0.85, 1.15, size=3)  # noqa: E731

    def put(organ, sl, mask, coords, fat_mm=0.0):
        mask = mask & ((coords[0] / ax) ** 2 + (coords[1] / ay) ** 2 < 1.0)  # inside the wall
        if fat_mm:  # perirenal, peripancreatic, periaortic fat: the planes that separate organs
            distance = distance_transform_edt(~mask, sampling=spacing)
            canvas.paint(sl, (distance > 0) & (distance <= fat_mm), FAT_HU + 15.0, 0)
        canvas.paint(sl, mask, _organ_hu(rng, coords, organ, phase_idx, enhancement),
                     ORGAN_ID[organ])
        return mask

    liver_c = np.array([0.45 * ax, 0.05 * ay, 55.0]) + jitter()
    put("liver", *_ellipsoid(canvas, rng, liver_c, np.array([70, 0.75 * ay, 70]) * scale()))
    spleen_c = np.array([-0.7 * ax, back + 0.45 * ay, 55.0]) + jitter(6)
    put("spleen", *_ellipsoid(canvas, rng, spleen_c, np.array([28, 45, 50]) * scale(), 25))
    stomach_c = np.array([-0.35 * ax, 0.35 * ay, 55.0]) + jitter(6)
    st_sl, st_mask, st_coords = _ellipsoid(canvas, rng, stomach_c, np.array([42, 32, 50]) * scale())
    st_mask = put("stomach", st_sl, st_mask, st_coords, fat_mm=rng.uniform(2, 4))
    air_level = stomach_c[1] + rng.uniform(0.2, 0.7) * 32  # gas rises anteriorly when supine
    canvas.paint(st_sl, st_mask & (st_coords[1] > air_level), AIR_HU, None)
    for organ, side in (("right_kidney", 1), ("left_kidney", -1)):
        kc = np.array([side * 58.0, back + 45.0, -5.0 + 10 * (side < 0)]) + jitter(5)
        put(organ, *_ellipsoid(canvas, rng, kc, np.array([27, 22, 52]) * scale(), 18),
            fat_mm=rng.uniform(4, 8))
    gb_c = np.array([0.35 * ax, 0.45 * ay, 15.0]) + jitter(5)
    put("gallbladder", *_ellipsoid(canvas, rng, gb_c, np.array([16, 16, 32]) * scale(), 30))
    head = np.array([25.0, back + 70.0, 5.0]) + jitter(4)
    tail = np.array([-0.6 * ax, back + 50.0, 30.0]) + jitter(4)
    put("pancreas", *_pancreas(canvas, rng, head, tail), fat_mm=rng.uniform(2, 4))
    z_range = (canvas.axes[2][0], canvas.axes[2][-1])
    for organ, xy, radius in (("inferior_vena_cava", (22.0, back + 38.0), 11.0),
                              ("aorta", (-12.0, back + 40.0), 12.0)):
        tube = _tube_along_z(canvas, rng, np.add(xy, rng.normal(0, 3, 2)),
                             radius * rng.uniform(0.85, 1.15), z_range)
        put(organ, *tube, fat_mm=rng.uniform(2, 4) if organ == "aorta" else 0.0)


def _paint_bones(canvas: _Canvas, rng, body: np.ndarray, visceral: np.ndarray) -> None:
    """Spine (vertebral bodies with discs, canal) and ribs; bone is background in the labels."""
    z0, z1 = canvas.axes[2][0], canvas.axes[2][-1]
    spine = np.array([0.0, -visceral[1] + 10.0])
    sl, (x, y, z) = canvas.box((-40, spine[1] - 45, z0), (40, spine[1] + 25, z1))
    r = rng.uniform(17.0, 22.0)
    full = np.broadcast_shapes(x.shape, y.shape, z.shape)
    body_mask = np.broadcast_to((x - spine[0]) ** 2 + (y - spine[1]) ** 2 < r**2, full)
    disc = np.mod(z + rng.uniform(0, 30), 30.0) < 5.0
    hu = np.broadcast_to(np.where(disc, 80.0, rng.uniform(250, 400)), full)
    canvas.paint(sl, body_mask, hu.astype(np.float32), 0)
    arch = ((x - spine[0]) ** 2 + (y - spine[1] + r + 12) ** 2 < 16**2) & ~(
        (x - spine[0]) ** 2 + (y - spine[1] + r + 10) ** 2 < 7**2)
    canvas.paint(sl, arch & ~disc, BONE_HU, 0)
    ax, ay = body
    sl, (x, y, z) = canvas.box((-ax, -ay, z0), (ax, ay, z1))
    rho = np.sqrt((x / ax) ** 2 + (y / ay) ** 2)
    bands = (np.mod(z + rng.uniform(0, 25), 25.0) < 9.0) & (z > 0.2 * (z0 + z1))
    ribs = (rho > 0.86) & (rho < 0.91) & bands & (np.abs(x) > 0.25 * ax)
    canvas.paint(sl, ribs, BONE_HU, 0)


def _reorient(data: np.ndarray, affine: np.ndarray, code: str) -> tuple[np.ndarray, np.ndarray]:
    """Store an RAS-ordered array under another axis code, keeping world positions intact."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(code)))
    return apply_orientation(data, transform), affine @ inv_ornt_aff(transform, data.shape)


def random_geometry(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A scanner-like voxel spacing (square pixels, thicker slices) and stored orientation."""
    inplane = rng.uniform(0.6, 1.0)
    spacing = np.array([inplane, inplane, rng.uniform(1.5, 5.0)])
    return spacing, str(rng.choice(_ORIENTATIONS))


def make_phantom(seed: int, spacing=None, orientation: str | None = None,
                 phase: str | None = None) -> Phantom:
    """Draw one abdominal CT phantom; the same seed (and overrides) gives the same case.

    phase ("non-contrast", "arterial", "portal-venous") fixes the contrast phase: the same
    seed then gives the same anatomy in another phase.
    """
    rng = np.random.default_rng(seed)
    drawn_spacing, drawn_orientation = random_geometry(rng)  # drawn always: same stream after
    spacing = np.asarray(drawn_spacing if spacing is None else spacing, dtype=float)
    orientation = orientation or drawn_orientation
    phase_idx = int(rng.choice(3, p=[0.2, 0.3, 0.5]))
    if phase is not None:
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r}: choose one of {', '.join(PHASES)}")
        phase_idx = PHASES.index(phase)
    body = np.array([rng.uniform(140.0, 170.0), rng.uniform(100.0, 125.0)])
    z_lo, z_hi = rng.uniform(-110.0, -80.0), rng.uniform(100.0, 130.0)
    margin = 8.0
    canvas = _Canvas(np.array([-body[0] - margin, -body[1] - margin, z_lo]),
                     np.array([body[0] + margin, body[1] + margin, z_hi]), spacing)
    visceral = _paint_body(canvas, rng, body)
    _paint_distractors(canvas, rng, visceral)
    _paint_organs(canvas, rng, visceral, phase_idx)
    _paint_bones(canvas, rng, body, visceral)
    image = _acquire(canvas.image, spacing, rng)
    image, affine = _reorient(image, canvas.affine, orientation)
    label, _ = _reorient(canvas.label, canvas.affine, orientation)
    return Phantom(np.ascontiguousarray(image), np.ascontiguousarray(label), affine,
                   PHASES[phase_idx])


def _acquire(hu: np.ndarray, spacing: np.ndarray, rng) -> np.ndarray:
    """Scanner blur (thicker along z for thick slices) and noise, rounded to int16 HU."""
    blur_mm = rng.uniform(0.6, 1.2)
    sigma = np.maximum(blur_mm / spacing, 0.3)
    image = gaussian_filter(hu, sigma=sigma)
    image += rng.normal(0.0, rng.uniform(8.0, 20.0), size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)

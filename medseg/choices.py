"""What each setting may be: the names to choose from and the ranges numbers must lie in.

One light module (it imports nothing heavy), so the command line lists every choice in --help
at once, and the code that acts on a setting checks it against the same names. The networks'
names are the model registry's (medseg.nets.registry, light too); defaults are TrainConfig's
and InferOptions'.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from medseg.errors import MedsegError

DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N, one GPU of several
# auto: bf16 on CUDA (and, for training, on CPUs with native bf16), else fp32.
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
AUGMENTATIONS = ("light", "nnunet")  # light: the demo's short CPU runs; nnunet: nnU-Net's set
OPTIMIZERS = ("adamw", "sgd")  # sgd: nnU-Net's, Nesterov momentum 0.99
SCHEDULES = ("poly", "cosine")  # poly: nnU-Net's decay; cosine: linear warm-up, cosine decay
# loss name -> (weight of the soft Dice term, weight of the cross-entropy term)
LOSSES: dict[str, tuple[float, float]] = {"ce": (0.0, 1.0), "dice": (1.0, 0.0),
                                          "dice_ce": (1.0, 1.0)}
# Decoder upsampling of unet, fcn and deeplabv3plus (medseg.nets.upsample).
UPSAMPLING = ("transpose", "nearest", "linear", "bed_of_nails", "unpool")
PHASES = ("non-contrast", "arterial", "portal-venous")  # phantoms' contrast phases

# Working spacing: beyond 0.25 mm a 500 mm field of view is 2000^3 voxels; beyond 20 mm the
# organs are a voxel or two.
WORKING_SPACING_MM = (0.25, 20.0)
# Phantom spacing: finer would take tens of GB to draw.
SYNTH_SPACING_MM = (0.25, 10.0)
MAX_PATCH = 1024  # voxels along an axis
MAX_OVERLAP = 0.95  # sliding windows: at 1 they would never advance


# What `medseg infer` writes per scan: the NIfTI mask always (it marks the case done and is what
# evaluate reads), DICOM-SEG and RTSTRUCT beside it for DICOM series inputs.
OUTPUT_TYPES = ("nifti", "dicom-seg", "rtstruct")


def check_device(name) -> None:
    """A device name torch takes: one of DEVICES, or cuda:N for one GPU of several."""
    if name not in DEVICES and not re.fullmatch(r"cuda:[0-9]+", str(name)):
        raise MedsegError(f"device {name!r}: choose one of {', '.join(DEVICES)}, or cuda:N")


def check_output_types(types) -> tuple[str, ...]:
    """Output types from a list or 'a,b': known names, each once, in the given order."""
    names = [t.strip() for t in (types.split(",") if isinstance(types, str) else types)]
    unknown = [t for t in names if t not in OUTPUT_TYPES]
    if unknown or not names:
        raise MedsegError(f"output type {', '.join(map(repr, unknown)) or '(none)'}: choose from "
                          f"{', '.join(OUTPUT_TYPES)}")
    return tuple(dict.fromkeys(names))


class Number(NamedTuple):
    """A numeric setting's range: whole number or not, lowest (excluded if lo_open), highest;
    None: unbounded. The command line's option types are made from the same rules."""

    whole: bool
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False


RECIPE_FIX = "fix it in the recipe or on the command line"


def check_number(name: str, value, rule: Number, fix: str = RECIPE_FIX) -> None:
    """A setting must be a (whole) number, finite, within the rule's range."""
    whole, lo, hi, lo_open = rule
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise MedsegError(f"{name}: expected {'a whole number' if whole else 'a number'}, got "
                          f"{value!r}; {fix}")
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    if not math.isfinite(value) or too_low or (hi is not None and value > hi):
        bounds = f"{'above' if lo_open else 'at least'} {lo}" if lo is not None else ""
        bounds += (" and " if bounds and hi is not None else "") + (
            f"at most {hi}" if hi is not None else "")
        raise MedsegError(f"{name}: {value!r} is not a finite number {bounds}; {fix}")


def check_settings(settings, numbers: dict[str, Number], names: dict[str, tuple] | None = None,
                   flags: tuple[str, ...] = (), fix: str = RECIPE_FIX) -> None:
    """Every numeric field of a settings object within its rule (None: unset), every named
    choice among its names, every flag a bool: one check for the command line and the API."""
    for name, rule in numbers.items():
        if getattr(settings, name) is not None:
            check_number(name, getattr(settings, name), rule, fix)
    for name, valid in (names or {}).items():
        if getattr(settings, name) not in valid:
            raise MedsegError(f"{name} {getattr(settings, name)!r}: choose one of "
                              f"{', '.join(valid)}")
    for name in flags:
        if not isinstance(getattr(settings, name), bool):
            raise MedsegError(f"{name}: expected True or False, got "
                              f"{getattr(settings, name)!r}; {fix}")

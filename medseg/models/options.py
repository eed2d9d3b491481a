"""How a model runs (the engine options every adapter receives): device, sliding window,
precision, test-time augmentation, probabilities, the dense CRF, and which folds. What happens
around a model (clean-up, organs kept, files written) is medseg.inference.options' RunOptions.
Light to import, so the command line shows these defaults and ranges in --help."""

from __future__ import annotations

from dataclasses import dataclass, fields

from medseg.choices import MAX_OVERLAP, PRECISIONS, Number, check_device, check_settings
from medseg.errors import MedsegError

# Windows overlap by half: training validates with it too, so its Dice is what infer gives (at
# 0.25 a model 12 epochs into the real case scored aorta 0.01 on the working grid, at 0.5 0.69).
OVERLAP = 0.5
OPTION_FIX = "fix the option"


@dataclass(frozen=True)
class CRFSettings:
    """The dense CRF's parameters (medseg.models.crf). The CT defaults scored best on 2
    tuning phantoms kept apart from the benchmark's test cases (`benchmarks/crf.py --tune`,
    docs/models.md), short of its extremes: 5 HU, 10 iterations and weight 6.5 scored higher
    there, where noise is lower than in real scans."""

    iterations: int = 5
    smoothness_mm: float = 3.0  # width (standard deviation) of the smoothness kernel
    smoothness_weight: float = 0.0  # 1.0 scored 0.009 lower in the tuning
    appearance_mm: float = 10.0  # spatial width of the appearance kernel
    appearance_hu: float = 10.0  # intensity width of the appearance kernel
    appearance_weight: float = 5.0
    window: tuple[float, float] = (-200.0, 300.0)  # HU beyond are clipped (air, bone)


@dataclass(frozen=True)
class EngineOptions:
    """How to run a model; the model's own settings come from its files."""

    device: str = "auto"  # one of choices.DEVICES, or cuda:N
    overlap: float = OVERLAP
    sw_batch_size: int = 2
    precision: str = "auto"  # one of choices.PRECISIONS
    tta: bool = False
    save_probabilities: bool = False
    folds: str | None = None  # nnU-Net model folders: "0,1,2" or "all"; default every fold
    offline: bool = False  # fetch no model (MEDSEG_OFFLINE=1 too); one that is missing fails
    crf: bool = False  # refine with a dense CRF (the crf_* fields are its CRFSettings)
    crf_iterations: int = CRFSettings.iterations
    crf_smoothness_mm: float = CRFSettings.smoothness_mm
    crf_smoothness_weight: float = CRFSettings.smoothness_weight
    crf_appearance_mm: float = CRFSettings.appearance_mm
    crf_appearance_hu: float = CRFSettings.appearance_hu
    crf_appearance_weight: float = CRFSettings.appearance_weight

    def __post_init__(self):
        check_device(self.device)
        check_settings(self, ENGINE_NUMBERS, {"precision": PRECISIONS},
                       ("tta", "save_probabilities", "crf", "offline"), OPTION_FIX)
        if self.folds is not None and not isinstance(self.folds, str):
            raise MedsegError(f"folds: expected text like '0,1' or 'all', got {self.folds!r}")
        changed = [f.name for f in fields(CRFSettings) if hasattr(self, f"crf_{f.name}")
                   and getattr(self, f"crf_{f.name}") != getattr(CRFSettings, f.name)]
        if changed and not self.crf:
            shown = ", ".join("--crf-" + name.replace("_", "-") for name in changed)
            raise MedsegError(f"{shown} set without --crf; add --crf (crf=True in Python) to "
                              "refine with the CRF")

    @property
    def crf_settings(self) -> CRFSettings | None:
        """The CRF's settings, None without --crf."""
        if not self.crf:
            return None
        return CRFSettings(**{f.name: getattr(self, f"crf_{f.name}") for f in fields(CRFSettings)
                              if hasattr(self, f"crf_{f.name}")})


# The ranges of the numeric engine options: checked here for the API, and the command line's
# option types are made from them.
ENGINE_NUMBERS = {
    "overlap": Number(False, 0, MAX_OVERLAP),
    "sw_batch_size": Number(True, 1),
    "crf_iterations": Number(True, 0),
    "crf_smoothness_mm": Number(False, 0, None, True),
    "crf_smoothness_weight": Number(False, 0),
    "crf_appearance_mm": Number(False, 0, None, True),
    "crf_appearance_hu": Number(False, 0, None, True),
    "crf_appearance_weight": Number(False, 0),
}

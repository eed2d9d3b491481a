"""How inference runs: the options a user chooses (the model's own settings come from its
checkpoints). Light to import, so the command line shows these defaults in --help."""

from __future__ import annotations

from dataclasses import dataclass, fields

from medseg.choices import check_output_types
from medseg.errors import MedsegError

# Windows overlap by half: training validates with it too, so its Dice is what infer gives (at
# 0.25 a model 12 epochs into the real case scored aorta 0.01 on the working grid, at 0.5 0.69).
OVERLAP = 0.5


@dataclass(frozen=True)
class CRFSettings:
    """The dense CRF's parameters (medseg.inference.crf). The CT defaults scored best on 2
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


@dataclass
class InferOptions:
    """How to run inference; the model-specific settings come from the checkpoints."""

    device: str = "auto"  # one of choices.DEVICES, or cuda:N
    overlap: float = OVERLAP
    sw_batch_size: int = 2
    precision: str = "auto"  # one of choices.PRECISIONS
    tta: bool = False
    keep_largest: bool = False
    min_volume_mm3: float = 0.0
    save_probabilities: bool = False
    overwrite: bool = False
    folds: str | None = None  # nnU-Net model folders: "0,1,2" or "all"; default every fold
    roi_subset: str | None = None  # "liver,spleen": only these organs; default all
    output_types: tuple[str, ...] = ("nifti",)  # choices.OUTPUT_TYPES; the NIfTI mask always
    statistics: bool = False  # CASE.stats.json per scan and statistics.csv per folder
    preview: bool = False  # CASE.preview.png per scan and index.html per folder
    crf: bool = False  # refine with a dense CRF (the crf_* fields are its CRFSettings)
    crf_iterations: int = CRFSettings.iterations
    crf_smoothness_mm: float = CRFSettings.smoothness_mm
    crf_smoothness_weight: float = CRFSettings.smoothness_weight
    crf_appearance_mm: float = CRFSettings.appearance_mm
    crf_appearance_hu: float = CRFSettings.appearance_hu
    crf_appearance_weight: float = CRFSettings.appearance_weight

    def __post_init__(self):
        self.output_types = check_output_types(self.output_types)
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

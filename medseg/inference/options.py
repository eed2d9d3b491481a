"""What a user chooses for `medseg infer`, split by who reads it: EngineOptions go to the
model (medseg.models.options), RunOptions to what happens around it (the organs kept, the
clean-up, the files written, reruns). Light to import, so the command line shows these
defaults in --help; each range is checked here, for the command line and the API alike."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from medseg.choices import Number, check_output_types, check_settings
from medseg.errors import MedsegError
from medseg.models.options import OPTION_FIX, EngineOptions


def parse_subset(text: str | None) -> list[str] | None:
    """'liver, spleen' -> ['liver', 'spleen']; None -> None (every organ)."""
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


@dataclass(frozen=True)
class RunOptions:
    """What happens around the model: organs kept, clean-up, outputs, reruns."""

    overwrite: bool = False
    roi_subset: str | None = None  # "liver,spleen": only these organs; default all
    keep_largest: bool = False
    min_volume_mm3: float = 0.0
    output_types: tuple[str, ...] = ("nifti",)  # choices.OUTPUT_TYPES; the NIfTI mask always
    statistics: bool = False  # CASE.stats.json per scan and statistics.csv per folder
    preview: bool = False  # CASE.preview.png per scan and index.html per folder

    def __post_init__(self):
        object.__setattr__(self, "output_types", check_output_types(self.output_types))
        check_settings(self, RUN_NUMBERS, flags=("overwrite", "keep_largest", "statistics",
                                                 "preview"), fix=OPTION_FIX)
        if self.roi_subset is not None and not isinstance(self.roi_subset, str):
            raise MedsegError(f"roi_subset: expected organ names like 'liver,spleen', got "
                              f"{self.roi_subset!r}")
        if self.roi_subset is not None and not parse_subset(self.roi_subset):
            raise MedsegError("--roi-subset: no organ named; give names like liver,spleen, or "
                              "drop the option for every organ")

    @property
    def organs(self) -> list[str] | None:
        """The organ names --roi-subset keeps; None for every organ."""
        return parse_subset(self.roi_subset)


RUN_NUMBERS = {"min_volume_mm3": Number(False, 0)}


@dataclass(frozen=True)
class InferOptions:
    """Everything `medseg infer` takes, in its two parts."""

    engine: EngineOptions = field(default_factory=EngineOptions)
    run: RunOptions = field(default_factory=RunOptions)

    @classmethod
    def from_keywords(cls, **given) -> InferOptions:
        """From the flat keywords the command line and Segmenter take (overlap=..., tta=...),
        naming the valid ones when one is mistyped."""
        engine, run = option_names(EngineOptions), option_names(RunOptions)
        unknown = sorted(set(given) - set(engine) - set(run))
        if unknown:
            raise MedsegError(f"unknown option {', '.join(unknown)}; valid: "
                              f"{', '.join(engine + run)}")
        return cls(EngineOptions(**{k: v for k, v in given.items() if k in engine}),
                   RunOptions(**{k: v for k, v in given.items() if k in run}))


def option_names(options_class) -> list[str]:
    return [f.name for f in fields(options_class)]

"""How inference runs: the options a user chooses (the model's own settings come from its
checkpoints). Light to import, so the command line shows these defaults in --help."""

from __future__ import annotations

from dataclasses import dataclass

# Windows overlap by half: training validates with it too, so its Dice is what infer gives (at
# 0.25 a model 12 epochs into the real case scored aorta 0.01 on the working grid, at 0.5 0.69).
OVERLAP = 0.5


@dataclass
class InferOptions:
    """How to run inference; the model-specific settings come from the checkpoints."""

    device: str = "auto"  # one of choices.DEVICES
    overlap: float = OVERLAP
    sw_batch_size: int = 2
    precision: str = "auto"  # one of choices.PRECISIONS
    tta: bool = False
    keep_largest: bool = False
    min_volume_mm3: float = 0.0
    save_probabilities: bool = False
    overwrite: bool = False
    folds: str | None = None  # nnU-Net model folders: "0,1,2" or "all"; default every fold
    roi_subset: str | None = None  # TotalSegmentator tasks: "liver,spleen"; default all

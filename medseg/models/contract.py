"""The contract every kind of model offers (one adapter per kind, chosen by open_model), as
MONAI's Inferer is a contract for inferers. tests/test_model_contract.py runs it over every
kind, as tests/test_models.py runs the network contract over every network."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from medseg.models.options import EngineOptions

# Masks record "medseg model <id>" in their header (medseg.inference.pipeline composes it), so
# a rerun skips only masks this very model finished, and a file without it is not medseg's.
MODEL_ID_PREFIX = "medseg model "

# Per organ id: (keep only its largest component?, drop components under how many mm3).
CleanupRules = dict[int, tuple[bool, float]]


@runtime_checkable
class Predictor(Protocol):
    """A loaded model, ready to segment scans."""

    labels: dict[int, str]  # mask value -> organ name, background (0) included
    model_id: str  # names the model's files (a digest): equal ids, equal masks
    spacing: tuple[float, float, float]  # working spacing in mm, in the scan's x, y, z order
    spatial_dims: int  # 3: a scan needs at least two slices; 2: slice by slice
    options: EngineOptions  # what it runs with
    cleanup: CleanupRules  # the model's own per-organ clean-up ({} for none)

    def predict(self, scan: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """A uint8 mask on exactly the scan's grid (the scan: channel-first, HU, with its
        affine), and uint8 class probabilities (C, X, Y, Z), x 255, when
        options.save_probabilities asks for them (None otherwise, or where the model has
        none)."""
        ...

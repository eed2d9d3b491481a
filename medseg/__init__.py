"""medseg: multi-organ segmentation of abdominal CT.

The Python API (docs/api.md): Segmenter, segment, infer, plan, train, crossval, evaluate,
convert, with TrainConfig and InferOptions for their settings. The subpackages follow the data
flow: data (reading, checking, transforms), nets (networks and their registry), training,
inference, evaluation (docs/architecture.md).
"""

from __future__ import annotations

import importlib

from medseg.version import __version__

# The API, loaded on first use: importing any medseg module (the command line's light ones
# included) runs this file, and the API pulls in torch and MONAI.
_EXPORTS = {
    **{name: "medseg.api" for name in ("Segmentation", "Segmenter", "convert", "crossval",
                                       "evaluate", "infer", "plan", "segment", "train")},
    "InferOptions": "medseg.inference.options",
    "EngineOptions": "medseg.inference.options",
    "RunOptions": "medseg.inference.options",
    "TrainConfig": "medseg.training.config",
}
__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'medseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

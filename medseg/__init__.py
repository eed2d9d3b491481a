"""medseg: multi-organ segmentation of abdominal CT.

The Python API (docs/api.md): Segmenter, segment, infer, plan, train, crossval, evaluate,
convert, with TrainConfig and InferOptions for their settings. The subpackages follow the data
flow: data (reading, checking, transforms), nets (networks and their registry), training,
inference, evaluation (docs/architecture.md).
"""

__version__ = "0.2.0"

from medseg.api import (  # noqa: E402
    Segmentation,
    Segmenter,
    convert,
    crossval,
    evaluate,
    infer,
    plan,
    segment,
    train,
)
from medseg.inference.options import InferOptions  # noqa: E402
from medseg.training.config import TrainConfig  # noqa: E402

__all__ = ["InferOptions", "Segmentation", "Segmenter", "TrainConfig", "convert", "crossval",
           "evaluate", "infer", "plan", "segment", "train", "__version__"]

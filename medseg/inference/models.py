"""Which predictor a `--model` names: medseg's own checkpoints, a cross-validation folder
(its folds ensembled, its postprocessing applied), an nnU-Net v2 trained-model folder, or a
TotalSegmentator task."""

from __future__ import annotations

from pathlib import Path

from medseg.errors import MedsegError
from medseg.inference.crossval_folder import (
    POSTPROCESSING_FILE,
    crossval_checkpoints,
    is_crossval_folder,
)
from medseg.inference.options import InferOptions
from medseg.inference.roi import SubsetPredictor, parse_subset


def model_kind(model) -> str:
    """'totalsegmentator', 'nnunet' or 'medseg': what a --model value names."""
    from medseg.inference.nnunet_folder import is_nnunet_folder
    from medseg.inference.totalseg import is_totalseg

    if is_totalseg(str(model)):
        return "totalsegmentator"
    path = Path(model)
    if path.suffix == ".pth" and (path.parent.parent / "plans.json").exists():
        raise MedsegError(f"{model}: one fold of an nnU-Net model; pass the model folder "
                          f"{path.parent.parent} (with --folds {path.parent.name[5:]} for this "
                          "fold alone)")
    return "nnunet" if is_nnunet_folder(path) else "medseg"


def load_predictor(models, options: InferOptions | None = None):
    """A loaded predictor for `models` (a path, a list of paths, or 'totalsegmentator:TASK')."""
    options = options or InferOptions()
    given = [models] if isinstance(models, (str, Path)) else list(models)
    kinds = [model_kind(m) for m in given]
    kind = kinds[0]
    if len(given) > 1 and set(kinds) != {"medseg"}:
        foreign = next(m for m, k in zip(given, kinds) if k != "medseg")
        raise MedsegError(f"{foreign}: an nnU-Net or TotalSegmentator model runs alone; give "
                          "one --model (nnU-Net folds: --folds)")
    if options.folds is not None and kind != "nnunet":
        raise MedsegError("--folds applies to nnU-Net model folders; for medseg models give "
                          "one --model per run folder")
    roi = parse_subset(options.roi_subset)
    if kind == "totalsegmentator":
        from medseg.inference.totalseg import TotalSegmentatorPredictor

        # Runs only the parts that hold the subset's organs.
        return TotalSegmentatorPredictor(str(given[0]), options, roi)
    if kind == "nnunet":
        from medseg.inference.nnunet_predictor import NNUNetPredictor

        predictor = NNUNetPredictor(Path(given[0]), options, options.folds)
    elif len(given) == 1 and is_crossval_folder(Path(given[0])):
        from medseg.inference.predictor import Predictor

        folder = Path(given[0])
        predictor = Predictor(crossval_checkpoints(folder), options,
                              postprocessing=folder / POSTPROCESSING_FILE)
    else:
        from medseg.inference.predictor import Predictor

        predictor = Predictor(given, options)
    return predictor if roi is None else SubsetPredictor(predictor, roi, str(given[0]))

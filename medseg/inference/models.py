"""Which predictor a `--model` names: medseg's own checkpoints, an nnU-Net v2 trained-model
folder, or a TotalSegmentator task."""

from __future__ import annotations

from pathlib import Path

from medseg.errors import MedsegError
from medseg.inference.options import InferOptions


def load_predictor(models, options: InferOptions | None = None):
    """A loaded predictor for `models` (a path, a list of paths, or 'totalsegmentator:TASK')."""
    from medseg.inference.nnunet_folder import is_nnunet_folder
    from medseg.inference.totalseg import is_totalseg

    options = options or InferOptions()
    given = [models] if isinstance(models, (str, Path)) else list(models)
    for model in given:
        folder = Path(model).parent.parent
        if Path(model).suffix == ".pth" and (folder / "plans.json").exists():
            raise MedsegError(f"{model}: one fold of an nnU-Net model; pass the model folder "
                              f"{folder} (with --folds {Path(model).parent.name[5:]} for this "
                              "fold alone)")
    foreign = [m for m in given if is_totalseg(str(m)) or is_nnunet_folder(Path(m))]
    if foreign and len(given) > 1:
        raise MedsegError(f"{foreign[0]}: an nnU-Net or TotalSegmentator model runs alone; "
                          "give one --model (nnU-Net folds: --folds)")
    if options.roi_subset and not (foreign and is_totalseg(str(given[0]))):
        raise MedsegError("--roi-subset applies to TotalSegmentator tasks "
                          "(--model totalsegmentator:TASK)")
    if foreign and is_totalseg(str(given[0])):
        from medseg.inference.totalseg import TotalSegmentatorPredictor

        roi = [r.strip() for r in options.roi_subset.split(",")] if options.roi_subset else None
        return TotalSegmentatorPredictor(str(given[0]), options, roi)
    if foreign:
        from medseg.inference.nnunet_predictor import NNUNetPredictor

        return NNUNetPredictor(Path(given[0]), options, options.folds)
    if options.folds is not None:
        raise MedsegError("--folds applies to nnU-Net model folders; for medseg models give "
                          "one --model per run folder")
    from medseg.inference.predictor import Predictor

    return Predictor(given, options)

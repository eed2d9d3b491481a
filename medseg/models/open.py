"""The one place that decides which kind of model a reference names, and opens it: medseg's
own runs and checkpoints (several: an ensemble), a cross-validation folder, an nnU-Net v2
trained-model folder, a MONAI bundle folder, or a TotalSegmentator task. `medseg infer`, the
Python API and `medseg train --init-from` all ask here. A new kind is one adapter module and
one entry in KINDS."""

from __future__ import annotations

from pathlib import Path

from medseg.errors import MedsegError
from medseg.models.options import EngineOptions

# kind -> what it is, for messages. The order is the order model_kind tries them in.
KINDS = {
    "totalsegmentator": "a TotalSegmentator task (totalsegmentator:TASK)",
    "nnunet": "an nnU-Net v2 model folder",
    "crossval": "a medseg cross-validation folder",
    "bundle": "a MONAI bundle (its folder, or monai:NAME from the Model Zoo)",
    "medseg": "a medseg run folder or checkpoint",
}


def model_kind(ref) -> str:
    """Which of KINDS a model reference names (a path, or 'totalsegmentator:TASK')."""
    from medseg.models.bundle import is_bundle
    from medseg.models.crossval_folder import is_crossval_folder
    from medseg.models.nnunet.folder import is_nnunet_folder
    from medseg.models.totalseg import is_totalseg
    from medseg.models.zoo import is_zoo_name

    if is_totalseg(str(ref)):
        return "totalsegmentator"
    if is_zoo_name(str(ref)):
        return "bundle"
    path = Path(ref)
    if path.suffix == ".pth" and (path.parent.parent / "plans.json").exists():
        raise MedsegError(f"{ref}: one fold of an nnU-Net model; pass the model folder "
                          f"{path.parent.parent} (with --folds {path.parent.name[5:]} for this "
                          "fold alone)")
    if is_nnunet_folder(path):
        return "nnunet"
    if is_bundle(path):
        return "bundle"
    return "crossval" if is_crossval_folder(path) else "medseg"


def choose_device(options: EngineOptions):
    """The torch device the options name (this rank's GPU under torchrun), checked once."""
    from medseg.distributed import local_device
    from medseg.runtime import resolve_device

    return resolve_device(local_device(options.device))


def open_model(refs, options: EngineOptions | None = None, organs: list[str] | None = None):
    """A loaded Predictor for `refs`: one reference, or several medseg models to ensemble.
    `organs` (--roi-subset) lets a model skip work no kept organ needs (TotalSegmentator runs
    only the parts that have them); the pipeline keeps only those organs either way."""
    options = options or EngineOptions()
    given = [refs] if isinstance(refs, (str, Path)) else list(refs)
    kinds = [model_kind(m) for m in given]
    if len(given) > 1 and set(kinds) != {"medseg"}:
        foreign, kind = next((m, k) for m, k in zip(given, kinds) if k != "medseg")
        why = ("a cross-validation folder runs alone (its folds are an ensemble already)"
               if kind == "crossval" else "a MONAI bundle runs alone" if kind == "bundle"
               else "an nnU-Net or TotalSegmentator model runs alone")
        raise MedsegError(f"{foreign}: {why}; give one --model (nnU-Net folds: --folds)")
    if options.folds is not None and kinds[0] != "nnunet":
        raise MedsegError("--folds applies to nnU-Net model folders; for medseg models give "
                          "one --model per run folder")
    device = choose_device(options)
    if kinds[0] == "totalsegmentator":
        from medseg.models.totalseg import TotalSegmentatorPredictor

        return TotalSegmentatorPredictor(str(given[0]), options, device, organs)
    if kinds[0] == "nnunet":
        from medseg.models.nnunet.predictor import NNUNetPredictor

        return NNUNetPredictor(Path(given[0]), options, device)
    if kinds[0] == "bundle":
        from medseg.models.bundle import open_bundle
        from medseg.models.zoo import is_zoo_name, zoo_folder

        ref = str(given[0])
        folder = zoo_folder(ref, options.offline) if is_zoo_name(ref) else Path(ref)
        return open_bundle(folder, options, device)
    if kinds[0] == "crossval":
        from medseg.models.crossval_folder import open_crossval_folder

        return open_crossval_folder(Path(given[0]), options, device)
    from medseg.models.medseg_run import MedsegPredictor

    return MedsegPredictor(given, options, device)

"""Self-describing checkpoints that load without executing code (weights_only=True)."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from medseg.data.files import atomic_output
from medseg.errors import MedsegError, first_line
from medseg.version import __version__

FORMAT = 1
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
CHECKPOINT_NAMES = ("best.pt", "last.pt")
# What inference reads from a checkpoint's config (medseg.models.medseg_run).
INFERENCE_KEYS = ("labels", "spacing", "model", "patch_size", "intensity")


def save_checkpoint(path: Path, model: torch.nn.Module, config: dict, **extra) -> None:
    """Write weights plus everything inference needs (plain JSON-like types only), atomically."""
    payload = {
        "format": FORMAT,
        "medseg_version": __version__,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    # Through a Python file, so a full disk raises OSError(ENOSPC) rather than torch's opaque
    # "unexpected pos" error; atomic_output turns that into a clear message.
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or the best (else last) one inside a run folder."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_dir():
                raise MedsegError(f"{path / name}: a folder where the checkpoint file should be; "
                                  "pass a run folder of `medseg train`, or the checkpoint file")
            if (path / name).exists():
                return path / name
        raise MedsegError(f"{path}: no checkpoint ({' or '.join(CHECKPOINT_NAMES)}) in this "
                          "folder; pass the run folder that `medseg train` wrote")
    if not path.exists():
        raise MedsegError(f"{path}: checkpoint not found; pass a run folder of `medseg train` "
                          "or its best.pt")
    return path


def load_checkpoint(path: Path, needs: tuple[str, ...] = ()) -> dict:
    """Load a checkpoint safely: tensors and plain data only; pickled code is refused.

    `needs`: config keys the caller reads; a checkpoint without one of them is refused by name.
    """
    path = resolve_checkpoint(path)
    payload = safe_torch_load(path, advice="pass a run folder of `medseg train` or its best.pt",
                              whose="`medseg train`",
                              damaged="copy it again, or use the run's other checkpoint")
    _check_format(payload, path)
    config = payload["config"]
    missing = [k for k in needs if k not in config]
    if missing:
        raise MedsegError(f"{path}: the checkpoint's config lacks {', '.join(missing)}; use "
                          "best.pt or last.pt of a `medseg train` run")
    if "model" in needs:
        from medseg.nets.registry import known_network

        name = config["model"].get("name") if isinstance(config["model"], dict) else None
        if not known_network(name):
            raise MedsegError(f"{path}: written by {_writer(payload)} for model {name!r}, which "
                              f"medseg {__version__} does not have; upgrade medseg to the "
                              "version that wrote it")
    return payload


def safe_torch_load(path: Path, advice: str, whose: str, allowed: tuple = (),
                    damaged: str = "copy it again"):
    """torch.load with weights_only=True: tensors, plain data and the `allowed` classes only.

    Anything else in the pickle (a class to build, a function to call: code that loading would
    run) is refused by name before it runs. `advice` says what to pass instead; `whose` names
    the tool whose checkpoints are expected, `damaged` what to do with a broken file.
    """
    with open(path, "rb") as f:
        is_zip = f.read(4) == ZIP_MAGIC
    if not is_zip:
        raise MedsegError(f"{path}: not a checkpoint (torch.save writes zip archives, this is "
                          f"another kind of file); {advice}")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message suggests loading with weights_only=False: exactly what not to do.
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:
            raise MedsegError(f"{path}: not a {whose} checkpoint (torch cannot read it as saved "
                              f"tensors); {advice}") from None
        raise MedsegError(f"{path}: refused, it holds pickled code ({found.group(1)}) that "
                          f"loading would run; use only checkpoints written by {whose}"
                          ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:
        raise MedsegError(f"{path}: not a readable checkpoint ({first_line(exc)}); it is "
                          f"truncated or damaged: {damaged}") from None


def _writer(payload: dict) -> str:
    """'medseg 0.3.0', or 'an unknown medseg version' for checkpoints that do not say."""
    version = payload.get("medseg_version")
    return f"medseg {version}" if version else "an unknown medseg version"


def _check_format(payload, path: Path) -> None:
    """A medseg checkpoint of the format this version reads, else say whose file it is."""
    if not isinstance(payload, dict) or "format" not in payload:
        raise MedsegError(f"{path}: not a medseg checkpoint (no 'format'; a MONAI bundle's or "
                          "a bare state dict cannot be used, an nnU-Net model is passed as its "
                          "whole trained-model folder); pass a run folder of `medseg train`")
    if payload["format"] != FORMAT:
        raise MedsegError(f"{path}: written by {_writer(payload)} (checkpoint format "
                          f"{payload['format']}), but this is medseg {__version__}, which reads "
                          f"format {FORMAT}; use the medseg version that wrote it, or retrain")
    missing = [k for k in ("config", "state_dict") if not isinstance(payload.get(k), dict)]
    if missing:
        raise MedsegError(f"{path}: a damaged medseg checkpoint (no {' or '.join(missing)}); "
                          "use the run's other checkpoint, or retrain")


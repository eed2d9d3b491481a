"""Self-describing checkpoints that load without executing code (weights_only=True)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from medseg import __version__
from medseg.errors import MedsegError
from medseg.io import atomic_output

FORMAT = 1
CHECKPOINT_NAMES = ("best.pt", "last.pt")


def save_checkpoint(path: Path, model: torch.nn.Module, config: dict, **extra) -> None:
    """Write weights plus everything inference needs (plain JSON-like types only), atomically."""
    payload = {
        "format": FORMAT,
        "medseg_version": __version__,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or the best (else last) one inside a run folder."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).exists():
                return path / name
        raise MedsegError(f"{path}: no checkpoint ({' or '.join(CHECKPOINT_NAMES)}) in this folder")
    if not path.exists():
        raise MedsegError(f"{path}: checkpoint not found")
    return path


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely: tensors and plain data only; pickled code is refused."""
    path = resolve_checkpoint(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MedsegError(f"{path}: refused, it holds more than weights ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise MedsegError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MedsegError(f"{path}: not a medseg checkpoint (format {FORMAT} expected)")
    return payload

"""medseg's own models (a run folder, a checkpoint, or several as an ensemble): scan -> working
frame and spacing -> Gaussian-weighted sliding window -> back onto the scan's grid."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import Compose

from medseg.data.files import sha256_of
from medseg.data.network_input import NetworkInput
from medseg.errors import MedsegError, first_line
from medseg.models.contract import CleanupRules
from medseg.models.crf import refine
from medseg.models.options import EngineOptions
from medseg.models.resample import resample_to_grid
from medseg.nets.checkpoint import INFERENCE_KEYS, load_checkpoint, resolve_checkpoint
from medseg.nets.registry import build_network, volume_network
from medseg.runtime import autocast

log = logging.getLogger("medseg")

# Mirroring TTA flips anterior-posterior and superior-inferior only: a left-right flip turns the
# right kidney into a left one, so averaging it in would blur the two labels together.
TTA_AXES = (1, 2)


@dataclass
class _Member:
    """One network of an ensemble and the input it expects."""

    network: torch.nn.Module
    spec: NetworkInput


def files_digest(paths: list[Path]) -> str:
    """The files' contents, digested: what a model id names."""
    return sha256_of(*paths)[:16]


class MedsegPredictor:
    """One or more of medseg's trained models (an ensemble averages their probabilities).

    `MedsegPredictor(checkpoints, options, device)` loads them (medseg.models.open does, for
    `medseg infer`); `MedsegPredictor.for_network` wraps a network in memory, which is how
    training validates: through this very code.
    """

    def __init__(self, checkpoints, options: EngineOptions, device: torch.device,
                 cleanup_file: Path | None = None):
        self.options, self.device = options, device
        paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
        configs = [load_checkpoint(p, needs=INFERENCE_KEYS) | {"path": p} for p in paths]
        self.labels = {int(k): v for k, v in configs[0]["config"]["labels"].items()}
        self.spec = NetworkInput.from_config(configs[0]["config"])
        # A cross-validation's per-organ choices are set by its adapter (crossval_folder); the
        # id covers the file they come from.
        self.cleanup: CleanupRules = {}
        self.model_id = files_digest([resolve_checkpoint(p) for p in paths]
                                     + ([Path(cleanup_file)] if cleanup_file else []))
        self.members = [self._load_member(c) for c in configs]
        # 3 if any member sees volumes: then a single-slice scan cannot be segmented.
        self.spatial_dims = max(m.spec.spatial_dims for m in self.members)

    @classmethod
    def for_network(cls, network: torch.nn.Module, spec: NetworkInput, labels: dict[int, str],
                    options: EngineOptions, device: torch.device) -> MedsegPredictor:
        """A predictor over a network already built and placed on `device`."""
        self = cls.__new__(cls)
        self.options, self.device = options, device
        self.labels, self.spec, self.spatial_dims = dict(labels), spec, spec.spatial_dims
        self.model_id, self.cleanup = "in-memory", {}
        wrapped = volume_network(network, spec.spatial_dims, spec.context_slices,
                                 spec.end_slice_padding)
        self.members = [_Member(wrapped, spec)]
        return self

    @property
    def spacing(self) -> tuple[float, ...]:
        """The working spacing every member shares."""
        return self.spec.spacing

    def _load_member(self, payload: dict) -> _Member:
        config, path = payload["config"], payload["path"]
        if {int(k): v for k, v in config["labels"].items()} != self.labels:
            raise MedsegError(f"{path}: its label map differs from the first checkpoint's")
        spec = NetworkInput.from_config(config)
        if spec.orientation != self.spec.orientation:
            raise MedsegError(f"{path}: works in {spec.orientation}, the first checkpoint in "
                              f"{self.spec.orientation}; ensembles share one grid")
        if spec.spacing != self.spec.spacing:
            raise MedsegError(f"{path}: spacing {list(spec.spacing)} differs from the first "
                              f"checkpoint's {list(self.spacing)}; ensembles share one grid")
        settings = config["model"]
        net = build_network(settings["name"], settings["in_channels"], len(self.labels),
                          spatial_dims=spec.spatial_dims, **settings["kwargs"])
        try:
            net.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise MedsegError(f"{path}: weights do not fit the model they claim "
                              f"({first_line(exc)}); use the checkpoint its own run wrote, or "
                              "retrain") from None
        # 2D models see windows that span all slices, so each slice gets its true neighbours.
        wrapped = volume_network(net, spec.spatial_dims, spec.context_slices,
                                 spec.end_slice_padding)
        return _Member(wrapped.to(self.device).eval(), spec)

    @property
    def network(self) -> torch.nn.Module:
        """The first member's network (the only one for a single checkpoint)."""
        return self.members[0].network

    @network.setter
    def network(self, network: torch.nn.Module) -> None:
        self.members[0].network = network

    def resample_to_working_grid(self, scan: torch.Tensor) -> torch.Tensor:
        """Reorient to the working frame and resample to its spacing, exactly as training does."""
        return Compose(self.spec.working_grid())({"image": scan})["image"]

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Mean softmax over ensemble members and TTA flips, (C, X, Y, Z) on the stitch device."""
        total, count = None, 0
        for member in self.members:
            normalized = member.spec.normalize()({"image": image})["image"]
            batch = normalized.as_subclass(torch.Tensor)[None].to(self.device)
            for flips in self._flip_sets():
                flipped = batch.flip(flips) if flips else batch
                logits = self._sliding_window(flipped, member)
                probs = torch.softmax(logits.float(), dim=1)
                probs = probs.flip(flips) if flips else probs
                total = probs if total is None else total + probs.to(total.device)
                count += 1
        return total[0] / count

    def _flip_sets(self) -> list[tuple[int, ...]]:
        """Tensor dims to flip for each TTA pass (none without --tta)."""
        if not self.options.tta:
            return [()]
        axes = [2 + a for a in TTA_AXES]  # skip batch and channel dims
        return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]

    def _sliding_window(self, batch: torch.Tensor, member: _Member) -> torch.Tensor:
        """Gaussian-weighted sliding window; stitches on the device, on the CPU if that is full."""
        def run(stitch_device):
            with torch.inference_mode(), autocast(self.device, self.options.precision):
                # Scans smaller than a window are padded as training padded them.
                return sliding_window_inference(
                    batch, member.spec.window, self.options.sw_batch_size, member.network,
                    overlap=self.options.overlap, mode="gaussian", padding_mode="constant",
                    cval=member.spec.pad_value, sw_device=self.device, device=stitch_device)

        try:
            return run(self.device)
        except torch.OutOfMemoryError:
            if self.device.type == "cpu":
                raise
            log.warning("the volume does not fit on %s; stitching on the CPU", self.device)
            torch.cuda.empty_cache()
            return run(torch.device("cpu"))

    def predict(self, scan: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """A uint8 organ mask on exactly the scan's grid, and uint8 probabilities if asked."""
        image = self.resample_to_working_grid(scan)
        probs = self.probabilities(image)
        if self.options.crf:
            probs = refine(probs, image[0].as_subclass(torch.Tensor).to(probs.device),
                           self.spacing, self.options.crf_settings)
        return resample_to_grid(
            probs, np.asarray(image.affine), np.asarray(scan.affine), tuple(scan.shape[1:]),
            keep_probabilities=self.options.save_probabilities)

"""Inference: scan -> RAS + working spacing -> sliding window -> back onto the scan's own grid."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.transforms import Orientation, Spacing
from tqdm import tqdm

from medseg.checkpoint import load_checkpoint
from medseg.errors import MedsegError, find_medseg_error
from medseg.io import case_name, list_scans, load_scan, save_nifti
from medseg.models import build_model, volume_model, window_size
from medseg.runtime import autocast, resolve_device
from medseg.transforms import normalize_transform


class Predictor:
    """A trained model plus the preprocessing its checkpoint describes."""

    def __init__(self, checkpoint: Path, device: str = "auto", overlap: float = 0.5,
                 sw_batch_size: int = 2):
        payload = load_checkpoint(checkpoint)
        config = payload["config"]
        self.labels = {int(k): v for k, v in config["labels"].items()}
        self.spacing = tuple(config["spacing"])
        self.patch_size = tuple(config["patch_size"])
        self.intensity = config["intensity"]
        self.device = resolve_device(device)
        self.overlap, self.sw_batch_size = overlap, sw_batch_size
        settings = config["model"]
        dims = settings.get("spatial_dims", 3)  # medseg 0.1 checkpoints: 3D, no such keys
        self.window = window_size(self.patch_size, dims)
        net = build_model(settings["name"], settings["in_channels"], len(self.labels),
                          spatial_dims=dims, **settings["kwargs"])
        try:
            net.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise MedsegError(
                f"{checkpoint}: weights do not fit the model they claim ({first})") from None
        self.model = volume_model(net, dims, settings.get("context_slices", 0))
        self.model.to(self.device).eval()

    def preprocess(self, scan: torch.Tensor) -> torch.Tensor:
        """Reorient to RAS, resample to the training spacing and normalise, as in training."""
        image = Orientation(axcodes="RAS", labels=None)(scan)
        image = Spacing(pixdim=self.spacing, mode="bilinear", dtype=np.float32)(image)
        return normalize_transform(self.intensity)({"image": image})["image"]

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Softmax of the Gaussian-weighted sliding-window prediction, (C, X, Y, Z) on device.

        2D models see windows that span all slices, so each slice gets its true neighbours.
        """
        batch = image.as_tensor()[None].to(self.device)
        with torch.no_grad(), autocast(self.device):
            logits = sliding_window_inference(batch, self.window, self.sw_batch_size,
                                              self.model, overlap=self.overlap, mode="gaussian")
        return torch.softmax(logits[0].float(), dim=0)

    def predict(self, scan: torch.Tensor) -> np.ndarray:
        """A uint8 organ mask on exactly the scan's grid (shape and affine)."""
        image = self.preprocess(scan)
        probs = self.probabilities(image)
        return resample_labels(probs, np.asarray(image.affine), np.asarray(scan.affine),
                               tuple(scan.shape[1:]))


def resample_labels(probs: torch.Tensor, src_affine: np.ndarray, dst_affine: np.ndarray,
                    dst_shape: tuple[int, int, int], max_chunk_bytes: int = 256 << 20
                    ) -> np.ndarray:
    """Trilinearly resample class probabilities onto another grid and take the argmax, in slabs.

    Works for any pair of affines (flips, permutations, oblique), because each output voxel's
    position in the source grid comes from the affines themselves. Slab by slab along the first
    axis, so memory stays bounded whatever the output size, and only uint8 labels are kept.
    """
    num_classes, src_shape = probs.shape[0], probs.shape[1:]
    dst_to_src = torch.as_tensor(np.linalg.inv(src_affine) @ dst_affine, dtype=torch.float32,
                                 device=probs.device)
    # grid_sample with align_corners=True maps -1 and 1 to the first and last voxel centres.
    extent = torch.tensor([max(s - 1, 1) for s in src_shape], dtype=torch.float32,
                          device=probs.device)
    j = torch.arange(dst_shape[1], dtype=torch.float32, device=probs.device)
    k = torch.arange(dst_shape[2], dtype=torch.float32, device=probs.device)
    jk = dst_to_src[:3, 1] * j[:, None, None] + dst_to_src[:3, 2] * k[None, :, None]
    voxel_bytes = (num_classes + 3) * 4
    slab = max(1, max_chunk_bytes // (voxel_bytes * dst_shape[1] * dst_shape[2]))
    out = np.empty(dst_shape, dtype=np.uint8)
    for i0 in range(0, dst_shape[0], slab):
        i = torch.arange(i0, min(i0 + slab, dst_shape[0]), dtype=torch.float32,
                         device=probs.device)
        src = dst_to_src[:3, 0] * i[:, None, None, None] + jk[None] + dst_to_src[:3, 3]
        grid = (2.0 * src / extent - 1.0).flip(-1)  # grid_sample wants (z, y, x) order last
        sampled = F.grid_sample(probs[None], grid[None], mode="bilinear",
                                padding_mode="border", align_corners=True)
        out[i0:i0 + len(i)] = sampled[0].argmax(0).to(torch.uint8).cpu().numpy()
    return out


@dataclass
class CaseResult:
    """What happened to one input scan."""

    source: Path
    output: Path
    status: str  # "done", "skipped" or "failed"
    seconds: float = 0.0
    error: str = ""


def output_path(scan: Path, out_dir: Path) -> Path:
    """Where a scan's mask goes: the case name with .nii.gz, in out_dir."""
    return Path(out_dir) / f"{case_name(scan)}.nii.gz"


def infer_cases(checkpoint: Path, inputs: Path, out_dir: Path, device: str = "auto",
                overwrite: bool = False, overlap: float = 0.5) -> list[CaseResult]:
    """Segment every scan under `inputs` into out_dir; a failing case does not stop the rest."""
    scans = list_scans(Path(inputs))
    predictor = Predictor(checkpoint, device=device, overlap=overlap)
    results = []
    progress = tqdm(scans, desc="infer", unit="case")
    for scan_path in progress:
        target = output_path(scan_path, out_dir)
        if target.exists() and not overwrite:
            results.append(CaseResult(scan_path, target, "skipped"))
            continue
        start = time.perf_counter()
        try:
            scan = load_scan(scan_path)
            mask = predictor.predict(scan)
            save_nifti(mask, np.asarray(scan.affine), target, like=scan_path)
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop a batch
            error = find_medseg_error(exc)
            if error is None and not isinstance(exc, (ValueError, RuntimeError)):
                raise
            results.append(CaseResult(scan_path, target, "failed", error=str(error or exc)))
            progress.write(f"failed: {error or exc}")
            continue
        seconds = time.perf_counter() - start
        progress.set_postfix_str(f"{case_name(scan_path)} {seconds:.1f}s")
        results.append(CaseResult(scan_path, target, "done", seconds))
    return results

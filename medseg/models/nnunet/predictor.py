"""Run an nnU-Net v2 model the way nnU-Net does, with medseg's engine around it. The steps are
split as nnunetv2/inference splits them: the folder (folder.py), preprocessing
(preprocessing.py), the sliding window (windows.py), and the way back onto the scan
(export.py); this adapter runs them in order (docs/nnunet.md)."""

from __future__ import annotations

import numpy as np
import torch

from medseg.data.geometry import voxel_spacing
from medseg.errors import MedsegError
from medseg.models.crf import EPS as CRF_EPS
from medseg.models.crf import refine, softmax_
from medseg.models.nnunet.export import back_to_crop, uncropped
from medseg.models.nnunet.folder import NNUNetModel, read_model_folder
from medseg.models.nnunet.preprocessing import (
    network_axes,
    new_shape,
    nonzero_box,
    normalize,
    resample_image,
)
from medseg.models.nnunet.windows import sliding_window_logits
from medseg.models.options import EngineOptions


class NNUNetPredictor:
    """An nnU-Net v2 model folder behind the Predictor contract (medseg.models.contract)."""

    spatial_dims = 3

    def __init__(self, model: NNUNetModel | str, options: EngineOptions | None = None,
                 device: torch.device | None = None):
        self.options = options or EngineOptions()
        self.device = device or torch.device("cpu")
        self.model = (model if isinstance(model, NNUNetModel)
                      else read_model_folder(model, self.options.folds))
        self.labels = dict(self.model.labels)
        # Region models (one sigmoid per overlapping region) write region values, not classes.
        self.region_based = bool(self.model.regions)
        self.cleanup = {}
        if self.model.regions and self.options.save_probabilities:
            raise MedsegError(f"{self.model.folder}: a region-based model (overlapping regions, "
                              "one sigmoid each) has no class probabilities to save; drop "
                              "--save-probabilities")
        self._check_crf()
        self.model_id = "nnunet " + self.model.model_id()
        self.network = self.model.build_network().to(self.device).eval()
        for path, weights in zip(self.model.checkpoints, self.model.weights):
            self._check_weights(path, weights)
        self.outputs = len(self.model.regions or self.labels)  # the network's output channels
        config = self.model.configuration
        self.patch = tuple(int(p) for p in config["patch_size"])
        self.target = tuple(float(s) for s in config["spacing"])
        self.axes = network_axes(self.model.transpose_forward)
        # The working spacing in the scan's axis order (for the memory estimate).
        self.spacing = tuple(self.target[self.axes.index(a)] for a in range(3))

    def _check_crf(self) -> None:
        """--crf needs class probabilities and intensities that map back to HU."""
        if not self.options.crf:
            return
        scheme = self.model.configuration["normalization_schemes"][0]
        if self.model.regions or scheme != "CTNormalization":
            why = ("a region-based model (one sigmoid per region) has no class probabilities"
                   if self.model.regions else
                   f"its input is normalised with {scheme}, not CTNormalization, so its "
                   "intensities do not map back to HU")
            raise MedsegError(f"{self.model.folder}: --crf cannot refine this model: {why}; "
                              "drop --crf")

    def _check_weights(self, path, weights: dict) -> None:
        try:
            self.network.load_state_dict(weights)
        except RuntimeError as exc:
            detail = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise MedsegError(f"{path}: the weights do not fit the network plans.json describes "
                              f"({detail[:160]}); trainer {self.model.trainer} builds another "
                              "network than its plan, which medseg cannot reproduce") from None

    def predict(self, scan: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """A uint8 mask (and uint8 probabilities if asked) on exactly the scan's grid."""
        scan_spacing = voxel_spacing(np.asarray(scan.affine, dtype=float))
        image = np.asarray(scan[0].as_subclass(torch.Tensor).numpy(), dtype=np.float32)
        array = np.transpose(image, self.axes)  # a view: nnU-Net's axis order
        spacing = tuple(float(scan_spacing[a]) for a in self.axes)
        box = nonzero_box(array)
        cropped = np.array(array[box], dtype=np.float32)  # a copy, normalised in place
        config = self.model.configuration
        cropped = normalize(cropped, config["normalization_schemes"][0], self.model.intensity,
                            bool(config.get("use_mask_for_norm", [False])[0]))
        working = resample_image(cropped, new_shape(cropped.shape, spacing, self.target),
                                 spacing, self.target)
        logits = self.logits(torch.from_numpy(working))
        if self.options.crf:
            logits = self.refined(logits, working)
        mask, probabilities = uncropped(*back_to_crop(
            logits, cropped.shape, spacing, self.target, self.options.save_probabilities,
            self.model.regions), box, array.shape, len(self.labels))
        back = [self.axes.index(a) for a in range(3)]  # nnU-Net's axes -> the scan's
        if probabilities is not None:
            probabilities = np.transpose(probabilities, [0, *[1 + a for a in back]])
        return np.ascontiguousarray(np.transpose(mask, back)), probabilities

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Fold-averaged sliding-window logits on the working grid, mirrored under --tta."""
        return sliding_window_logits(
            self.network, self.model.weights, image, self.patch, self.outputs,
            overlap=self.options.overlap, batch_size=self.options.sw_batch_size,
            device=self.device, precision=self.options.precision,
            mirror_axes=self.model.mirror_axes if self.options.tta else ())

    @torch.inference_mode()
    def refined(self, logits: torch.Tensor, working: np.ndarray) -> torch.Tensor:
        """The dense CRF on the working grid, on intensities mapped back to HU (clipped as
        CTNormalization clipped them); its log-probabilities replace the logits."""
        intensity = self.model.intensity
        hu = torch.from_numpy(working).mul(max(intensity["std"], 1e-8)).add_(intensity["mean"])
        probabilities = softmax_(logits)  # in place: the logits are not needed again
        refined = refine(probabilities, hu, self.target, self.options.crf_settings)
        return refined.clamp_(min=CRF_EPS).log_()

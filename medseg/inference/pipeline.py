"""What every kind of model goes through, once: open it (medseg.models.open_model), check that
a scan fits it, keep the organs --roi-subset names, clean the mask's components (the global
--keep-largest / --min-volume on top of the model's own per-organ rules), and compose the
model id masks record. The batch runner, the Python API and cross-validation all segment
through here, so no kind of model can skip a step or take it its own way."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from medseg.data.geometry import voxel_spacing
from medseg.data.labels import subset_ids
from medseg.errors import MedsegError
from medseg.inference.memory import check_inference_memory
from medseg.inference.options import InferOptions, RunOptions
from medseg.inference.postprocess import clean_organs, rules_in_voxels, voxels_for_volume
from medseg.models.contract import MODEL_ID_PREFIX, Predictor
from medseg.models.open import open_model


def open_pipeline(refs, options: InferOptions | None = None) -> Pipeline:
    """The model(s) `refs` names, opened with options.engine, behind the pipeline."""
    options = options or InferOptions()
    given = [refs] if isinstance(refs, (str, Path)) else list(refs)
    predictor = open_model(given, options.engine, organs=options.run.organs)
    return Pipeline(predictor, options.run, name=str(given[0]))


class Pipeline:
    """A predictor with the steps every kind of model shares around it."""

    def __init__(self, predictor: Predictor, run: RunOptions | None = None,
                 name: str = "the model"):
        if not isinstance(predictor, Predictor):
            raise TypeError(f"{type(predictor).__name__} does not offer the Predictor contract")
        self.predictor, self.run = predictor, run or RunOptions()
        self.engine = predictor.options
        organs = self.run.organs
        kept = subset_ids(organs, predictor.labels, name) if organs else None
        self.labels = dict(predictor.labels) if kept is None else {
            0: predictor.labels.get(0, "background"), **{i: predictor.labels[i] for i in kept}}
        self._lookup = None
        qualifier = ""
        if kept is not None:
            self._lookup = np.zeros(max(predictor.labels) + 1, dtype=np.uint8)
            self._lookup[kept] = kept
            # A rerun with another subset redoes the masks: the id names the organs kept.
            qualifier = " roi " + hashlib.sha256(",".join(map(str, kept)).encode()).hexdigest()[:8]
        self.model_id = MODEL_ID_PREFIX + predictor.model_id + qualifier

    def segment(self, scan, source: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(mask, probabilities or None, affine) on exactly the scan's own grid, after refusing
        a scan the model cannot segment or the machine cannot hold."""
        self.check_fits(scan, source)
        mask, probabilities = self.predictor.predict(scan)
        if self._lookup is not None:
            mask = self._lookup[mask]
        mask = self.cleaned(mask, np.asarray(scan.affine))
        return mask, probabilities, np.asarray(scan.meta.get("original_affine", scan.affine))

    def check_fits(self, scan, path: Path) -> None:
        """Refuse, before any work, a single slice for a 3D model or a scan too large for
        memory."""
        shape = tuple(scan.shape[1:])
        if self.predictor.spatial_dims == 3 and min(shape) < 2:
            raise MedsegError(f"{path}: a single slice (size {'x'.join(map(str, shape))}), but "
                              "the model is 3D; give the whole series, or use a model trained "
                              "with --dims 2")
        check_inference_memory(path, shape, voxel_spacing(scan.affine), self.predictor.spacing,
                               len(self.predictor.labels), self.engine.save_probabilities,
                               crf=self.engine.crf_settings)

    def cleaned(self, mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """--keep-largest / --min-volume for every organ, on top of the model's own per-organ
        rules (a cross-validation's choices): one pass over the mask either way."""
        largest = self.run.keep_largest
        voxels = voxels_for_volume(self.run.min_volume_mm3, affine)
        rules = {organ: (own or largest, max(own_voxels, voxels)) for organ, (own, own_voxels)
                 in rules_in_voxels(self.predictor.cleanup, affine).items()}
        return clean_organs(mask, rules, (largest, voxels))

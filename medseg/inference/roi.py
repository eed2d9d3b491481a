"""--roi-subset: only some organs of a model's label map, for every kind of model. Names are
matched by canonical organ name (kidney_right = right_kidney); a name the model does not have
is refused with the closest ones it does have."""

from __future__ import annotations

import difflib
import hashlib

import numpy as np
import torch

from medseg.data.labels import canonical_name
from medseg.errors import MedsegError


def parse_subset(text: str | None) -> list[str] | None:
    """'liver, spleen' -> ['liver', 'spleen']; None or blank -> None (every organ)."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    return names or None


def subset_ids(names: list[str], labels: dict[int, str], model: str) -> list[int]:
    """The label ids of the named organs, in label order; unknown names refused with
    suggestions from the model's own organ names."""
    ids = {canonical_name(name): i for i, name in labels.items() if i}
    unknown = [n for n in names if canonical_name(n) not in ids]
    if unknown:
        known = [labels[i] for i in sorted(ids.values())]
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(canonical_name(name), list(ids), n=3, cutoff=0.6)
            shown = " or ".join(labels[ids[c]] for c in close)
            hints.append(f"{name!r}" + (f" (did you mean {shown}?)" if close else ""))
        listing = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
        raise MedsegError(f"--roi-subset: {', '.join(hints)} not among {model}'s organs "
                          f"({listing})")
    return sorted({ids[canonical_name(n)] for n in names})


class SubsetPredictor:
    """A predictor whose masks keep only some organs (the others become background). The
    network still computes every class; the labels, mask and model id are the subset's."""

    def __init__(self, predictor, names: list[str], model: str):
        self.inner = predictor
        kept = subset_ids(names, predictor.labels, model)
        self.labels = {0: predictor.labels.get(0, "background"),
                       **{i: predictor.labels[i] for i in kept}}
        self._lookup = np.zeros(max(predictor.labels) + 1, dtype=np.uint8)
        self._lookup[kept] = kept
        digest = hashlib.sha256(",".join(map(str, kept)).encode()).hexdigest()[:8]
        self.model_id = f"{predictor.model_id} roi {digest}"  # a rerun redoes other subsets

    def __getattr__(self, name):  # options, spatial_dims, spacing, ... are the model's
        return getattr(self.inner, name)

    def predict(self, scan: torch.Tensor):
        mask, probabilities = self.inner.predict(scan)
        return self._lookup[mask], probabilities

"""Losses: cross-entropy, soft Dice, Dice + CE (MONAI's), over deep-supervision outputs too, and
the merge that lets them learn from partially labelled cases."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss, DiceCELoss

from medseg.choices import LOSSES
from medseg.errors import MedsegError


class WeightedDeepSupervision(DeepSupervisionLoss):
    """MONAI's deep-supervision sum with weights 1/2^i normalised to 1 (nnU-Net's), so the loss
    keeps its scale with or without it; labels are downsampled by nearest neighbour."""

    def get_weights(self, levels: int = 1) -> list[float]:
        """1, 1/2, 1/4, ... divided by their sum."""
        weights = [0.5**level for level in range(max(1, levels))]
        return [w / sum(weights) for w in weights]

    def get_loss(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss at one level, with the label resized to it (integer labels interpolate too)."""
        if input.shape[2:] != target.shape[2:]:
            target = F.interpolate(target.float(), size=input.shape[2:], mode="nearest-exact")
        return self.loss(input, target)


def build_loss(name: str = "dice_ce", include_background: bool = False,
               squared_pred: bool = False, class_weights: Sequence[float] | None = None,
               lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> torch.nn.Module:
    """Loss of logits (B, C, ...) against labels (B, 1, ...), or of a list of logits (deep
    supervision). Soft Dice is computed over the whole batch (nnU-Net's batch Dice), with
    squared_pred for the 1 - 2 sum(yp) / (sum(y^2) + sum(p^2)) form; include_background adds
    the background class to Dice (CE always has it); class_weights (one per class, background
    first) scale both terms (MONAI applies them to Dice only when 2+ classes enter it)."""
    if name not in LOSSES:
        raise MedsegError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    dice_share, ce_share = LOSSES[name]
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float)
    loss = DiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True,
                      squared_pred=squared_pred, batch=True, weight=weight,
                      lambda_dice=dice_share * lambda_dice, lambda_ce=ce_share * lambda_ce)
    return WeightedDeepSupervision(loss)


def merge_unannotated(logits, annotated: torch.Tensor):
    """Logits for a batch whose cases annotate only some classes (partial labels, the
    "marginal loss" of Shi et al., Medical Image Analysis 2021): in each case, the classes its
    data set does not annotate are merged into background (their probabilities summed, by a
    log-sum-exp of logits), since an unlabelled voxel there may be background or any of them.

    The loss then neither teaches that those organs are background nor asks for them where
    nobody drew them; their Dice terms see only cases that annotate them. `annotated` is
    (batch, classes) booleans; logits (batch, classes, ...) or a list of them (deep
    supervision). All-annotated batches pass unchanged.
    """
    if isinstance(logits, (list, tuple)):
        return [merge_unannotated(level, annotated) for level in logits]
    if bool(annotated.all()):
        return logits
    keep = annotated.to(logits.device).view(*annotated.shape, *[1] * (logits.ndim - 2))
    into_background = ~keep
    into_background[:, 0] = True
    background = torch.logsumexp(logits.masked_fill(~into_background, -torch.inf), dim=1,
                                 keepdim=True)
    return torch.cat([background, logits[:, 1:].masked_fill(~keep[:, 1:], -torch.inf)], dim=1)

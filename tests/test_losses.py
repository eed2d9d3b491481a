"""Losses against values worked out by hand on three voxels and two classes."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.errors import MedsegError
from medseg.training.losses import build_loss

# Class-1 logit minus class-0 logit is ln 3 everywhere, so p1 = 0.75 and p0 = 0.25.
LOGITS = torch.tensor([[0.0, 0.0, 0.0], [math.log(3)] * 3]).reshape(1, 2, 3, 1)
LABEL = torch.tensor([1, 1, 0]).reshape(1, 1, 3, 1)
CE = (2 * math.log(4 / 3) + math.log(4)) / 3  # -mean log p(true class)
DICE_1 = 2 * 1.5 / (2 + 2.25)  # 2 sum(y p) / (sum y + sum p) for class 1
DICE_0 = 2 * 0.25 / (1 + 0.75)  # the same for the background


def loss_value(**kwargs) -> float:
    return build_loss(**kwargs)(LOGITS, LABEL).item()


def test_cross_entropy():
    assert loss_value(name="ce") == pytest.approx(CE, abs=1e-6)


def test_soft_dice_excludes_background_by_default():
    assert loss_value(name="dice") == pytest.approx(1 - DICE_1, abs=1e-5)
    both = loss_value(name="dice", include_background=True)
    assert both == pytest.approx(1 - (DICE_0 + DICE_1) / 2, abs=1e-5)


def test_squared_dice_squares_the_denominator():
    # 1 - 2 sum(y p) / (sum y^2 + sum p^2) = 1 - 3 / (2 + 3 * 0.75^2)
    assert loss_value(name="dice", squared_pred=True) == pytest.approx(1 - 3 / 3.6875, abs=1e-5)


def test_dice_ce_weights_both_terms():
    got = loss_value(name="dice_ce", lambda_dice=0.3, lambda_ce=2.0)
    assert got == pytest.approx(0.3 * (1 - DICE_1) + 2.0 * CE, abs=1e-5)


def test_class_weights_scale_each_class_in_both_terms():
    got = loss_value(name="dice_ce", class_weights=[1.0, 3.0], include_background=True)
    weighted_dice = (1 * (1 - DICE_0) + 3 * (1 - DICE_1)) / 2  # mean over classes
    weighted_ce = (3 * 2 * math.log(4 / 3) + 1 * math.log(4)) / (3 + 3 + 1)  # weighted mean
    assert got == pytest.approx(weighted_dice + weighted_ce, abs=1e-5)


def test_deep_supervision_weights_halve_per_level_and_sum_to_one():
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 1, 3, 2)).repeat_interleave(2, 2).repeat_interleave(2, 3)
    full, half = torch.randn(2, 3, 6, 4), torch.randn(2, 3, 3, 2)
    loss = build_loss("dice_ce")
    single = build_loss("dice_ce")
    expected = (single(full, label) + 0.5 * single(half, label[..., ::2, ::2])) / 1.5
    torch.testing.assert_close(loss([full, half], label), expected)


def test_unknown_loss_lists_the_valid_ones():
    with pytest.raises(MedsegError, match="ce, dice, dice_ce"):
        build_loss("focal")

"""The optimiser and its learning-rate schedule."""

from __future__ import annotations

import math

import torch

from medseg.errors import MedsegError
from medseg.training.config import TrainConfig


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or nnU-Net's SGD with Nesterov momentum 0.99; learning_rate sets their rate."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.99, nesterov=True,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise MedsegError(f"optimizer {cfg.optimizer!r}: choose adamw or sgd")


def learning_rate(cfg: TrainConfig, step: int, total: int) -> float:
    """nnU-Net's poly decay (exponent 0.9), or linear warm-up then cosine decay (Auto3DSeg's)."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_iters) / max(1, total - cfg.warmup_iters)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (1 - step / total) ** 0.9

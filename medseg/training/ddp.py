"""Training on several GPUs with PyTorch's DistributedDataParallel, launched by torchrun."""

from __future__ import annotations

import hashlib

import torch

from medseg.distributed import (
    all_gather,
    is_main_process,
    rank_and_world,
)
from medseg.training.cases import reseed_epoch


def ddp_wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel under torchrun (gradients averaged across ranks), else the model."""
    if not torch.distributed.is_initialized():
        return model
    if device.type == "cuda":  # SyncBatchNorm runs on GPUs only; instance norm needs none
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return torch.nn.parallel.DistributedDataParallel(model)


def report_ranks(model: torch.nn.Module, loader, seed: int) -> None:
    """Under torchrun, print per-rank digests of the first batch trained on and final weights."""
    rank, world = rank_and_world()
    if world == 1:
        return
    reseed_epoch(loader, seed, 1, rank)
    first = next(iter(loader))["image"]
    weights = torch.cat([p.detach().flatten().cpu() for p in model.parameters()])
    digests = all_gather((digest(first), digest(weights)))
    if is_main_process():
        for rank, (data, final) in enumerate(digests):
            print(f"rank {rank}: data {data} weights {final}", flush=True)


def digest(tensor: torch.Tensor) -> str:
    """A short fingerprint of a tensor's exact values."""
    return hashlib.sha256(tensor.float().numpy().tobytes()).hexdigest()[:16]

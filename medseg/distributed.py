"""torchrun awareness: ranks, the process group, and which rank may write files."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks, as torchrun sets them (0, 1 otherwise)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """Only rank 0 writes checkpoints, logs and reports."""
    return rank_and_world()[0] == 0


def local_device(requested: str) -> str:
    """Under torchrun, each rank takes its own GPU (LOCAL_RANK); CPU ranks share the CPU."""
    _, world = rank_and_world()
    if world > 1 and requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu" if world > 1 and requested == "auto" else requested


def init_process_group(device: torch.device) -> bool:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs); False when running alone."""
    if rank_and_world()[1] == 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def barrier() -> None:
    """Wait for every rank (a no-op when running alone)."""
    if dist.is_initialized():
        dist.barrier()


def all_gather(obj) -> list:
    """Every rank's obj, on every rank ([obj] when running alone)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def shutdown() -> None:
    """Leave the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()

"""torchrun awareness: ranks, the process group, and which rank may write files."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import pickle
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout


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
    """Every rank's obj, on every rank ([obj] when running alone); obj must pickle.

    Exchanged through torchrun's key-value store, not a gloo collective. A gloo worker thread
    frees a collective's Python-made tensors a moment after the call returns; when that moment
    falls after the process began to exit, the rank aborts ("terminate called without an active
    exception", pytorch/pytorch#190489). DDP keeps the gloo group alive until exit, so
    destroy_process_group does not prevent it. Store calls are synchronous and leave no thread.
    """
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    # A restarted torchrun attempt reuses the store: its keys must not meet the old ones.
    key = f"medseg/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}/{next(_gather_calls)}"
    store = _torchrun_store()
    store.set(f"{key}/{rank}", pickle.dumps(obj))
    return [pickle.loads(store.get(f"{key}/{r}")) for r in range(world)]


_gather_calls = itertools.count()  # every rank gathers in the same order, so counts agree


@functools.cache
def _torchrun_store() -> dist.TCPStore:
    """A client of the store torchrun serves at MASTER_ADDR:MASTER_PORT."""
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                         is_master=False, timeout=default_pg_timeout)


def shutdown() -> None:
    """Leave the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def alone(requested: str) -> Iterator[str]:
    """Run a block as a process of its own, not a rank (a torchrun rank training a
    cross-validation fold by itself); yields the device for it: `requested` when there is no
    torchrun, else this rank's GPU, or the CPU without GPUs."""
    if rank_and_world()[1] == 1:
        yield requested
        return
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() \
        else "cpu"
    saved = {key: os.environ[key] for key in ("RANK", "WORLD_SIZE")}
    os.environ.update(RANK="0", WORLD_SIZE="1")
    try:
        yield device
    finally:
        os.environ.update(saved)

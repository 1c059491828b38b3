"""Multi-process training with torch.distributed: process-group setup, agreement between ranks,
and ``--devices N``, which relaunches the command under torchrun.

Under ``torchrun`` (RANK and WORLD_SIZE set) each process trains on its shard of the
data with DistributedDataParallel; rank 0 alone writes files. NCCL on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.distributed as dist


def world() -> tuple:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> None:
    """Join the process group (once), with NCCL for CUDA devices and gloo otherwise."""
    if world()[1] > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device
                                if device.type == "cuda" else None)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def any_rank(flag: bool, device) -> bool:
    """True when ``flag`` is true on any rank (a collective: every rank must call it)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    if active():
        dist.barrier()
        dist.destroy_process_group()


def launch(devices: int, argv: list) -> int:
    """Run ``ganforge <argv>`` in ``devices`` processes under torchrun; returns its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
           "-m", "ganforge", *argv]
    return subprocess.call(cmd)

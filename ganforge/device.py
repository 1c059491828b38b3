"""The training device: resolving ``--device``, the autocast dtypes, and what ``--fast`` picks."""
from __future__ import annotations

import os
import time

import torch

from ganforge.config import DEVICES
from ganforge.errors import UsageError

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, precision: str = "fp32") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use {DEVICES}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} but no CUDA GPU is available; use --device cpu (or auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name} but MPS is not available; use --device cpu (or auto)")
    if precision == "fp16" and device.type != "cuda":
        raise UsageError(f"--precision fp16 needs a CUDA GPU (device is {device.type}); use --precision bf16")
    return device



def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: taskset, cgroups, SLURM), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """PyTorch's CPU threads when ``--threads`` is not given: OMP_NUM_THREADS when set (torchrun sets 1 per
    process), else the usable cores shared among the processes of this machine (LOCAL_WORLD_SIZE)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def fast_settings(device: str = "auto") -> dict:
    """What ``--fast`` picks for the device, by measurement rather than by name:

    - bf16 autocast only where a bf16 matmul is faster than fp32 on this device (CPUs without
      AVX-512 BF16 or AMX emulate it, hundreds of times slower); fp16 with a GradScaler on CUDA
      GPUs without bf16;
    - channels_last (NHWC) for convolutional models (+40% for DCGAN on a 2-core AVX2 CPU);
    - torch.compile on CUDA only: on that CPU it took two minutes and gained nothing measurable.
    """
    device = resolve_device(device)
    settings = {"channels_last": True}
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        settings["precision"] = "fp16"
    elif _bf16_speedup(device) > 1.2:
        settings["precision"] = "bf16"
    if device.type == "cuda":
        settings["compile"] = True
    return settings


def _bf16_speedup(device: torch.device, n: int = 256) -> float:
    """fp32 time / bf16 time of an n x n matmul on the device (a few milliseconds to measure)."""
    def seconds(dtype):
        a = torch.randn(n, n, device=device, dtype=dtype)
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(3):
            a @ a
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    try:
        return seconds(torch.float32) / seconds(torch.bfloat16)
    except RuntimeError:  # no bf16 matmul on this device
        return 0.0

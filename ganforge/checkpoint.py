"""Checkpoints without pickle: one safetensors file per checkpoint.

Tensors (weights, optimizer moments, RNG states) are safetensors entries; the
rest (step, config, optimizer hyper-parameters, plugin providers) is JSON in the
file's metadata under the key ``ganforge``. Loading parses JSON and raw tensor
bytes only, so a checkpoint can never run code.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ganforge.errors import UsageError
from ganforge.rundir import atomic_write, checkpoints, find

FORMAT = "ganforge-checkpoint/1"


def flatten(obj, prefix: str, tensors: dict):
    """Replace every tensor in a nested dict/list by a reference, collecting them in ``tensors``."""
    import torch

    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        # optimizer state is keyed by int: keep the key types (and tuples, below)
        return {"__items__": [[k, flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    return obj


def unflatten(obj, tensors: dict):
    """Inverse of :func:`flatten`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: unflatten(v, tensors) for k, v in obj["__items__"]}
        if set(obj) == {"__tuple__"}:
            return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
        return {k: unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def digest(tensors: dict) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes: catches corruption safetensors would not."""
    import torch

    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save(path, state: dict) -> Path:
    """Write ``state`` (nested dicts/lists of tensors and JSON values) to ``path`` atomically and durably
    (fsynced file and directory): a crash at any moment leaves the old file or the new one, never a partial one."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {}
    meta = {"format": FORMAT, "state": flatten(state, "s", tensors)}
    meta["sha256"] = digest(tensors)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"ganforge": json.dumps(meta)}),
                 durable=True)
    return path


def load(path, device="cpu") -> dict:
    """Read a checkpoint written by :func:`save`; UsageError if it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["ganforge"])
        tensors = load_file(str(path), device=str(device))
    except FileNotFoundError:
        raise UsageError(f"checkpoint {path} does not exist") from None
    except (SafetensorError, KeyError, ValueError, OSError) as exc:
        raise UsageError(f"{path} is not a readable ganforge checkpoint ({exc})") from None
    if meta.get("format") != FORMAT:
        raise UsageError(f"{path} has checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("sha256") != digest(tensors):
        raise UsageError(f"{path} is corrupt (its tensors do not match the checksum written with them)")
    return unflatten(meta["state"], tensors)


def load_latest(run_dir, warn=print):
    """``(path, state)`` of the newest checkpoint that loads: unreadable ones are reported
    through ``warn`` and skipped in favour of the previous one."""
    find(run_dir)  # UsageError when there is none at all
    for path in reversed(checkpoints(run_dir)):
        try:
            return path, load(path)
        except UsageError as exc:
            warn(f"Warning: {exc}; trying the checkpoint before it")
    raise UsageError(f"no readable checkpoint in {run_dir}: every one is corrupt; start a new run")

"""Sampling from an exported generator. ONNX files run on onnxruntime and never import torch;
TorchScript files (``.pt``) import torch.

>>> from ganforge.inference import Sampler
>>> x = Sampler("g.onnx").sample(16, seed=0)     # NumPy array [16, *output_shape]
"""
from __future__ import annotations

import json
import os
import secrets
import warnings
from pathlib import Path

import numpy as np

from ganforge.errors import UsageError
from ganforge import rundir
from ganforge.rundir import atomic_write

REQUIRED = ("latent_dim", "output_shape", "inputs")


class Sampler:
    """A generator exported by ``ganforge export`` (ONNX: no torch; TorchScript), with its metadata read
    from the file itself, or a run directory's newest checkpoint (its EMA generator; torch).

    ``threads``: intra-op threads (default min(4, cores)); ``spin``: let onnxruntime's idle
    threads spin (more throughput for batch jobs, at the cost of CPU between calls)."""

    def __init__(self, path, threads: int | None = None, spin: bool = False):
        self.path = Path(path)
        threads = threads or min(4, os.cpu_count() or 1)
        if rundir.is_run(self.path):
            self._load_run(threads)
        elif not self.path.exists():
            raise UsageError(f"model file {self.path} does not exist")
        elif self.path.is_dir():
            raise UsageError(f"{self.path} is a directory but not a ganforge run (no config.toml); pass a run "
                             "directory, or a generator.onnx or generator.pt from ganforge export")
        elif self.path.suffix == ".onnx":
            self._load_onnx(threads, spin)
        elif self.path.suffix == ".pt":
            self._load_torchscript(threads)
        else:
            raise UsageError(f"{self.path} is neither .onnx nor .pt (TorchScript); export one with ganforge export")
        missing = [k for k in REQUIRED if k not in self.metadata]
        if missing:
            raise UsageError(f"{self.path} has no ganforge metadata ({', '.join(missing)}); "
                             "export it with ganforge export")
        self.latent_dim = int(self.metadata["latent_dim"])
        self.output_shape = tuple(self.metadata["output_shape"])
        self.num_classes = self.metadata.get("num_classes")
        self.value_range = self.metadata.get("value_range")
        directions = self.metadata.get("directions")
        # [k, latent_dim]: one standard deviation along each principal direction (ganforge.exporting)
        self.directions = np.asarray(directions["vectors"], np.float32) if directions else None

    def _load_onnx(self, threads: int, spin: bool) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle threads spin by default, burning the caller's CPU between calls: off unless asked
        # for (spinning gains throughput in batch jobs: see docs/benchmarks.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise UsageError(f"{self.path} is not a valid ONNX model ({str(exc).splitlines()[0][:200]})") from None
        try:
            self.metadata = {k: json.loads(v) for k, v in self._session.get_modelmeta().custom_metadata_map.items()}
        except json.JSONDecodeError:
            raise UsageError(f"{self.path} has unreadable ganforge metadata; export it again") from None
        self._run = lambda feeds: self._session.run(None, feeds)[0]

    def _load_torchscript(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        extra = {"ganforge.json": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated
                module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
        except Exception as exc:
            raise UsageError(f"{self.path} is not a TorchScript model ({str(exc).splitlines()[0][:200]})") from None
        try:
            self.metadata = json.loads(extra["ganforge.json"] or "{}")
        except json.JSONDecodeError:
            raise UsageError(f"{self.path} has unreadable ganforge metadata; export it again") from None
        self._run = _torch_runner(module.eval(), self.metadata["inputs"])

    def _load_run(self, threads: int) -> None:
        """A run directory: the generator of its newest checkpoint (the EMA one when kept), in PyTorch."""
        import torch

        from ganforge.models import load_generator

        torch.set_num_threads(threads)
        module, self.metadata = load_generator(self.path, verb="sampling from")
        self._run = _torch_runner(module, self.metadata["inputs"])

    def latents(self, n: int, seed: int | None = None) -> np.ndarray:
        """``n`` standard-normal latent vectors, reproducible for a seed (:func:`latents`; the exported web
        page draws the same ones)."""
        return latents(n, self.latent_dim, seed)

    def labels(self, n: int, cls: int | None = None) -> np.ndarray | None:
        """Class labels for ``n`` samples: all ``cls``, or cycling through the classes; None if unconditional."""
        if not self.num_classes:
            if cls is not None:
                raise UsageError(f"{self.path.name} is not class-conditional: drop --class")
            return None
        if cls is not None and not 0 <= cls < self.num_classes:
            raise UsageError(f"--class must be in 0..{self.num_classes - 1} for {self.path.name}, got {cls}")
        return np.full(n, cls, dtype=np.int64) if cls is not None else np.arange(n, dtype=np.int64) % self.num_classes

    def generate(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """The generator's output for latents ``z`` [B, latent_dim] (and labels [B] when conditional)."""
        feeds = {"z": np.ascontiguousarray(z, dtype=np.float32)}
        if self.num_classes:
            if labels is None:
                raise UsageError(f"{self.path.name} is class-conditional: pass labels")
            feeds["labels"] = np.ascontiguousarray(labels, dtype=np.int64)
        return self._run(feeds)

    def edit(self, z: np.ndarray, values) -> np.ndarray:
        """Latents ``z`` [B, latent_dim] moved along the generator's principal directions (GANSpace, stored
        at export): z + sum_k values[k] * directions[k], ``values`` in standard deviations of each
        component (the web page's sliders)."""
        if self.directions is None:
            raise UsageError(f"{self.path.name} has no principal directions; export it again with this version")
        values = np.asarray(values, np.float64)
        if values.shape != (len(self.directions),):
            raise UsageError(f"{self.path.name} has {len(self.directions)} directions, got {values.size} values")
        return (z.astype(np.float64) + values @ self.directions.astype(np.float64)).astype(np.float32)

    def sample(self, n: int, seed: int | None = None, cls: int | None = None, truncation: float = 1.0) -> np.ndarray:
        """``n`` samples [n, *output_shape]; images are in [-1, 1]. ``truncation`` < 1 trades variety for
        typical samples (:func:`truncate`)."""
        if n <= 0:
            raise UsageError(f"the number of samples must be positive, got {n}")
        return self.generate(truncate(self.latents(n, seed), truncation), self.labels(n, cls))

    def interpolate(self, n: int, frames: int, seed: int | None = None, cls: int | None = None,
                    keyframes: int = 4, truncation: float = 1.0) -> np.ndarray:
        """A looping latent walk: ``frames`` steps between each of ``keyframes`` random points,
        spherically interpolated, for ``n`` samples at once. Returns [keyframes * frames, n, *shape]."""
        if n <= 0 or frames <= 0:
            raise UsageError(f"interpolation needs a positive number of samples and frames, got {n} and {frames}")
        keys = truncate(self.latents(n * keyframes, seed), truncation).reshape(keyframes, n, self.latent_dim)
        labels = self.labels(n, cls)
        out = []
        for k in range(keyframes):
            a, b = keys[k], keys[(k + 1) % keyframes]
            for t in np.arange(frames) / frames:
                out.append(self.generate(slerp(a, b, t), labels))
        return np.stack(out)


def _torch_runner(module, inputs: list):
    """NumPy feeds -> NumPy output through a torch module (TorchScript or a run's generator)."""
    import torch

    def run(feeds):
        with torch.no_grad():
            return module(*(torch.from_numpy(feeds[name]) for name in inputs)).numpy()

    return run


MAX_SEED = 2**32 - 1


def latents(n: int, dim: int, seed: int | None = None) -> np.ndarray:
    """``[n, dim]`` float32 standard normals for ``seed`` (0 .. 2**32 - 1; None: a random one), drawn so
    that a few lines of any language give the same numbers (the exported web page's JavaScript does):
    uniforms from mulberry32 in counter form, u_k = hash((seed + (k + 1) * 0x6D2B79F5) mod 2**32) / 2**32,
    then Box-Muller's cosine branch on consecutive pairs, sqrt(-2 ln(1 - u_2i)) cos(2 pi u_2i+1), row-major."""
    if seed is None:
        seed = secrets.randbits(32)
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"a seed must be in 0..{MAX_SEED}, got {seed}")
    k = np.arange(2 * n * dim, dtype=np.uint64)
    t = ((seed + (k + 1) * 0x6D2B79F5) & 0xFFFFFFFF).astype(np.uint32)
    t = (t ^ (t >> 15)) * (t | 1)  # uint32 arithmetic wraps, as Math.imul does
    t = t ^ (t + (t ^ (t >> 7)) * (t | 61))
    u = (t ^ (t >> 14)).astype(np.float64) / 2**32
    z = np.sqrt(-2.0 * np.log(1.0 - u[0::2])) * np.cos(2 * np.pi * u[1::2])
    return z.astype(np.float32).reshape(n, dim)


def check_truncation(psi: float, name: str = "truncation") -> None:
    if not 0 <= psi <= 1:
        raise UsageError(f"{name} must be between 0 and 1 (1: none), got {psi}")


def truncate(z: np.ndarray, psi: float) -> np.ndarray:
    """The truncation trick: latents pulled toward the prior's mean, mean + psi (z - mean), for psi in
    [0, 1] (1: unchanged; 0: every latent is the mean). ganforge's prior is the standard normal, whose
    mean is 0. The exported web page's truncation slider is the same."""
    check_truncation(psi)
    return (psi * z.astype(np.float64)).astype(np.float32) if psi != 1 else z


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Latents between rows of ``a`` and ``b`` that keep the prior's typical norm in any dimension: the
    direction moves along the great circle between theirs (spherical interpolation of unit vectors), the
    norm goes linearly from |a| to |b|. (Slerp of the raw vectors leaves that range when they point
    nearly opposite ways, as 2-D latents often do.) The exported web page's ``slerp`` is the same."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)  # in float64, as JavaScript computes it
    na, nb = np.linalg.norm(a, axis=1, keepdims=True), np.linalg.norm(b, axis=1, keepdims=True)
    ua, ub = a / np.maximum(na, 1e-12), b / np.maximum(nb, 1e-12)
    omega = np.arccos(np.clip(np.sum(ua * ub, axis=1, keepdims=True), -1, 1))
    so = np.sin(omega)
    safe = so > 1e-6
    wa = np.where(safe, np.sin((1 - t) * omega) / np.where(safe, so, 1), 1 - t)
    wb = np.where(safe, np.sin(t * omega) / np.where(safe, so, 1), t)
    u = wa * ua + wb * ub
    nu = np.linalg.norm(u, axis=1, keepdims=True)
    u = np.where(nu > 1e-12, u / np.maximum(nu, 1e-12), ua)  # exactly opposite: stay on a's side
    return (u * ((1 - t) * na + t * nb)).astype(np.float32)


def write_samples(sampler: Sampler, x: np.ndarray, out: Path, fmt: str, title: str = "") -> Path:
    """Save samples: ``npy`` (raw array), ``png`` or ``jpg`` (a grid of images, a scatter plot of 2-D points
    or a histogram of 1-D values), atomically."""
    from ganforge import plotting

    if fmt == "npy":
        return atomic_write(out, lambda tmp: _write_npy(tmp, x))
    img = plotting.samples_picture(x, title=title)
    if fmt == "jpg":
        return atomic_write(out, lambda tmp: img.convert("L" if img.mode == "L" else "RGB").save(tmp, format="JPEG",
                                                                                                 quality=95))
    return atomic_write(out, lambda tmp: img.save(tmp, format="PNG"))


def _write_npy(path: Path, x: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add .npy to a path
        np.save(f, x)


def write_gif(frames: np.ndarray, out: Path, fps: int = 12) -> Path:
    """An animated, looping GIF of ``frames`` [T, n, C, H, W] (each frame a grid) or [T, n, 2] (scatter)."""
    from ganforge import plotting

    if frames.ndim == 5:
        images = [plotting.image_grid(f) for f in frames]
    else:  # fixed axes, so the points move and the frame does not
        limits = plotting.padded_limits(frames[..., :2])
        images = [plotting.scatter(f[:, :2], limits=limits) for f in frames]
    images = [im.convert("P", palette=1, colors=256) if im.mode != "L" else im for im in images]
    return atomic_write(out, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                        duration=int(1000 / fps), loop=0))

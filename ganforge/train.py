"""The training loop, readable top to bottom: build the parts from the registry,
then alternate discriminator and generator updates, logging, sampling and
checkpointing on the way. ``train`` is what ``ganforge train`` calls."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from ganforge import __version__, checkpoint, contracts, distributed, plotting
from ganforge.config import TrainConfig, to_toml
from ganforge.errors import Interrupted, TrainingDiverged, UsageError
from ganforge.interfaces import Data, DataSpec, StreamingData, to_float
from ganforge.metrics import HIGHER_IS_BETTER
from ganforge.plugins import KINDS, get_registry

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SAMPLES = 64  # size of the fixed-noise batch drawn for sample grids


def resolve_device(name: str, precision: str = "fp32") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} but no CUDA GPU is available; use --device cpu (or auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name} but MPS is not available; use --device cpu (or auto)")
    if precision == "fp16" and device.type != "cuda":
        raise UsageError(f"--precision fp16 needs a CUDA GPU (device is {device.type}); use --precision bf16")
    return device


def load_data(cfg: TrainConfig, registry=None):
    """The dataset as Data (in memory) or StreamingData, as ``cfg.data_path`` asks."""
    registry = registry or get_registry()
    entry = registry.get("datasets", cfg.dataset)
    data = contracts.call_dataset(entry, lambda: registry.create(
        "datasets", cfg.dataset, cfg.data_root, cfg.image_size, cfg.download, **cfg.data_options))
    contracts.check_data(data, entry)
    if cfg.data_path == "stream" and isinstance(data, Data):
        data = StreamingData(InMemory(data), data.shape, data.num_classes)
    if cfg.data_path == "memory" and isinstance(data, StreamingData):
        raise UsageError(f"dataset '{cfg.dataset}' is too large to hold in memory; drop --data-path memory")
    return data


class InMemory(torch.utils.data.Dataset):
    """In-memory Data served item by item (``--data-path stream`` on data that would fit)."""

    def __init__(self, data: Data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        label = -1 if self.data.labels is None else int(self.data.labels[i])
        return self.data.x[i], label


def data_spec(cfg: TrainConfig, data: Data) -> DataSpec:
    if cfg.conditional and data.num_classes is None:
        raise UsageError(f"--conditional needs class labels, and dataset '{cfg.dataset}' has none")
    return DataSpec(data.shape, data.num_classes if cfg.conditional else None)


def build_models(cfg: TrainConfig, spec: DataSpec, registry=None):
    """The generator of ``cfg.arch`` and the discriminator of ``cfg.d_arch`` (default: the same),
    packed when ``cfg.pack`` > 1, working in standardized units when ``cfg.standardize``."""
    registry = registry or get_registry()
    G, D = registry.create("architectures", cfg.arch, spec, cfg.latent_dim, **cfg.arch_options)
    if cfg.standardize and spec.is_image:
        raise UsageError("--standardize is for vector data; image data is already in [-1, 1]")
    features = spec.shape  # one sample, before packing
    if cfg.pack > 1:
        if spec.num_classes:
            raise UsageError("--pack cannot go with --conditional (a pack mixes classes); drop one of them")
        spec = DataSpec((spec.shape[0] * cfg.pack, *spec.shape[1:]))
    if (cfg.d_arch and cfg.d_arch != cfg.arch) or cfg.pack > 1:
        d_arch, options = (cfg.d_arch, cfg.d_arch_options) if cfg.d_arch else (cfg.arch, cfg.arch_options)
        _, D = registry.create("architectures", d_arch, spec, cfg.latent_dim, **options)
    if cfg.pack > 1:
        D = Packed(D, cfg.pack)
    for attr in ("latent_dim", "output_shape"):
        if not hasattr(G, attr):
            raise UsageError(f"architecture '{cfg.arch}' returned a generator without the .{attr} attribute")
    g_entry, d_entry = (registry.get("architectures", name) for name in (cfg.arch, cfg.d_arch or cfg.arch))
    contracts.check_models(G, D, DataSpec(features, spec.num_classes), cfg.pack, g_entry, d_entry)
    if cfg.standardize:
        G, D = Standardized(G, features), Standardized(D, features, inputs=True)
    return G, D


class Standardized(torch.nn.Module):
    """A generator whose network works in standardized units, mapped back to the data's
    (``mean + std * net(z)``), or a discriminator that standardizes its input (``inputs``).
    ``mean`` and ``std`` are per-feature buffers: they travel with checkpoints and exports."""

    def __init__(self, net: torch.nn.Module, features: tuple, inputs: bool = False):
        super().__init__()
        self.net, self.inputs = net, inputs
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        for attr in ("latent_dim", "output_shape", "num_classes"):  # the generator contract
            if hasattr(net, attr):
                setattr(self, attr, getattr(net, attr))

    def set_statistics(self, x: torch.Tensor) -> None:
        std = x.std(0)
        self.mean.copy_(x.mean(0))
        self.std.copy_(torch.where(std > 0, std, 1.0))

    def forward(self, x, labels=None):
        if self.inputs:
            return self.net((x - self.mean) / self.std, labels)
        return self.mean + self.std * self.net(x, labels)


class Packed(torch.nn.Module):
    """PacGAN (Lin et al. 2018): the discriminator judges ``pack`` samples at once, concatenated
    along the first data axis (channels of images, features of vectors); one logit per pack.
    Consecutive samples of a batch form a pack, so the batch size must be a multiple of ``pack``."""

    def __init__(self, D: torch.nn.Module, pack: int):
        super().__init__()
        self.D, self.pack = D, pack

    def forward(self, x, labels=None):
        return self.D(x.reshape(x.shape[0] // self.pack, self.pack * x.shape[1], *x.shape[2:]))


def providers(cfg: TrainConfig, registry=None) -> dict:
    """Which plugin, package and version provided each part of the run."""
    registry = registry or get_registry()
    parts = {"arch": ("architectures", cfg.arch), "d_arch": ("architectures", cfg.d_arch or cfg.arch),
             "loss": ("losses", cfg.loss), "dataset": ("datasets", cfg.dataset)}
    out = {}
    for part, (kind, name) in parts.items():
        entry = registry.get(kind, name)
        out[part] = {"name": entry.name, "plugin": entry.plugin.name,
                     "package": entry.plugin.package, "version": entry.plugin.version}
    return out


def recommended_settings(loss: str, dataset: str, arch: str | None = None, registry=None) -> dict:
    """What the dataset's and then the loss's factories recommend (``recommended`` attribute; the
    loss wins): the layer of settings between ganforge's defaults and the user's file and flags.
    A dataset's architecture options are dropped when the user picked another ``arch`` than its own."""
    from ganforge.config import check_value

    registry = registry or get_registry()
    out = {}
    for kind, name in (("datasets", dataset), ("losses", loss)):
        settings = dict(getattr(registry.get(kind, name).factory, "recommended", {}))
        if arch and settings.get("arch", arch) != arch:
            settings = {k: v for k, v in settings.items() if k not in ("arch_options", "d_arch_options")}
        for key, value in settings.items():
            out[key] = check_value(key, value, f"the recommended settings of {KINDS[kind]} '{name}'")
    return out


#: Settings that cannot go together, or with the data: (keys, conflict(cfg, data)). The checks that
#: refuse them stay where the settings are used; this table only lets a recommendation give way.
CONFLICTS = (
    (("pack", "conditional"), lambda cfg, data: cfg.pack > 1 and cfg.conditional),
    (("pack", "batch_size"), lambda cfg, data: cfg.batch_size % cfg.pack != 0),
    (("conditional",), lambda cfg, data: cfg.conditional and data.num_classes is None),
    (("standardize",), lambda cfg, data: cfg.standardize and len(data.shape) == 3),
    (("standardize", "data_path"), lambda cfg, data: cfg.standardize and not isinstance(data, Data)),
)


def give_way(cfg: TrainConfig, recommended, data) -> tuple:
    """A recommendation never turns a valid command into an error: each setting in ``recommended``
    (the keys only a dataset's or loss's recommendation set) that conflicts with the other settings or
    the data goes back to ganforge's default. Returns the config and the settings dropped."""
    dropped = {}
    for keys, conflict in CONFLICTS:
        soft = [k for k in keys if k in recommended and k not in dropped]
        if soft and conflict(cfg, data):
            dropped[soft[0]] = getattr(cfg, soft[0])
            cfg = dataclasses.replace(cfg, **{soft[0]: getattr(TrainConfig(), soft[0])})
    return cfg, dropped


def new_run_dir(cfg: TrainConfig, overwrite: bool = False) -> Path:
    """``<out_dir>/<name>``, or ``<out_dir>/<arch>-<loss>-NNN`` with the next free number.
    An existing directory is never reused, unless ``overwrite`` (then its contents are replaced)."""
    base = Path(cfg.out_dir)
    base.mkdir(parents=True, exist_ok=True)
    if cfg.name:
        run_dir = base / cfg.name
        if run_dir.exists():
            if not overwrite:
                raise UsageError(f"run directory {run_dir} already exists; pick another --name, continue it "
                                 "with --resume, or replace it with --overwrite")
            shutil.rmtree(run_dir)
        run_dir.mkdir()
        return run_dir
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{cfg.arch}-{cfg.loss}")
    taken = [int(m.group(1)) for p in base.iterdir() if (m := re.fullmatch(re.escape(stem) + r"-(\d+)", p.name))]
    number = max(taken, default=0) + 1
    while True:
        run_dir = base / f"{stem}-{number:03d}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            number += 1


class Sampler:
    """Draws the fixed-noise sample batch and writes a picture of it."""

    def __init__(self, G, data: Data, seed: int, device):
        g = torch.Generator().manual_seed(seed + 1)
        self.z = torch.randn(SAMPLES, G.latent_dim, generator=g).to(device)
        classes = getattr(G, "num_classes", None)
        self.labels = (torch.arange(SAMPLES) % classes).to(device) if classes else None
        self.reference = None
        if isinstance(data, Data) and not data.is_image:  # real points drawn under generated ones
            idx = torch.randperm(len(data), generator=g)[:2000].to(data.x.device)
            self.reference = data.batch(idx)[0].cpu().numpy()

    @torch.no_grad()
    def write(self, G, path: Path, title: str) -> None:
        was_training = G.training
        G.eval()
        x = G(self.z, self.labels).float().cpu().numpy()
        G.train(was_training)
        if x.ndim == 4:
            nrow = G.num_classes if getattr(G, "num_classes", None) and G.num_classes <= 16 else None
            img = plotting.image_grid(x, nrow=nrow)
        elif x.shape[1] == 1:
            img = plotting.histogram(x[:, 0], self.reference[:, 0], title=title)
        else:
            img = plotting.scatter(x[:, :2], self.reference[:, :2], title=title)
        img.save(path)


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


class StopSignals:
    """SIGINT/SIGTERM: the first asks the loop to finish its step and checkpoint; a second
    SIGINT stops at once (KeyboardInterrupt). Checkpoint writes are atomic, so nothing is corrupted."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum, self.previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step (Ctrl-C again to quit at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class DataStream:
    """Batches drawn by index from the in-memory data, one shard per process.

    Each epoch is a fresh permutation seeded by (seed, epoch), so the batches depend only on
    how many were drawn: a resumed run continues with exactly the batches it would have had."""

    def __init__(self, data: Data, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.data, self.batch_size, self.seed, self.rank, self.world = data, batch_size, seed, rank, world
        shard = len(data) // world
        if batch_size > shard:
            raise UsageError(f"batch size {batch_size} is larger than the dataset ({shard} samples"
                             f"{' per process' if world > 1 else ''}); lower --batch-size")
        self.per_epoch, self.drawn, self._epoch, self._perm = shard // batch_size, 0, -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.data), generator=g)[self.rank::self.world]

    def next(self):
        epoch, pos = divmod(self.drawn, self.per_epoch)
        if epoch != self._epoch:
            self._perm, self._epoch = self.permutation(epoch).to(self.data.x.device), epoch
        self.drawn += 1
        return self.data.batch(self._perm[pos * self.batch_size:(pos + 1) * self.batch_size])


class LoaderStream(DataStream):
    """The same batches as DataStream, read through a DataLoader with worker processes and pinned
    memory: for StreamingData, which does not fit in memory."""

    def __init__(self, data: StreamingData, batch_size: int, seed: int, rank: int, world: int, device):
        super().__init__(data, batch_size, seed, rank, world)
        self.device, self._iter = device, None
        self.workers = min(4, (os.cpu_count() or 1) - 1)

    def next(self):
        epoch, pos = divmod(self.drawn, self.per_epoch)
        if epoch != self._epoch or self._iter is None:  # resume mid-epoch: start at the right batch
            order = self.permutation(epoch)[pos * self.batch_size:self.per_epoch * self.batch_size].tolist()
            loader = torch.utils.data.DataLoader(
                self.data.dataset, self.batch_size, sampler=order, drop_last=True, num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(epoch))  # its worker seeds must not draw from the global RNG
            self._iter, self._epoch = iter(loader), epoch
        x, labels = next(self._iter)
        self.drawn += 1
        x = to_float(x.to(self.device, non_blocking=True))
        return x, labels.to(self.device, non_blocking=True) if self.data.num_classes else None


def train(cfg: TrainConfig, run_dir: Path | None = None, resume: bool = False, progress: bool = True,
          overwrite: bool = False, recommended=frozenset()) -> Path:
    """Train into ``run_dir`` (when None, a new directory under ``cfg.out_dir``); with ``resume``,
    continue ``run_dir`` from its newest readable checkpoint. Returns the run directory.
    ``recommended``: the settings only recommendations set; they give way on conflict (:func:`give_way`).

    Under torchrun every process calls this; each trains on its shard and rank 0 writes."""
    registry = get_registry()
    rank, world, local_rank = distributed.world()
    main = rank == 0
    device = resolve_device(cfg.device, cfg.precision)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
        if cfg.compile:
            raise UsageError("--compile is not supported with several processes yet; drop --compile")
        distributed.init(device)
    loss = registry.create("losses", cfg.loss, **cfg.loss_options)
    if cfg.keep_best and not cfg.eval_every:
        raise UsageError(f"--keep-best {cfg.keep_best} needs --eval-every N: metrics are computed only then")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    data = load_data(cfg, registry)
    cfg, dropped = give_way(cfg, recommended, data)
    if dropped and main:
        print("recommended settings left out (they conflict with yours or the data): "
              + ", ".join(f"{k}={v!r}" for k, v in dropped.items()))
    if cfg.batch_size % cfg.pack:
        raise UsageError(f"batch size {cfg.batch_size} is not a multiple of --pack {cfg.pack}; "
                         f"use a batch size such as {cfg.batch_size // cfg.pack * cfg.pack or cfg.pack}")
    if isinstance(data, Data):  # held on the training device, batches drawn by index
        data = data.to(device)
        stream = DataStream(data, cfg.batch_size, cfg.seed, rank, world)
    else:
        stream = LoaderStream(data, cfg.batch_size, cfg.seed, rank, world, device)
    spec = data_spec(cfg, data)
    G, D = build_models(cfg, spec, registry)
    if cfg.standardize:
        if not isinstance(data, Data):
            raise UsageError("--standardize needs the data in memory; drop --data-path stream")
        for model in (G, D):
            model.set_statistics(data.x.float())  # on the training device; copied into the buffers
    G, D = G.to(device), D.to(device)
    ema = copy.deepcopy(G).requires_grad_(False) if cfg.ema else None
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas), foreach=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas), foreach=True)
    amp_dtype = AMP_DTYPES[cfg.precision]
    scaler_g = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    scaler_d = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    total = math.ceil(cfg.epochs * stream.per_epoch / cfg.d_steps) if cfg.epochs else cfg.steps
    step, skipped = 0, 0  # iterations done; updates skipped for non-finite losses
    if resume:
        path, state = checkpoint.load_latest(run_dir, warn=lambda m: print(m, file=sys.stderr))
        try:
            G.load_state_dict(state["G"])
            D.load_state_dict(state["D"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
        except RuntimeError as exc:
            raise UsageError(f"checkpoint {path} does not fit the run's models: "
                             f"{str(exc).splitlines()[0]}") from None
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        for scaler, saved in ((scaler_g, state["scaler_g"]), (scaler_d, state["scaler_d"])):
            if scaler.is_enabled() and saved:  # empty when the run was not fp16 until now
                scaler.load_state_dict(saved)
        step, stream.drawn, skipped = state["step"], state["batches_drawn"], state.get("skipped", 0)
        if world == state.get("world_size", 1):
            torch.set_rng_state(state["rng"]["cpu"])
            if device.type == "cuda" and state["rng"]["cuda"]:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    # With one D and one G update per iteration the G update reuses the D update's fake batch
    # (as Radford et al.'s and PyTorch's DCGAN code do): one generator forward per iteration.
    reuse_fake = cfg.d_steps == 1 and cfg.g_steps == 1
    channels_last = cfg.channels_last and spec.is_image
    if channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    if world > 1:  # every rank draws its own noise
        torch.manual_seed(cfg.seed + 1_000_003 * rank + step)
        G_run = torch.nn.parallel.DistributedDataParallel(G)
        D_run = torch.nn.parallel.DistributedDataParallel(D)
        D_for_d_loss = D_run
    else:
        # Compiled wrappers run the steps; the plain modules are saved, so checkpoints carry
        # no `_orig_mod.` prefixes. Double backward (gradient penalties) does not go through
        # compiled graphs: such losses get the plain D.
        G_run, D_run = ((torch.compile(G, mode=cfg.compile_mode), torch.compile(D, mode=cfg.compile_mode))
                        if cfg.compile else (G, D))
        D_for_d_loss = D if loss.double_backward else D_run
    evaluator = make_evaluator(cfg, data, device, registry) if main and cfg.eval_every else None
    best = None  # the --keep-best metric's best value so far
    higher_is_better = bool(cfg.keep_best) and cfg.keep_best in HIGHER_IS_BETTER
    if resume and cfg.keep_best and (run_dir / "checkpoints" / "best.safetensors").is_file():
        saved = checkpoint.load(run_dir / "checkpoints" / "best.safetensors").get("best") or {}
        best = saved.get("value") if saved.get("metric") == cfg.keep_best else None

    # Everything that can fail on bad input has run: only now is anything written.
    if main:
        run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg, overwrite)
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        for stale in (run_dir / "checkpoints").glob("*.tmp"):  # a write cut short by a crash
            stale.unlink()
        _truncate_metrics(run_dir / "metrics.jsonl", step)  # drop what was logged after the checkpoint
        (run_dir / "config.toml").write_text(to_toml(cfg.to_dict()))
    run_dir = distributed.broadcast(run_dir)
    meta = {"ganforge_version": __version__, "providers": providers(cfg, registry),
            "data_shape": list(data.shape), "num_classes": spec.num_classes, "world_size": world}
    if main:
        (run_dir / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    check_every = 1 if device.type == "cpu" else cfg.log_every  # host syncs cost nothing on CPU
    skip = cfg.on_nonfinite == "skip"
    loss_entry, first = registry.get("losses", cfg.loss), True  # the loss is checked on the first step

    def check_loss(value, method: str) -> None:
        try:
            contracts.check_loss_value(value, loss_entry, method)
        except UsageError:
            if main and not resume:  # a new run that never took a step leaves no directory
                shutil.rmtree(run_dir, ignore_errors=True)
            raise

    def save_checkpoint(name: str | None = None, **extra):
        """checkpoints/step-N (the last few are kept), or checkpoints/<name> with ``extra`` metadata."""
        if not all(torch.isfinite(p).all() for p in [*G.parameters(), *D.parameters()]):
            raise TrainingDiverged(f"non-finite weights at step {step}; the last good checkpoint is kept in "
                                   f"{run_dir / 'checkpoints'}; lower the learning rates")
        path = run_dir / "checkpoints" / f"{name or f'step-{step}'}.safetensors"
        checkpoint.save(path, {**extra,
            "step": step, "batches_drawn": stream.drawn, "skipped": skipped, "config": cfg.to_dict(), **meta,
            "G": G.state_dict(), "D": D.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "scaler_g": scaler_g.state_dict(), "scaler_d": scaler_d.state_dict(),
            "rng": {"cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
        })
        if name is None:
            for old in checkpoint.checkpoints(run_dir)[:-cfg.keep_checkpoints]:
                old.unlink()

    def evaluate_and_keep_best():
        """Metrics of the (EMA) generator into metrics.jsonl; a new best is saved as checkpoints/best."""
        nonlocal best
        model = ema if ema is not None else G
        was_training = model.training
        model.eval()
        try:
            result = evaluator(lambda z, labels: model(z.to(device), None if labels is None else labels.to(device)),
                               G.latent_dim, spec.num_classes)
        finally:
            model.train(was_training)
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **result}) + "\n")
        line = ", ".join(f"{k} {v:.4g}" for k, v in result.items())
        if cfg.keep_best:
            value = result[cfg.keep_best]
            if math.isfinite(value) and (best is None or (value > best if higher_is_better else value < best)):
                best = value
                save_checkpoint("best", best={"metric": cfg.keep_best, "value": value, "step": step})
                line += f"; best {cfg.keep_best} so far, saved as checkpoints/best"
        print(f"step {step}: {line}", flush=True)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def update(value, optimizer, scaler) -> bool:
        """Backward and one optimizer step; with --on-nonfinite skip, a non-finite loss (on any
        rank: a host sync) is skipped and counted instead. Whether the step was taken."""
        nonlocal skipped
        optimizer.zero_grad(set_to_none=True)
        if skip and distributed.any_rank(not bool(torch.isfinite(value)), device):
            skipped += 1
            return False
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
        return True

    sampler = Sampler(G, data, cfg.seed, device) if main else None
    if main:
        print(f"run {run_dir}: G {cfg.arch}, D {cfg.d_arch or cfg.arch}, loss {cfg.loss}, "
              f"data {cfg.dataset} {len(data)}x{'x'.join(map(str, data.shape))}, {device} {cfg.precision}"
              f"{' compiled' if cfg.compile else ''}{f', {world} processes' if world > 1 else ''}, "
              f"steps {step}->{total}")
    bar = _progress(progress and main, total, step)
    t0, step0, last_save = time.perf_counter(), step, time.monotonic()
    bad_step = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite loss
    bad_losses = torch.zeros(2, device=device)
    G.train()
    D.train()
    with StopSignals() as signals, bar:
        while step < total:
            if cfg.lr_decay == "linear":  # a function of the step alone: resumes exactly
                for optimizer, lr in ((opt_g, cfg.lr_g), (opt_d, cfg.lr_d)):
                    for group in optimizer.param_groups:
                        group["lr"] = lr * (1 - step / total)
            # ---- discriminator: d_steps updates on fresh real batches, generator frozen
            for _ in range(cfg.d_steps):
                real, labels = stream.next()
                if channels_last:
                    real = real.contiguous(memory_format=torch.channels_last)
                z = torch.randn(real.shape[0], G.latent_dim, device=device)
                with autocast():
                    with torch.set_grad_enabled(reuse_fake):  # kept for the generator step when reused
                        fake = G_run(z, labels).to(real.dtype)  # one dtype into D: one compiled graph
                    loss.grad_scale = scaler_d._get_scale_async() if scaler_d.is_enabled() else 1.0  # no sync
                    d_loss = loss.discriminator_loss(D_for_d_loss, real, fake.detach(), labels)
                if first:
                    check_loss(d_loss, "discriminator_loss")
                if update(d_loss, opt_d, scaler_d):
                    loss.after_discriminator_step(D)
            # ---- generator: g_steps updates through a frozen discriminator (no gradient sync for D)
            D.requires_grad_(False)
            for _ in range(cfg.g_steps):
                with autocast():
                    if not reuse_fake:
                        z = torch.randn(real.shape[0], G.latent_dim, device=device)
                        fake = G_run(z, labels).to(real.dtype)
                    g_loss = loss.generator_loss(D if world > 1 else D_run, real, fake, labels)
                if first:
                    check_loss(g_loss, "generator_loss")
                update(g_loss, opt_g, scaler_g)
            D.requires_grad_(True)
            first = False
            if ema is not None:
                with torch.no_grad():
                    # warm-up: early on, average over the steps there are (as TF's num_updates)
                    decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                    torch._foreach_lerp_(list(ema.parameters()), list(G.parameters()), 1 - decay)
                    for b_ema, b in zip(ema.buffers(), G.buffers()):
                        b_ema.copy_(b)
            step += 1
            if not skip:  # remember the first non-finite step on the device: no host sync here
                losses = torch.stack([d_loss.detach().float(), g_loss.detach().float()])
                newly = (bad_step < 0) & ~torch.isfinite(losses).all()
                bad_step = torch.where(newly, step, bad_step)
                bad_losses = torch.where(newly, losses, bad_losses)

            # ---- bookkeeping: host syncs only every check_every / log_every steps
            log_now = step % cfg.log_every == 0 or step == total
            stop = distributed.any_rank(signals.signum is not None, device)  # ranks stop together
            save_now = (step % cfg.checkpoint_every == 0 or step == total or bool(stop)
                        or time.monotonic() - last_save >= cfg.checkpoint_minutes * 60)
            if not skip and (step % check_every == 0 or log_now or save_now) and bad_step.item() >= 0:
                d_bad, g_bad = bad_losses.tolist()
                raise TrainingDiverged(f"non-finite loss at step {bad_step.item()} (d_loss={d_bad}, g_loss={g_bad})"
                                       f"; stopped, the last good checkpoint is kept in {run_dir / 'checkpoints'}. "
                                       "Lower the learning rates, or pass --on-nonfinite skip")
            if log_now and main:
                elapsed = time.perf_counter() - t0
                record = {"step": step, "d_loss": d_loss.item(), "g_loss": g_loss.item(),
                          "images_per_s": (step - step0) * cfg.d_steps * cfg.batch_size * world / max(elapsed, 1e-9)}
                if skip:
                    record["skipped"] = skipped
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                t0, step0 = time.perf_counter(), step
                bar.update(step, record)
            elif main:
                bar.update(step)
            if main and (step % cfg.sample_every == 0 or step == total):
                sampler.write(ema if ema is not None else G, run_dir / "samples" / f"step-{step}.png",
                              f"{cfg.arch}/{cfg.loss} step {step}")
            if evaluator is not None and (step % cfg.eval_every == 0 or step == total):
                evaluate_and_keep_best()
            if main and save_now:
                save_checkpoint()
                last_save = time.monotonic()
            if stop:
                signum = signals.signum or signal.SIGTERM
                distributed.shutdown()
                raise Interrupted(f"stopped at step {step} ({signal.Signals(signum).name}); checkpoint "
                                  f"step-{step} written. Continue with: ganforge train --resume {run_dir}", signum)
    if main:
        _plot_metrics(run_dir, f"{cfg.arch} / {cfg.loss} on {cfg.dataset}", cfg.keep_best)
        print(f"done: {run_dir} (last checkpoint step-{step}"
              f"{f', best {cfg.keep_best} {best:.4g} in checkpoints/best' if best is not None else ''}"
              f"{f', {skipped} updates skipped' if skipped else ''}, samples in {run_dir / 'samples'})")
    distributed.shutdown()
    return run_dir


def _truncate_metrics(path: Path, step: int) -> None:
    if path.exists():
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in keep))


def make_evaluator(cfg: TrainConfig, data, device, registry):
    """The Evaluator of ``--eval-every``; UsageError when ``--keep-best`` names a metric it does not compute."""
    from ganforge.evaluate import Evaluator
    from ganforge.metrics import GROUPS, parse_metrics

    evaluator = Evaluator(data, parse_metrics(cfg.eval_metrics), cfg.eval_extractor, cfg.eval_samples, cfg.seed,
                          device, registry=registry)
    if cfg.keep_best:
        if not any(cfg.keep_best in GROUPS[g] for g in evaluator.groups):
            raise UsageError(f"--keep-best {cfg.keep_best} is not among the metrics evaluated "
                             f"({', '.join(evaluator.groups)}); add it to --eval-metrics")
    return evaluator


def _plot_metrics(run_dir: Path, title: str, keep_best: str | None) -> None:
    """loss.png from the logged losses; eval.png from the --eval-every metric (--keep-best's, or the first)."""
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
    losses = [r for r in records if "d_loss" in r]
    evals = [r for r in records if "d_loss" not in r]
    if losses:
        steps = [r["step"] for r in losses]
        plotting.line_plot({"D loss": (steps, [r["d_loss"] for r in losses]),
                            "G loss": (steps, [r["g_loss"] for r in losses])}, title=title).save(run_dir / "loss.png")
    key = keep_best or next((k for k in (evals[-1] if evals else {}) if k != "step"), None)
    points = [(r["step"], r[key]) for r in evals if math.isfinite(r.get(key, math.nan))]
    if points:
        plotting.line_plot({key: tuple(zip(*points))}, title=title).save(run_dir / "eval.png")


class _progress:
    """A rich progress bar showing step, losses, images/s and ETA (or nothing when disabled)."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.bar = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"),
                                TimeRemainingColumn())
            self.task = self.bar.add_task("train", total=total, completed=start, stats="")
            self.bar.start()

    def update(self, step: int, record: dict | None = None) -> None:
        if self.bar is None:
            return
        fields = {}
        if record is not None:
            fields["stats"] = (f"D {record['d_loss']:.4f}  G {record['g_loss']:.4f}  "
                               f"{record['images_per_s']:.0f} img/s")
        self.bar.update(self.task, completed=step, **fields)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

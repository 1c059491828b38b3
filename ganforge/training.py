"""The training core, readable top to bottom. :func:`train` is :func:`setup` (build every part of a run
from the registry and check it, on a dry step too, before anything is written), :func:`open_run` (the
run directory) and :func:`loop` (alternate discriminator and generator updates; callbacks log, draw
and report on the way).

:class:`TrainState` is everything a checkpoint holds, and the one place its layout is written
(``state_dict``) and read (``load_state_dict``). ``ganforge train`` and :func:`ganforge.train` call
:func:`train` with a config built by :func:`ganforge.config.build`; the run directory's file names are
:mod:`ganforge.rundir`'s.
"""
from __future__ import annotations

import copy
import functools
import inspect
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ganforge import __version__, checkpoint, contracts, distributed, penalties, rundir
from ganforge.config import TrainConfig, load_toml, refuse_conflicts, to_toml
from ganforge.data import batches, load_data
from ganforge.device import AMP_DTYPES, default_threads, resolve_device
from ganforge.errors import CallbackFailed, Interrupted, TrainingDiverged, UsageError
from ganforge.interfaces import Augmentation, Callback, Data, GANLoss
from ganforge.metrics import HIGHER_IS_BETTER
from ganforge.models import build_models, data_spec
from ganforge.plugins import get_registry, part_kind
from ganforge.recipes import used as used_recipes

SAMPLES = 64  # size of the fixed-noise batch drawn for sample grids
DEFAULT_CALLBACKS = ("metrics", "samples")  # the run directory's own files: always on
PROGRESS = "progress"  # the callback that shows progress (a bar in a terminal, else log lines)


class TrainState:
    """G, D, the EMA generator, both optimizers and GradScalers, the augmentation's state (ADA's p), the
    step, the updates skipped and the position in the data (``batches.drawn``): what a run needs to
    continue exactly."""

    def __init__(self, cfg: TrainConfig, G, D, batches, device: torch.device, augment=None):
        self.G, self.D, self.batches, self.device, self.augment = G, D, batches, device, augment
        self.ema = copy.deepcopy(G).requires_grad_(False) if cfg.ema else None
        self.opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas), foreach=True)
        self.opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas), foreach=True)
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.step, self.skipped = 0, 0  # iterations done; updates skipped for non-finite losses

    @property
    def generator(self):
        """The generator samples come from: the EMA one when the run keeps it."""
        return self.ema if self.ema is not None else self.G

    def state_dict(self) -> dict:
        cuda = self.device.type == "cuda"
        return {
            "step": self.step, "batches_drawn": self.batches.drawn, "skipped": self.skipped,
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "augment": self.augment.state_dict() if self.augment is not None else {},
            "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else []},
        }

    def load_state_dict(self, state: dict, source, restore_rng: bool = True) -> None:
        """Continue from a checkpoint's ``state`` (``source`` names it in errors). The RNG state is
        restored only when the run keeps its number of processes (``restore_rng``)."""
        try:
            self.G.load_state_dict(state["G"])
            self.D.load_state_dict(state["D"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
        except RuntimeError as exc:
            raise UsageError(f"checkpoint {source} does not fit the run's models: "
                             f"{str(exc).splitlines()[0]}") from None
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        for scaler, saved in ((self.scaler_g, state["scaler_g"]), (self.scaler_d, state["scaler_d"])):
            if scaler.is_enabled() and saved:  # empty when the run was not fp16 until now
                scaler.load_state_dict(saved)
        if self.augment is not None and state.get("augment"):
            self.augment.load_state_dict(state["augment"])
        self.step, self.batches.drawn, self.skipped = state["step"], state["batches_drawn"], state.get("skipped", 0)
        if restore_rng:
            torch.set_rng_state(state["rng"]["cpu"])
            if self.device.type == "cuda" and state["rng"]["cuda"]:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def update(self, value, optimizer, scaler, skip_nonfinite: bool) -> bool:
        """Backward and one optimizer step; with ``skip_nonfinite``, a non-finite loss (on any rank:
        a host sync) is skipped and counted instead. Whether the step was taken."""
        optimizer.zero_grad(set_to_none=True)
        if skip_nonfinite and distributed.any_rank(not bool(torch.isfinite(value)), value.device):
            self.skipped += 1
            return False
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
        return True


def ema_decay_at(decay: float, step: int, rampup: float | None = None) -> float:
    """The EMA's decay after update ``step`` (0-based): an average over about the last ``rampup`` of the
    steps so far (StyleGAN2-ADA's ramp-up; default 1/9, TF's num_updates warm-up), until that would
    exceed ``decay``."""
    window = (1 + step) / (10 + step) if rampup is None else 1 - 1 / (1 + (1 + step) * rampup)
    return min(decay, window)


def ema_warmup_steps(decay: float, rampup: float | None = None) -> int:
    """The step from which :func:`ema_decay_at` is ``decay``: before it, the EMA averages over a window
    growing with the steps, so early samples show what G has learnt."""
    return math.ceil(decay / ((1 - decay) * (rampup or 1 / 9)) - 1 - 1e-6)


@torch.no_grad()
def update_ema(ema, G, decay: float) -> None:
    """Move ``ema``'s weights a fraction 1 - ``decay`` of the way towards ``G``'s; buffers copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(G.parameters()), 1 - decay)
    for b_ema, b in zip(ema.buffers(), G.buffers()):
        b_ema.copy_(b)


class Nets:
    """What runs the steps: G as called in the loop (compiled, or DDP-wrapped, or plain), and the D
    each loss gets, seeing augmented batches under ``--augment``. ``d_plain`` is the uncompiled D for
    double backward (gradient penalties do not go through compiled graphs). Checkpoints always hold
    the plain modules (no ``_orig_mod.`` prefixes)."""

    def __init__(self, cfg: TrainConfig, state: TrainState, loss, world: int):
        G, D = state.G, state.D
        if world > 1:
            self.G = torch.nn.parallel.DistributedDataParallel(G)
            d_loss_D = plain = torch.nn.parallel.DistributedDataParallel(D)
            g_loss_D = D  # D is frozen during the G step: no gradient sync for it
        else:
            self.G, fast = ((torch.compile(G, mode=cfg.compile_mode), torch.compile(D, mode=cfg.compile_mode))
                            if cfg.compile else (G, D))
            plain, d_loss_D, g_loss_D = D, D if loss.double_backward else fast, fast
        self.augment, self._d_loss_D = state.augment, d_loss_D
        wrap = (lambda d: Augmented(d, state.augment)) if state.augment is not None else (lambda d: d)
        self.d_for_g_loss, self.d_plain = wrap(g_loss_D), wrap(plain)

    def d_for_d_loss(self, real):
        """The D of a discriminator update on ``real``: under ``--augment``, one that reports its logits on
        ``real`` to the augmentation (ADA's overfitting measure)."""
        return Augmented(self._d_loss_D, self.augment, real) if self.augment is not None else self._d_loss_D


class Augmented(torch.nn.Module):
    """A discriminator that sees ``augment``-ed batches. Its logits on ``real`` (the real batch of the
    discriminator update it was made for, if any) go to ``augment.observe`` once."""

    def __init__(self, D, augment, real=None):
        super().__init__()
        self.D, self.augment, self._real = D, augment, real

    def forward(self, x, labels=None):
        out = self.D(self.augment(x), labels)
        if x is self._real:
            self._real = None
            self.augment.observe(out.detach())
        return out


def discriminator_loss(loss, D, real, fake, labels, scale):
    """``loss.discriminator_loss``, given the GradScaler's ``scale`` when it takes ``grad_scale`` (losses
    that differentiate through input gradients scale them against fp16 underflow)."""
    if _takes_grad_scale(type(loss)):
        return loss.discriminator_loss(D, real, fake, labels, grad_scale=scale)
    return loss.discriminator_loss(D, real, fake, labels)


@functools.lru_cache(maxsize=None)
def _takes_grad_scale(loss_class) -> bool:
    return "grad_scale" in inspect.signature(loss_class.discriminator_loss).parameters


def d_step(state: TrainState, nets: Nets, loss, real, labels, autocast, keep_graph: bool, skip: bool,
           r1: float = 0.0, r2: float = 0.0):
    """One discriminator update on a real batch and a fresh fake one; returns (d_loss, fake).
    With ``keep_graph`` the fake batch keeps its graph, for the G step to reuse. ``r1`` and ``r2`` weigh
    the R1 and R2 penalties added to this update (lazy regularization passes them on its steps only,
    already multiplied by the interval)."""
    z = torch.randn(real.shape[0], state.G.latent_dim, device=real.device)
    with autocast():
        with torch.set_grad_enabled(keep_graph):
            fake = nets.G(z, labels).to(real.dtype)  # one dtype into D: one compiled graph
        scale = state.scaler_d._get_scale_async() if state.scaler_d.is_enabled() else 1.0  # no host sync
        d_loss = discriminator_loss(loss, nets.d_for_d_loss(real), real, fake.detach(), labels, scale)
        total = d_loss
        for gamma, x in ((r1, real), (r2, fake)):
            if gamma:
                total = total + gamma / 2 * penalties.squared_gradient_norm(nets.d_plain, x, labels, scale)
    if state.update(total, state.opt_d, state.scaler_d, skip):
        loss.after_discriminator_step(state.D)
    return d_loss, fake


def g_step(state: TrainState, nets: Nets, loss, real, labels, autocast, fake, skip: bool):
    """One generator update through the frozen D; ``fake`` is the D step's batch to reuse, or None
    to draw a new one. Returns g_loss."""
    with autocast():
        if fake is None:
            z = torch.randn(real.shape[0], state.G.latent_dim, device=real.device)
            fake = nets.G(z, labels).to(real.dtype)
        g_loss = loss.generator_loss(nets.d_for_g_loss, real, fake, labels)
    state.update(g_loss, state.opt_g, state.scaler_g, skip)
    return g_loss


class Run:
    """What callbacks see of a run in progress: ``cfg``, ``run_dir``, ``state`` (its ``step``,
    ``G``, ``D``, ``generator``), ``total`` steps, ``data``, and the fixed-noise samples."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, state: TrainState, data, total: int, device):
        self.cfg, self.run_dir, self.state, self.data, self.total = cfg, run_dir, state, data, total
        g = torch.Generator().manual_seed(cfg.seed + 1)
        self.z = torch.randn(SAMPLES, state.G.latent_dim, generator=g).to(device)
        classes = getattr(state.G, "num_classes", None)
        self.labels = (torch.arange(SAMPLES) % classes).to(device) if classes else None
        self.reference = None  # real points drawn under generated ones
        if isinstance(data, Data) and not data.is_image:
            idx = torch.randperm(len(data), generator=g)[:2000].to(data.x.device)
            self.reference = data.batch(idx)[0].cpu().numpy()
        self._samples = self._picture = (None, None)  # (step, value): computed once per step
        self.stop_reason = None  # set by :meth:`stop`
        self.record = None  # run.json as this process started it (rank 0)

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def title(self) -> str:
        return f"{self.cfg.arch}/{self.cfg.loss} step {self.step}"

    @torch.no_grad()
    def samples(self) -> torch.Tensor:
        """The generator's (EMA's) samples of the fixed noise at this step, float32 on the CPU."""
        if self._samples[0] != self.step:
            G = self.state.generator
            was_training = G.training
            G.eval()
            x = G(self.z, self.labels).float().cpu()
            G.train(was_training)
            self._samples = (self.step, x)
        return self._samples[1]

    def samples_picture(self):
        """:meth:`samples` drawn as a picture (grid, scatter over the data, or histogram)."""
        from ganforge import plotting

        if self._picture[0] != self.step:
            classes = getattr(self.state.G, "num_classes", None)
            picture = plotting.samples_picture(self.samples().numpy(), self.reference, title=self.title,
                                               nrow=classes if classes and classes <= 16 else None)
            self._picture = (self.step, picture)
        return self._picture[1]

    def stop(self, reason: str) -> None:
        """End the run after the next step, checkpointed, as finished early (run.json: status "stopped"
        and ``stop_reason``); for callbacks such as early stopping or a tuner's pruning."""
        self.stop_reason = reason

    def due(self, every: int) -> bool:
        """Whether this step is one of every ``every`` steps, or the last."""
        return self.step % every == 0 or self.step == self.total


def train(cfg: TrainConfig, run_dir: Path | None = None, resume: bool = False, progress: bool = True,
          overwrite: bool = False, callbacks=()) -> Path:
    """Train into ``run_dir`` (when None, a new directory under ``cfg.out_dir``); with ``resume``,
    continue ``run_dir`` from its newest readable checkpoint. ``callbacks`` (Callback objects) run
    beside the built-in ones and those named in ``cfg.loggers``. Returns the run directory.

    Under torchrun every process calls this; each trains on its shard and rank 0 writes."""
    parts = setup(cfg, run_dir if resume else None, callbacks, progress)  # everything that can fail on bad input
    run = open_run(cfg, parts, run_dir, resume, overwrite)  # only now is anything written
    status = "failed"  # run.json's status when this process stops
    try:
        parts.callbacks.notify("on_start", run)
        status = loop(cfg, parts, run)
    except Interrupted:
        status = "stopped"
        raise
    except TrainingDiverged:
        status = "diverged"
        raise
    except CallbackRaised as failure:
        who, logger = parts.callbacks.drop(failure.callback)
        if not checkpoint.path_of(run.run_dir, run.step).exists():
            save_checkpoint(parts, run)  # nothing done since the last checkpoint is lost
        raise CallbackFailed(callback_failure(failure, who, logger, run)) from None
    finally:
        parts.callbacks.notify_end(run)
        if parts.main and run.run_dir.is_dir():
            reason = {"stop_reason": run.stop_reason} if status == "stopped" and run.stop_reason else {}
            rundir.write_record(run.run_dir, {**run.record, "status": status, "step": run.step, **reason})
    if parts.main:
        print(f"{f'stopped early ({run.stop_reason})' if status == 'stopped' else 'done'}: {run.run_dir} "
              f"(last checkpoint step-{run.step}"
              f"{f', best {cfg.keep_best} {parts.best:.4g} in checkpoints/best' if parts.best is not None else ''}"
              f"{f', {parts.state.skipped} updates skipped' if parts.state.skipped else ''}, samples in "
              f"{run.run_dir / rundir.SAMPLES})")
    distributed.shutdown()
    return run.run_dir


@dataclass
class Parts:
    """What a run trains with, built by :func:`setup`."""

    registry: object
    rank: int  # this process, of ``world``; rank 0 writes
    world: int
    device: torch.device
    loss: GANLoss
    stream: object  # the batches (``stream.next()``); ``stream.data`` is the data
    spec: object  # the data's DataSpec
    state: TrainState  # G, D, EMA, optimizers, step
    total: int  # steps
    nets: Nets  # what the steps call (compiled, DDP-wrapped, augmented)
    evaluator: object  # --eval-every's, or None
    callbacks: Callbacks
    autocast: object  # a context manager factory
    meta: dict  # what run.json and every checkpoint record of the run
    best: float | None = None  # the --keep-best metric's best value so far

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def data(self):
        return self.stream.data


def setup(cfg: TrainConfig, resume_dir: Path | None, callbacks=(), progress: bool = True) -> Parts:
    """Build every part of a run and check it, before anything is written: the settings against each other,
    each plugin part against its contract, the loss on a dry step; with ``resume_dir``, the state of its
    newest readable checkpoint. The global random stream is drawn from as a run always has (the models'
    initial weights), so runs stay bit-identical."""
    registry = get_registry()
    torch.set_num_threads(cfg.threads or default_threads())
    rank, world, local_rank = distributed.world()
    device = resolve_device(cfg.device, cfg.precision)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
        if cfg.compile:
            raise UsageError("--compile is not supported with several processes yet; drop --compile")
        distributed.init(device)
    loss = registry.create("losses", cfg.loss, **cfg.loss_options)
    refuse_conflicts(cfg)
    if cfg.keep_best and not cfg.eval_every:
        raise UsageError(f"--keep-best {cfg.keep_best} needs --eval-every N: metrics are computed only then")
    loss_entry = registry.get("losses", cfg.loss)
    contracts.check_part(loss, GANLoss, contracts.describe(loss_entry), ("discriminator_loss", "generator_loss"))
    callbacks = Callbacks(registry, cfg.loggers, callbacks, progress) if rank == 0 else Callbacks(registry, (), (), False)

    # data and models; the same initial weights on every rank
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.dataset, cfg.data_root, cfg.image_size, cfg.download, cfg.data_options, cfg.data_path,
                     registry)
    stream = batches(data, cfg.batch_size, cfg.seed, device, rank, world)
    data = stream.data
    spec = data_spec(data, cfg.conditional, cfg.dataset)
    G, D = build_models(cfg, spec, registry)
    if cfg.standardize:
        if not isinstance(data, Data):  # --data-path auto chose to stream it
            raise UsageError("--standardize needs the data in memory; drop --data-path stream")
        for model in (G, D):
            model.set_statistics(data.x.float())  # on the training device; copied into the buffers
    augment = augmentation(cfg, spec, registry, device)
    state = TrainState(cfg, G.to(device), D.to(device), stream, device, augment)
    total = math.ceil(cfg.epochs * stream.per_epoch / cfg.d_steps) if cfg.epochs else cfg.steps
    if resume_dir is not None:
        path, saved = checkpoint.load_latest(resume_dir, warn=lambda m: print(m, file=sys.stderr))
        state.load_state_dict(saved, path, restore_rng=world == saved.get("world_size", 1))
    if cfg.channels_last and spec.is_image:
        G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)  # in place
    if world > 1:  # every rank draws its own noise
        torch.manual_seed(cfg.seed + 1_000_003 * rank + state.step)
    nets = Nets(cfg, state, loss, world)
    evaluator = make_evaluator(cfg, data, spec, device, registry) if rank == 0 and cfg.eval_every else None
    amp_dtype = AMP_DTYPES[cfg.precision]
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else nullcontext
    dry_step(cfg, state, spec, loss, loss_entry, autocast)
    meta = {"ganforge_version": __version__,
            "providers": providers(cfg, registry, evaluator.extractor_name if evaluator is not None else None),
            "data_shape": list(data.shape), "num_classes": spec.num_classes, "world_size": world}
    return Parts(registry, rank, world, device, loss, stream, spec, state, total, nets, evaluator, callbacks, autocast,
                 meta)


def dry_step(cfg: TrainConfig, state: TrainState, spec, loss, loss_entry, autocast) -> None:
    """The loss's two methods once, on copies of the loss, G and D and a random batch of the run's batch
    size, checked against the loss contract; the run's loss, models, optimizers and random stream are
    untouched."""
    loss, G, D = copy.deepcopy(loss), copy.deepcopy(state.G), copy.deepcopy(state.D)
    device, n = state.device, cfg.batch_size  # the shapes the loss will see
    with contracts.forked_rng(device):
        real = torch.rand(n, *spec.shape, device=device) * 2 - 1
        labels = torch.randint(spec.num_classes, (n,), device=device) if spec.num_classes else None
        z = torch.randn(n, G.latent_dim, device=device)
        with autocast():
            fake = G(z, labels).to(real.dtype)
            d_loss = discriminator_loss(loss, D, real, fake.detach(), labels, 1.0)
        contracts.check_loss_value(d_loss, loss_entry, "discriminator_loss")
        with autocast():
            g_loss = loss.generator_loss(D.requires_grad_(False), real, fake, labels)
        contracts.check_loss_value(g_loss, loss_entry, "generator_loss")


def open_run(cfg: TrainConfig, parts: Parts, run_dir: Path | None, resume: bool, overwrite: bool) -> Run:
    """The run directory (a new one unless ``resume``) with its config.toml and run.json, and the
    :class:`Run` the callbacks see."""
    state, record = parts.state, None
    if parts.main:
        run_dir = Path(run_dir) if run_dir is not None else rundir.new_run_dir(
            cfg.out_dir, cfg.name, f"{cfg.arch}-{cfg.loss}-{cfg.dataset}", overwrite)
        (run_dir / rundir.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        for stale in (run_dir / rundir.CHECKPOINTS).glob(".tmp-*"):  # a write cut short by a crash
            stale.unlink()
        before = rundir.read_record(run_dir) if resume else {}
        history = before.get("history", [])
        changed = rundir.changes(load_toml(run_dir / rundir.CONFIG), cfg.to_dict()) if resume else None
        (run_dir / rundir.CONFIG).write_text(to_toml(cfg.to_dict()))
        if resume:
            print(resume_line(run_dir, state.step, changed, history, cfg, parts.total), flush=True)
            best = checkpoint.path_of(run_dir, rundir.BEST)
            if cfg.keep_best and best.is_file():
                saved = checkpoint.load(best).get("best") or {}
                parts.best = saved.get("value") if saved.get("metric") == cfg.keep_best else None
        history.append({"step": state.step, "total": parts.total, "ganforge_version": __version__,
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **({"changed": changed} if resume else {})})
        recipes = before.get("recipes", []) if resume else used_recipes(cfg, parts.registry)
        record = {**parts.meta, "recipes": recipes, "history": history, "status": "running", "pid": os.getpid(),
                  "host": socket.gethostname()}
        rundir.write_record(run_dir, record)
    run = Run(cfg, distributed.broadcast(run_dir), state, parts.data, parts.total, parts.device)
    run.record = record
    return run


def loop(cfg: TrainConfig, parts: Parts, run: Run) -> str:
    """Alternate discriminator and generator updates until the run's last step, calling the callbacks
    after each; returns the run's status ("finished", or "stopped" when a callback asked)."""
    state, nets, loss, stream, device = parts.state, parts.nets, parts.loss, parts.stream, parts.device
    # With one D and one G update per iteration the G update reuses the D update's fake batch
    # (as Radford et al.'s and PyTorch's DCGAN code do): one generator forward per iteration.
    reuse_fake = cfg.d_steps == 1 and cfg.g_steps == 1
    channels_last = cfg.channels_last and parts.spec.is_image
    skip = cfg.on_nonfinite == "skip"
    check_every = 1 if device.type == "cpu" else cfg.log_every  # host syncs cost nothing on CPU
    header = FirstLine(cfg, parts, run) if parts.main else None
    t0, step0, last_save = time.perf_counter(), state.step, time.monotonic()
    bad_step = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite loss
    bad_losses = torch.zeros(2, device=device)
    state.G.train()
    state.D.train()
    with StopSignals() as signals:
        while state.step < run.total:
            if cfg.lr_decay == "linear":  # a function of the step alone: resumes exactly
                for optimizer, lr in ((state.opt_g, cfg.lr_g), (state.opt_d, cfg.lr_d)):
                    for group in optimizer.param_groups:
                        group["lr"] = lr * (1 - state.step / run.total)
            # ---- discriminator: d_steps updates on fresh real batches, generator frozen
            for i in range(cfg.d_steps):
                real, labels = stream.next()
                if channels_last:
                    real = real.contiguous(memory_format=torch.channels_last)
                lazy = cfg.reg_every if (state.step * cfg.d_steps + i) % cfg.reg_every == 0 else 0
                d_loss, fake = d_step(state, nets, loss, real, labels, parts.autocast, reuse_fake, skip,
                                      cfg.r1 * lazy, cfg.r2 * lazy)
            # ---- generator: g_steps updates through a frozen discriminator
            state.D.requires_grad_(False)
            for _ in range(cfg.g_steps):
                g_loss = g_step(state, nets, loss, real, labels, parts.autocast, fake if reuse_fake else None, skip)
            state.D.requires_grad_(True)
            if state.ema is not None:
                update_ema(state.ema, state.G, ema_decay_at(cfg.ema_decay, state.step, cfg.ema_rampup))
            state.step += 1
            step = state.step
            printing = run.due(cfg.log_every) or run.due(cfg.eval_every or run.total)
            if header is not None and header.timed(step, now_or_never=printing):
                header = None
            if not skip:  # remember the first non-finite step on the device: no host sync here
                losses = torch.stack([d_loss.detach().float(), g_loss.detach().float()])
                newly = (bad_step < 0) & ~torch.isfinite(losses).all()
                bad_step = torch.where(newly, step, bad_step)
                bad_losses = torch.where(newly, losses, bad_losses)

            # ---- bookkeeping: host syncs only every check_every / log_every steps
            log_now = run.due(cfg.log_every)
            stop = distributed.any_rank(signals.signum is not None or run.stop_reason is not None,
                                        device)  # ranks stop together
            save_now = (run.due(cfg.checkpoint_every) or bool(stop)
                        or time.monotonic() - last_save >= cfg.checkpoint_minutes * 60)
            if not skip and (step % check_every == 0 or log_now or save_now) and bad_step.item() >= 0:
                d_bad, g_bad = bad_losses.tolist()
                raise TrainingDiverged(f"non-finite loss at step {bad_step.item()} (d_loss={d_bad}, "
                                       f"g_loss={g_bad}); stopped, the last good checkpoint is kept in "
                                       f"{run.run_dir / rundir.CHECKPOINTS}. Lower the learning rates, or pass "
                                       "--on-nonfinite skip")
            record = None
            if log_now and parts.main:
                elapsed = time.perf_counter() - t0
                record = {"step": step, "d_loss": d_loss.item(), "g_loss": g_loss.item(),
                          "images_per_s": (step - step0) * cfg.d_steps * cfg.batch_size * parts.world
                          / max(elapsed, 1e-9)}
                if skip:
                    record["skipped"] = state.skipped
                if state.augment is not None:
                    record.update({k: float(v) for k, v in state.augment.log().items()})
                t0, step0 = time.perf_counter(), step
            parts.callbacks.notify("on_step", run, record)
            if parts.evaluator is not None and run.due(cfg.eval_every):
                evaluate_and_keep_best(cfg, parts, run)
            if parts.main and save_now:
                save_checkpoint(parts, run)
                last_save = time.monotonic()
            if stop and signals.signum is None:  # a callback asked (Run.stop)
                return "stopped"
            if stop:
                signum = signals.signum or signal.SIGTERM
                distributed.shutdown()
                raise Interrupted(f"stopped at step {step} ({signal.Signals(signum).name}); checkpoint "
                                  f"step-{step} written. Continue with: ganforge train --resume {run.run_dir}",
                                  signum)
    return "finished"


class FirstLine:
    """A run's first line: what trains on what, the steps, the EMA's warm-up, and how long the steps take here,
    printed once the first steps after the first (which warms up) have been timed: up to 20 of them or 2 s, or
    fewer where the run would print something else first."""

    def __init__(self, cfg: TrainConfig, parts: Parts, run: Run):
        self.text = (
            f"run {run.run_dir}: G {cfg.arch}, D {cfg.d_arch or cfg.arch}, loss {cfg.loss}, data {cfg.dataset} "
            f"{len(parts.data)}x{'x'.join(map(str, parts.data.shape))}, {parts.device} {cfg.precision}"
            f"{' compiled' if cfg.compile else ''}{f', {parts.world} processes' if parts.world > 1 else ''}, "
            f"steps {parts.state.step}->{run.total}")
        self.ema = (f", EMA {cfg.ema_decay} (until step {ema_warmup_steps(cfg.ema_decay, cfg.ema_rampup)} over "
                    f"about the last {cfg.ema_rampup or '1/9'} of the steps)" if cfg.ema else "")
        self.total, self.images = run.total, cfg.d_steps * cfg.batch_size * parts.world
        self.start = None  # (time, step) at the end of the first step

    def timed(self, step: int, now_or_never: bool) -> bool:
        """Called after each step; prints the line and returns True once it is known how long the steps take,
        or at once where ``now_or_never``."""
        now = time.perf_counter()
        if self.start is None and not now_or_never:
            self.start = (now, step)
            return False
        if not now_or_never and step - self.start[1] < 20 and now - self.start[0] < 2:
            return False
        estimate = ""
        if self.start is not None and step > self.start[1]:
            per_step = (now - self.start[0]) / (step - self.start[1])
            estimate = (f" (about {rundir.duration(per_step * (self.total - self.start[1] + 1))} here, "
                        f"{self.images / per_step:.0f} images/s)")
        print(self.text + estimate + self.ema, flush=True)
        return True


def save_checkpoint(parts: Parts, run: Run, name: str | None = None, **extra) -> None:
    """checkpoints/step-N (the last few are kept), or checkpoints/<name> with ``extra`` metadata."""
    state, run_dir = parts.state, run.run_dir
    if not all(torch.isfinite(p).all() for p in [*state.G.parameters(), *state.D.parameters()]):
        raise TrainingDiverged(f"non-finite weights at step {state.step}; the last good checkpoint is kept "
                               f"in {run_dir / rundir.CHECKPOINTS}; lower the learning rates")
    path = checkpoint.path_of(run_dir, state.step if name is None else name)
    checkpoint.save(path, {**extra, **state.state_dict(), "config": run.cfg.to_dict(), **parts.meta})
    if name is None:
        for old in checkpoint.checkpoints(run_dir)[:-run.cfg.keep_checkpoints]:
            old.unlink()
    parts.callbacks.notify("on_checkpoint", run, path)


def evaluate_and_keep_best(cfg: TrainConfig, parts: Parts, run: Run) -> None:
    """Metrics of the (EMA) generator; a new best is saved as checkpoints/best."""
    model, device = parts.state.generator, parts.device
    was_training = model.training
    model.eval()
    try:
        result = parts.evaluator(lambda z, labels: model(z.to(device), None if labels is None else labels.to(device)),
                                 parts.state.G.latent_dim, parts.spec.num_classes)
    finally:
        model.train(was_training)
    parts.callbacks.notify("on_evaluate", run, result)
    line = ", ".join(f"{k} {v:.4g}" for k, v in result.items())
    if cfg.keep_best:
        value, best = result[cfg.keep_best], parts.best
        higher_is_better = cfg.keep_best in HIGHER_IS_BETTER
        if math.isfinite(value) and (best is None or (value > best if higher_is_better else value < best)):
            parts.best = value
            save_checkpoint(parts, run, rundir.BEST, best={"metric": cfg.keep_best, "value": value, "step": run.step})
            line += f"; best {cfg.keep_best} so far, saved as checkpoints/best"
    print(f"step {run.step}: {line}", flush=True)


def resume_line(run_dir, step: int, changed: dict, history: list, cfg: TrainConfig, total: int) -> str:
    """What a resume changes, in one line; with a linear lr decay and a new length, where the rates jump."""
    line = f"resuming {run_dir} at step {step}: " + (
        ", ".join(f"{key} {_short(b)} -> {_short(a)}" for key, (b, a) in changed.items()) or "no setting changed")
    before = history[-1].get("total") if history else None
    if cfg.lr_decay == "linear" and before not in (None, total):
        old = changed.get("lr_g", [cfg.lr_g])[0] * (1 - step / before)
        line += (f" (the linear lr decay now ends at step {total} instead of {before}: lr_g goes from "
                 f"{old:.3g} to {cfg.lr_g * (1 - step / total):.3g} here)")
    return line


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, (dict, list)) \
        else str(value)


def augmentation(cfg: TrainConfig, spec, registry, device):
    """The ``--augment NAME`` object with its ``--augment-opt`` options, or None; checked against the
    Augmentation contract on a dummy batch (on a forked RNG: the run's random stream is untouched)."""
    if cfg.augment is None:
        return None
    name = cfg.augment
    plugin_name, _, bare = name.rpartition(":")
    if plugin_name in registry.names("augmentations") and plugin_name not in {p.name for p in registry.plugins}:
        raise UsageError(f"--augment {name}: the policy has its own option now; use --augment {plugin_name} "
                         f"--augment-opt policy={bare}")
    who = contracts.describe(registry.get("augmentations", name))
    augment = registry.create("augmentations", name, spec, **cfg.augment_options)
    contracts.check_part(augment, Augmentation, who, ("__call__",))
    with contracts.forked_rng(device):  # the dummy batch too: the run's random stream is untouched
        x = (torch.rand(2, *spec.shape, device=device) * 2 - 1).requires_grad_()
        contracts.check_augmentation_output(augment(x), x, who)
    return augment


class CallbackRaised(Exception):
    """A callback's exception, on its way from :meth:`Callbacks.notify` to the loop that checkpoints."""

    def __init__(self, callback, event: str):
        super().__init__(event)
        self.callback, self.event = callback, event


class Callbacks:
    """The run's callbacks, in order: the run directory's own (metrics, samples), the ``--logger`` ones,
    those passed in, and the progress display. Each is checked against the Callback contract first.
    One that raises stops the run (:class:`CallbackRaised`), except in ``on_end``, where the others
    still run and the failure is a warning."""

    def __init__(self, registry, loggers, given, progress: bool):
        self.items = []  # (callback, description, --logger name or None)
        for name in (*DEFAULT_CALLBACKS, *loggers):
            who = contracts.describe(registry.get("callbacks", name))
            callback = registry.create("callbacks", name)
            contracts.check_part(callback, Callback, who)
            self.items.append((callback, who, name if name in loggers else None))
        for i, callback in enumerate(given):
            who = f"callback {i + 1} of the callbacks given ({type(callback).__name__})"
            contracts.check_part(callback, Callback, who)
            self.items.append((callback, who, None))
        if progress:  # last, so that it shows what the others did
            self.items.append((registry.create("callbacks", PROGRESS), "the progress display", None))

    def notify(self, event: str, run, *args) -> None:
        for callback, _, _ in self.items:
            try:
                getattr(callback, event)(run, *args)
            except Exception as exc:
                raise CallbackRaised(callback, event) from exc

    def notify_end(self, run) -> None:
        for callback, who, _ in self.items:
            try:
                callback.on_end(run)
            except Exception as exc:
                print(f"Warning: {who} failed in on_end: {type(exc).__name__}: {exc}".splitlines()[0],
                      file=sys.stderr)

    def drop(self, callback) -> tuple:
        """Stop calling ``callback``; its (description, --logger name or None)."""
        who, logger = next((w, n) for c, w, n in self.items if c is callback)
        self.items = [item for item in self.items if item[0] is not callback]
        return who, logger


def callback_failure(failure: CallbackRaised, who: str, logger: str | None, run) -> str:
    """The one line for a failed callback (its traceback goes to the run's error.txt): who failed, where
    and how, that the run is checkpointed, and how to continue without it."""
    import traceback

    exc = failure.__cause__
    (run.run_dir / rundir.ERROR).write_text("".join(traceback.format_exception(exc)))
    line = (f"{who} failed in {failure.event} at step {run.step}: " + f"{type(exc).__name__}: {exc}".splitlines()[0]
            + f"; checkpoint step-{run.step} is written, the traceback is in {run.run_dir / rundir.ERROR}. ")
    if logger is None:
        return line + f"Continue without that callback: ganforge train --resume {run.run_dir}"
    flags = " ".join(f"--logger {n}" for n in run.cfg.loggers if n != logger) or "--logger none"
    return line + f"Continue without it: ganforge train --resume {run.run_dir} {flags}"


def parts(cfg: TrainConfig, extractor: str | None = None) -> dict:
    """``{part: (kind, name)}`` for every plugin part a run uses: models, loss, data, the augmentation,
    the ``--logger`` callbacks (``logger NAME``) and the evaluation's feature ``extractor``."""
    names = {"arch": cfg.arch, "d_arch": cfg.d_arch or cfg.arch, "loss": cfg.loss, "dataset": cfg.dataset,
             "augmentation": cfg.augment, **{f"logger {name}": name for name in cfg.loggers}, "extractor": extractor}
    return {part: (part_kind(part), name) for part, name in names.items() if name}


def providers(cfg: TrainConfig, registry=None, extractor: str | None = None) -> dict:
    """Which plugin, package and version provided each part of the run (:func:`parts`)."""
    registry = registry or get_registry()
    out = {}
    for part, (kind, name) in parts(cfg, extractor).items():
        entry = registry.get(kind, name)
        out[part] = {"kind": kind, "name": entry.name, "plugin": entry.plugin.name,
                     "package": entry.plugin.package, "version": entry.plugin.version}
    return out


def in_use(recorded: dict, cfg: TrainConfig) -> dict:
    """The recorded providers (run.json) of the parts a resumed run with ``cfg`` still uses: a logger
    left out with ``--logger``, or an extractor replaced with ``--eval-extractor``, is not needed."""
    used = parts(cfg)

    def needed(part, info) -> bool:
        if part == "extractor":
            return bool(cfg.eval_every) and cfg.eval_extractor in (None, info["name"])
        return part in used

    return {part: info for part, info in recorded.items() if needed(part, info)}


def make_evaluator(cfg: TrainConfig, data, spec, device, registry):
    """The Evaluator of ``--eval-every``; UsageError when ``--keep-best`` names a metric it does not compute, or
    intra-fid is asked of an unconditional run."""
    from ganforge.evaluation import Evaluator
    from ganforge.metrics import GROUPS, parse_metrics

    evaluator = Evaluator(data, parse_metrics(cfg.eval_metrics), cfg.eval_extractor, cfg.eval_samples, cfg.seed,
                          device, registry=registry)
    if not spec.num_classes and "intra-fid" in evaluator.groups:
        if not evaluator.defaults:
            raise UsageError("--eval-metrics intra-fid compares each class's samples: it needs a class-conditional "
                             "run (drop --unconditional, or drop intra-fid)")
        evaluator.groups.remove("intra-fid")  # never scored here: --keep-best cannot name it
    if cfg.keep_best:
        if not any(cfg.keep_best in GROUPS[g] for g in evaluator.groups):
            raise UsageError(f"--keep-best {cfg.keep_best} is not among the metrics evaluated "
                             f"({', '.join(evaluator.groups)}); add it to --eval-metrics")
    return evaluator


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

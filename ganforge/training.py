"""The training engine, readable top to bottom. :func:`train` is :func:`setup` (build every part of a run
from the registry and check it, on a dry step too, before anything is written), :func:`open_run` (the
run directory) and :func:`loop` (alternate discriminator and generator updates; callbacks log, draw
and report on the way).

What a checkpoint holds is :class:`ganforge.state.TrainState`; what callbacks see, and how they are called,
:mod:`ganforge.callbacks`. ``ganforge train`` and :func:`ganforge.train` call :func:`train` with a config
built by :func:`ganforge.layering.build`; the run directory's file names are :mod:`ganforge.rundir`'s.
"""
from __future__ import annotations

import math
import os
import signal
import socket
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ganforge import checkpoint, contracts, distributed, penalties, rundir
from ganforge.callbacks import CallbackRaised, Callbacks, Run, failure_line
from ganforge.config import STANDARDIZE_IN_MEMORY, TrainConfig, load_toml, refuse_conflicts, to_toml
from ganforge.data import batches, load_data
from ganforge.device import AMP_DTYPES, default_threads, resolve_device
from ganforge.errors import CallbackFailed, Interrupted, TrainingDiverged, UsageError
from ganforge.evaluation import for_training
from ganforge.interfaces import Data, GANLoss
from ganforge.layering import resume_line
from ganforge.metrics import HIGHER_IS_BETTER
from ganforge.models import Augmented, build_models, data_spec
from ganforge.plugins import get_registry, providers
from ganforge.recipes import used as used_recipes
from ganforge.signals import StopSignals
from ganforge.state import NonFiniteWatch, TrainState, ema_decay_at, ema_warmup_steps, update_ema
from ganforge.version import __version__


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
        if not rundir.path_of(run.run_dir, run.step).exists():
            save_checkpoint(parts, run)  # nothing done since the last checkpoint is lost
        raise CallbackFailed(failure_line(failure, who, logger, run)) from None
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
    loss = contracts.create(registry, "losses", cfg.loss, **cfg.loss_options)
    refuse_conflicts(cfg)
    if cfg.keep_best and not cfg.eval_every:
        raise UsageError(f"--keep-best {cfg.keep_best} needs --eval-every N: metrics are computed only then")
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
            raise UsageError(STANDARDIZE_IN_MEMORY)
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
    evaluator = for_training(cfg, data, spec.num_classes, device, registry) if rank == 0 and cfg.eval_every else None
    amp_dtype = AMP_DTYPES[cfg.precision]
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else nullcontext
    contracts.check_loss(loss, registry.get("losses", cfg.loss), G, D, spec, cfg.batch_size, device, autocast)
    meta = {"ganforge_version": __version__,
            "providers": providers(cfg, registry, evaluator.extractor_name if evaluator is not None else None),
            "data_shape": list(data.shape), "num_classes": spec.num_classes, "world_size": world}
    return Parts(registry, rank, world, device, loss, stream, spec, state, total, nets, evaluator, callbacks, autocast,
                 meta)


def augmentation(cfg: TrainConfig, spec, registry, device):
    """The ``--augment NAME`` object with its ``--augment-opt`` options, or None; checked against the
    Augmentation contract on a dummy batch (on a forked RNG: the run's random stream is untouched)."""
    if cfg.augment is None:
        return None
    plugin_name, _, bare = cfg.augment.rpartition(":")
    if plugin_name in registry.names("augmentations") and plugin_name not in {p.name for p in registry.plugins}:
        raise UsageError(f"--augment {cfg.augment}: the policy has its own option now; use --augment {plugin_name} "
                         f"--augment-opt policy={bare}")
    augment = contracts.create(registry, "augmentations", cfg.augment, spec, **cfg.augment_options)
    contracts.check_augmentation(augment, spec, device, registry.get("augmentations", cfg.augment))
    return augment


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
            best = rundir.path_of(run_dir, rundir.BEST)
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
    """Training iterations until the run's last step, calling the callbacks after each; returns the run's
    status ("finished", or "stopped" when a callback asked)."""
    state, device = parts.state, parts.device
    skip = cfg.on_nonfinite == "skip"
    check_every = 1 if device.type == "cpu" else cfg.log_every  # host syncs cost nothing on CPU
    header = FirstLine(cfg, parts, run) if parts.main else None
    speed, last_save, watch = Speed(state.step), time.monotonic(), NonFiniteWatch(device)
    state.G.train()
    state.D.train()
    with StopSignals() as signals:
        while state.step < run.total:
            d_loss, g_loss = iteration(cfg, parts, run.total)
            step = state.step
            printing = run.due(cfg.log_every) or run.due(cfg.eval_every or run.total)
            if header is not None and header.timed(step, now_or_never=printing):
                header = None
            if not skip:
                watch.note(step, d_loss, g_loss)

            # ---- bookkeeping: host syncs only every check_every / log_every steps
            log_now = run.due(cfg.log_every)
            stop = distributed.any_rank(signals.signum is not None or run.stop_reason is not None,
                                        device)  # ranks stop together
            save_now = (run.due(cfg.checkpoint_every) or bool(stop)
                        or time.monotonic() - last_save >= cfg.checkpoint_minutes * 60)
            if not skip and (step % check_every == 0 or log_now or save_now):
                watch.check(run.run_dir)
            record = log_record(cfg, parts, speed, d_loss, g_loss) if log_now and parts.main else None
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


def iteration(cfg: TrainConfig, parts: Parts, total: int) -> tuple:
    """One training iteration: ``d_steps`` discriminator updates on fresh real batches, ``g_steps`` generator
    updates through the frozen discriminator, the EMA; returns the last (d_loss, g_loss)."""
    state, nets, loss, stream, autocast = parts.state, parts.nets, parts.loss, parts.stream, parts.autocast
    # With one D and one G update per iteration the G update reuses the D update's fake batch
    # (as Radford et al.'s and PyTorch's DCGAN code do): one generator forward per iteration.
    reuse_fake = cfg.d_steps == 1 and cfg.g_steps == 1
    skip = cfg.on_nonfinite == "skip"
    if cfg.lr_decay == "linear":  # a function of the step alone: resumes exactly
        for optimizer, lr in ((state.opt_g, cfg.lr_g), (state.opt_d, cfg.lr_d)):
            for group in optimizer.param_groups:
                group["lr"] = lr * (1 - state.step / total)
    for i in range(cfg.d_steps):
        real, labels = stream.next()
        if cfg.channels_last and parts.spec.is_image:
            real = real.contiguous(memory_format=torch.channels_last)
        lazy = cfg.reg_every if (state.step * cfg.d_steps + i) % cfg.reg_every == 0 else 0
        d_loss, fake = d_step(state, nets, loss, real, labels, autocast, reuse_fake, skip, cfg.r1 * lazy,
                              cfg.r2 * lazy)
    state.D.requires_grad_(False)
    for _ in range(cfg.g_steps):
        g_loss = g_step(state, nets, loss, real, labels, autocast, fake if reuse_fake else None, skip)
    state.D.requires_grad_(True)
    if state.ema is not None:
        update_ema(state.ema, state.G, ema_decay_at(cfg.ema_decay, state.step, cfg.ema_rampup))
    state.step += 1
    return d_loss, g_loss


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
        d_loss = contracts.discriminator_loss(loss, nets.d_for_d_loss(real), real, fake.detach(), labels, scale)
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


class Speed:
    """Images per second since the last log record."""

    def __init__(self, step: int):
        self.time, self.step = time.perf_counter(), step

    def since_last(self, step: int, images_per_step: int) -> float:
        now = time.perf_counter()
        rate = (step - self.step) * images_per_step / max(now - self.time, 1e-9)
        self.time, self.step = now, step
        return rate


def log_record(cfg: TrainConfig, parts: Parts, speed: Speed, d_loss, g_loss) -> dict:
    """metrics.jsonl's record of this step: the losses, the speed, the updates skipped, the augmentation's."""
    state = parts.state
    record = {"step": state.step, "d_loss": d_loss.item(), "g_loss": g_loss.item(),
              "images_per_s": speed.since_last(state.step, cfg.d_steps * cfg.batch_size * parts.world)}
    if cfg.on_nonfinite == "skip":
        record["skipped"] = state.skipped
    if state.augment is not None:
        record.update({k: float(v) for k, v in state.augment.log().items()})
    return record


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
    path = rundir.path_of(run_dir, state.step if name is None else name)
    state.save(path, {"config": run.cfg.to_dict(), **parts.meta}, **extra)
    if name is None:
        for old in rundir.checkpoints(run_dir)[:-run.cfg.keep_checkpoints]:
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

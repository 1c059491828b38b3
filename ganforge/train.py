"""The training loop, readable top to bottom: build the parts from the registry,
then alternate discriminator and generator updates, logging, sampling and
checkpointing on the way. ``train`` is what ``ganforge train`` calls."""
from __future__ import annotations

import copy
import json
import math
import re
import time
from pathlib import Path

import torch

from ganforge import __version__, checkpoint, plotting
from ganforge.config import TrainConfig, to_toml
from ganforge.errors import TrainingDiverged, UsageError
from ganforge.interfaces import Data, DataSpec
from ganforge.plugins import get_registry

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


def load_data(cfg: TrainConfig, registry=None) -> Data:
    registry = registry or get_registry()
    data = registry.create("datasets", cfg.dataset, cfg.data_root, cfg.image_size, cfg.download,
                           **cfg.data_options)
    if not isinstance(data, Data):
        raise UsageError(f"dataset '{cfg.dataset}' returned {type(data).__name__}, not ganforge.interfaces.Data")
    return data


def data_spec(cfg: TrainConfig, data: Data) -> DataSpec:
    if cfg.conditional and data.num_classes is None:
        raise UsageError(f"--conditional needs class labels, and dataset '{cfg.dataset}' has none")
    return DataSpec(data.shape, data.num_classes if cfg.conditional else None)


def build_models(cfg: TrainConfig, spec: DataSpec, registry=None):
    """The generator of ``cfg.arch`` and the discriminator of ``cfg.d_arch`` (default: the same)."""
    registry = registry or get_registry()
    G, D = registry.create("architectures", cfg.arch, spec, cfg.latent_dim, **cfg.arch_options)
    if cfg.d_arch and cfg.d_arch != cfg.arch:
        _, D = registry.create("architectures", cfg.d_arch, spec, cfg.latent_dim, **cfg.d_arch_options)
    for attr in ("latent_dim", "output_shape"):
        if not hasattr(G, attr):
            raise UsageError(f"architecture '{cfg.arch}' returned a generator without the .{attr} attribute")
    return G, D


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


def new_run_dir(cfg: TrainConfig) -> Path:
    """``<out_dir>/<arch>-<loss>-NNN``, the next free number; never an existing directory."""
    base = Path(cfg.out_dir)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{cfg.arch}-{cfg.loss}")
    base.mkdir(parents=True, exist_ok=True)
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
        if not data.is_image:  # real points drawn under generated ones
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


def _batches_per_epoch(cfg: TrainConfig, data: Data) -> int:
    if cfg.batch_size > len(data):
        raise UsageError(f"batch size {cfg.batch_size} is larger than the dataset ({len(data)} samples); "
                         "lower --batch-size")
    return len(data) // cfg.batch_size


def train(cfg: TrainConfig, run_dir: Path | None = None, resume_from: Path | None = None,
          progress: bool = True) -> Path:
    """Train into ``run_dir`` (a new ``<out_dir>/<arch>-<loss>-NNN`` when None), continuing
    from the checkpoint ``resume_from`` when given. Returns the run directory."""
    registry = get_registry()
    device = resolve_device(cfg.device, cfg.precision)
    loss = registry.create("losses", cfg.loss, **cfg.loss_options)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg, registry).to(device)
    spec = data_spec(cfg, data)
    G, D = build_models(cfg, spec, registry)
    G, D = G.to(device), D.to(device)
    ema = copy.deepcopy(G).requires_grad_(False) if cfg.ema else None
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas))
    amp_dtype = AMP_DTYPES[cfg.precision]
    scaler_g = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    scaler_d = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    # Compiled wrappers are used for the steps; the plain modules are what gets saved,
    # so checkpoints carry no `_orig_mod.` prefixes. Double backward (gradient
    # penalties) is not supported through compiled graphs: such losses get plain D.
    G_run, D_run = (torch.compile(G), torch.compile(D)) if cfg.compile else (G, D)
    D_for_d_loss = D if loss.double_backward else D_run

    per_epoch = _batches_per_epoch(cfg, data)
    total = math.ceil(cfg.epochs * per_epoch / cfg.d_steps) if cfg.epochs else cfg.steps
    step, drawn = 0, 0  # iterations done, real batches drawn
    if resume_from is not None:
        state = checkpoint.load(resume_from)
        try:
            G.load_state_dict(state["G"])
            D.load_state_dict(state["D"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
        except RuntimeError as exc:
            raise UsageError(f"checkpoint {resume_from} does not fit the run's models: "
                             f"{str(exc).splitlines()[0]}") from None
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        for scaler, saved in ((scaler_g, state["scaler_g"]), (scaler_d, state["scaler_d"])):
            if scaler.is_enabled() and saved:  # empty when the run was not fp16 until now
                scaler.load_state_dict(saved)
        torch.set_rng_state(state["rng"]["cpu"])
        if device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        step, drawn = state["step"], state["batches_drawn"]
    # Everything that can fail on bad input has run: only now is anything written.
    run_dir = run_dir or new_run_dir(cfg)
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, step)  # a resumed run drops what was logged after its checkpoint
    (run_dir / "config.toml").write_text(to_toml(cfg.to_dict()))
    meta = {"ganforge_version": __version__, "providers": providers(cfg, registry),
            "data_shape": list(data.shape), "num_classes": spec.num_classes}
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2) + "\n")

    def save_checkpoint():
        path = run_dir / "checkpoints" / f"step-{step}.safetensors"
        checkpoint.save(path, {
            "step": step, "batches_drawn": drawn, "config": cfg.to_dict(), **meta,
            "G": G.state_dict(), "D": D.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "scaler_g": scaler_g.state_dict(), "scaler_d": scaler_d.state_dict(),
            "rng": {"cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
        })
        for old in checkpoint.checkpoints(run_dir)[:-cfg.keep_checkpoints]:
            old.unlink()

    perm, perm_epoch = None, -1

    def next_batch():
        # A fresh permutation per epoch from (seed, epoch): a resumed run draws the same batches.
        nonlocal drawn, perm, perm_epoch
        epoch, pos = divmod(drawn, per_epoch)
        if epoch != perm_epoch:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            perm, perm_epoch = torch.randperm(len(data), generator=g).to(device), epoch
        drawn += 1
        return data.batch(perm[pos * cfg.batch_size:(pos + 1) * cfg.batch_size])

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    sampler = Sampler(G, data, cfg.seed, device)
    print(f"run {run_dir}: G {cfg.arch}, D {cfg.d_arch or cfg.arch}, loss {cfg.loss}, "
          f"data {cfg.dataset} {len(data)}x{'x'.join(map(str, data.shape))}, {device} {cfg.precision}"
          f"{' compiled' if cfg.compile else ''}, steps {step}->{total}")
    bar = _progress(progress, total, step)
    t0, step0 = time.perf_counter(), step
    G.train()
    D.train()
    while step < total:
        # ---- discriminator: d_steps updates on fresh real batches, generator frozen
        for _ in range(cfg.d_steps):
            real, labels = next_batch()
            z = torch.randn(real.shape[0], G.latent_dim, device=device)
            with autocast():
                with torch.no_grad():
                    fake = G_run(z, labels)
                loss.grad_scale = scaler_d.get_scale() if scaler_d.is_enabled() else 1.0
                d_loss = loss.discriminator_loss(D_for_d_loss, real, fake, labels)
            opt_d.zero_grad(set_to_none=True)
            scaler_d.scale(d_loss).backward()
            scaler_d.step(opt_d)
            scaler_d.update()
            loss.after_discriminator_step(D)
        # ---- generator: g_steps updates through a frozen discriminator
        D.requires_grad_(False)
        for _ in range(cfg.g_steps):
            z = torch.randn(real.shape[0], G.latent_dim, device=device)
            with autocast():
                g_loss = loss.generator_loss(D_run, real, G_run(z, labels), labels)
            opt_g.zero_grad(set_to_none=True)
            scaler_g.scale(g_loss).backward()
            scaler_g.step(opt_g)
            scaler_g.update()
        D.requires_grad_(True)
        if ema is not None:
            with torch.no_grad():
                # warm-up: early on, average over the steps there are (as TF's num_updates)
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                torch._foreach_lerp_(list(ema.parameters()), list(G.parameters()), 1 - decay)
                for b_ema, b in zip(ema.buffers(), G.buffers()):
                    b_ema.copy_(b)
        step += 1

        # ---- bookkeeping (the only host syncs: every log_every steps)
        if step % cfg.log_every == 0 or step == total:
            elapsed = time.perf_counter() - t0
            record = {"step": step, "d_loss": d_loss.item(), "g_loss": g_loss.item(),
                      "images_per_s": (step - step0) * cfg.d_steps * cfg.batch_size / max(elapsed, 1e-9)}
            if not (math.isfinite(record["d_loss"]) and math.isfinite(record["g_loss"])):
                raise TrainingDiverged(f"training diverged at step {step}: d_loss={record['d_loss']}, g_loss="
                                       f"{record['g_loss']}; lower the learning rates or try another loss")
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            t0, step0 = time.perf_counter(), step
            bar.update(step, record)
        else:
            bar.update(step)
        if step % cfg.sample_every == 0 or step == total:
            sampler.write(ema if ema is not None else G, run_dir / "samples" / f"step-{step}.png",
                          f"{cfg.arch}/{cfg.loss} step {step}")
        if step % cfg.checkpoint_every == 0 or step == total:
            save_checkpoint()
    bar.close()
    _plot_losses(metrics_path, run_dir / "loss.png", f"{cfg.arch} / {cfg.loss} on {cfg.dataset}")
    print(f"done: {run_dir} (last checkpoint step-{step}, samples in {run_dir / 'samples'})")
    return run_dir


def _truncate_metrics(path: Path, step: int) -> None:
    if path.exists():
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in keep))


def _plot_losses(metrics_path: Path, out: Path, title: str) -> None:
    if not metrics_path.exists():
        return
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    if records:
        steps = [r["step"] for r in records]
        plotting.line_plot({"D loss": (steps, [r["d_loss"] for r in records]),
                            "G loss": (steps, [r["g_loss"] for r in records])}, title=title).save(out)


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

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

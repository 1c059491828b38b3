"""``ganforge train``: every option defaults to None, so only what the user sets overrides the
config file, the dataset's and the loss's recommended settings and the components' own defaults."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ganforge.cli import app, load_registry, parse_options, user_errors
from ganforge.errors import UsageError

OPTION_FLAGS = {"arch_options": "--arch-opt", "d_arch_options": "--d-arch-opt",
                "loss_options": "--loss-opt", "data_options": "--data-opt"}


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file; flags override it."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory from its last checkpoint."),
    arch: Optional[str] = typer.Option(None, help="Architecture (generator, and discriminator unless --d-arch)."),
    d_arch: Optional[str] = typer.Option(None, help="Take the discriminator from this architecture."),
    loss: Optional[str] = typer.Option(None, help="Loss, e.g. bce, lsgan, wgan-gp, hinge."),
    dataset: Optional[str] = typer.Option(None, help="Dataset, e.g. digits (embedded), mnist, ring."),
    data_root: Optional[str] = typer.Option(None, help="Directory holding the dataset."),
    download: Optional[bool] = typer.Option(None, "--download/--no-download", help="Allow downloading data."),
    image_size: Optional[int] = typer.Option(None, help="Image side length (image datasets)."),
    latent_dim: Optional[int] = typer.Option(None, help="Size of the latent vector z."),
    conditional: Optional[bool] = typer.Option(None, "--conditional/--unconditional",
                                               help="Class-conditional G and D (datasets with labels)."),
    arch_opt: List[str] = typer.Option([], help="Architecture option key=value (repeatable), e.g. width=32."),
    d_arch_opt: List[str] = typer.Option([], help="Option key=value for the --d-arch architecture."),
    loss_opt: List[str] = typer.Option([], help="Loss option key=value, e.g. gp=5 or clip=0.02."),
    data_opt: List[str] = typer.Option([], help="Dataset option key=value, e.g. split=test."),
    data_path: Optional[str] = typer.Option(None, help="memory (on the device), stream (DataLoader) or auto."),
    steps: Optional[int] = typer.Option(None, help="Training iterations."),
    epochs: Optional[int] = typer.Option(None, help="Train for this many passes over the data instead."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size."),
    lr: Optional[float] = typer.Option(None, help="Learning rate of both G and D."),
    lr_g: Optional[float] = typer.Option(None, help="Generator learning rate."),
    lr_d: Optional[float] = typer.Option(None, help="Discriminator learning rate."),
    betas: Optional[str] = typer.Option(None, help="Adam betas as 'beta1,beta2'."),
    lr_decay: Optional[str] = typer.Option(None, help="none, or linear: both learning rates fall to 0 at the end."),
    d_steps: Optional[int] = typer.Option(None, help="Discriminator updates per iteration."),
    g_steps: Optional[int] = typer.Option(None, help="Generator updates per iteration."),
    pack: Optional[int] = typer.Option(None, help="PacGAN packing: D judges this many samples at once."),
    standardize: Optional[bool] = typer.Option(None, "--standardize/--no-standardize",
                                               help="Vector data: G and D work in standardized units."),
    ema: Optional[bool] = typer.Option(None, "--ema/--no-ema", help="Keep an EMA of the generator."),
    ema_decay: Optional[float] = typer.Option(None, help="EMA decay."),
    precision: Optional[str] = typer.Option(None, help="fp32, bf16 or fp16 (fp16 needs CUDA)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile G and D."),
    compile_mode: Optional[str] = typer.Option(None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="NHWC memory format for convolutional models."),
    fast: bool = typer.Option(False, "--fast", help="The fastest settings for the device (printed); "
                                                    "flags and the config file still win."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N or mps."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    out_dir: Optional[str] = typer.Option(None, help="Parent directory of new runs."),
    name: Optional[str] = typer.Option(None, help="Run directory name (default: <arch>-<loss>-NNN)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory --name."),
    on_nonfinite: Optional[str] = typer.Option(None, help="stop (default) or skip updates with NaN/inf losses."),
    devices: Optional[int] = typer.Option(None, help="Train in N processes (torchrun, DistributedDataParallel)."),
    log_every: Optional[int] = typer.Option(None, help="Log metrics every N steps."),
    sample_every: Optional[int] = typer.Option(None, help="Write a sample grid every N steps."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Checkpoint every N steps."),
    checkpoint_minutes: Optional[float] = typer.Option(None, help="Also checkpoint every M minutes."),
    keep_checkpoints: Optional[int] = typer.Option(None, help="Keep the last N checkpoints."),
    eval_every: Optional[int] = typer.Option(None, help="Compute metrics every N steps into metrics.jsonl."),
    eval_metrics: Optional[str] = typer.Option(None, help="Metrics for --eval-every, e.g. fid,kid or toy "
                                                          "(default: all that apply to the data)."),
    eval_extractor: Optional[str] = typer.Option(None, help="Feature extractor for --eval-every: inception, "
                                                            "classifier or raw."),
    eval_samples: Optional[int] = typer.Option(None, help="Samples per evaluation."),
    keep_best: Optional[str] = typer.Option(None, help="Keep checkpoints/best.safetensors, the best by this "
                                                       "metric (e.g. fid, high_quality); needs --eval-every."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a live progress bar."),
):
    """Train a GAN; writes a run directory with config, metrics, samples and checkpoints."""
    flags = dict(locals())
    with user_errors():
        from ganforge.config import check_value

        for key in ("config", "resume", "progress", "lr", "betas", "arch_opt", "d_arch_opt", "loss_opt",
                    "data_opt", "overwrite", "devices", "fast"):
            del flags[key]
        if devices is not None and devices < 1:
            raise UsageError(f"--devices must be at least 1, got {devices}")
        if devices is not None and devices > 1 and "WORLD_SIZE" not in os.environ:
            from ganforge import distributed

            raise typer.Exit(distributed.launch(devices, _without_devices(sys.argv[1:])))
        load_registry()  # after any relaunch: the launcher itself trains nothing
        given = {k: v for k, v in flags.items() if v is not None}
        if lr is not None:
            given.setdefault("lr_g", lr)
            given.setdefault("lr_d", lr)
        if betas is not None:
            given["betas"] = _parse_betas(betas)
        for field_name, values in (("arch_options", arch_opt), ("d_arch_options", d_arch_opt),
                                   ("loss_options", loss_opt), ("data_options", data_opt)):
            if values:
                given[field_name] = parse_options(values, OPTION_FLAGS[field_name])
        given = {k: check_value(k, v, "the command line") for k, v in given.items()}
        if "steps" in given and "epochs" in given:
            raise UsageError("--steps and --epochs both set the length of training; give one")
        if resume is not None:
            if config is not None:
                raise UsageError("--resume continues a run with its own config; drop --config")
            if overwrite:
                raise UsageError("--overwrite starts a new run; it cannot go with --resume")
            _resume(resume, given, progress)
        else:
            _start(config, given, progress, overwrite, fast)


def _parse_betas(text: str) -> list:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 2:
        raise UsageError(f"--betas takes two numbers as 'beta1,beta2' (e.g. 0.5,0.999), got {text!r}")
    return values


def _without_devices(argv: list) -> list:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--devices":
            skip = True
        elif not arg.startswith("--devices="):
            out.append(arg)
    return out


def _start(config: Optional[Path], given: dict, progress: bool, overwrite: bool, fast: bool) -> None:
    from ganforge.config import TrainConfig, load_toml, resolve
    from ganforge.train import fast_settings, recommended_settings, train

    file = load_toml(config) if config is not None else {}
    preset = {}
    if fast:
        preset = fast_settings(given.get("device") or file.get("device") or TrainConfig.device)
        preset = {k: v for k, v in preset.items() if k not in file and k not in given}
        typer.echo("--fast picked: " + (", ".join(f"{k}={v}" for k, v in preset.items()) or "nothing (all set)"))
    recommended = recommended_settings(given.get("loss") or file.get("loss") or TrainConfig.loss,
                                       given.get("dataset") or file.get("dataset") or TrainConfig.dataset,
                                       given.get("arch") or file.get("arch"))
    train(resolve(TrainConfig().to_dict(), recommended, preset, file, given), progress=progress, overwrite=overwrite,
          recommended=set(recommended) - set(preset) - set(file) - set(given))


def _resume(run_dir: Path, given: dict, progress: bool) -> None:
    from ganforge.config import MODEL_FIELDS, load_toml, resolve
    from ganforge.plugins import get_registry, require
    from ganforge.train import train

    if not (run_dir / "config.toml").is_file():
        raise UsageError(f"{run_dir} is not a ganforge run (no config.toml); pass a directory made by ganforge train")
    recorded = load_toml(run_dir / "config.toml")
    if (run_dir / "run.json").is_file():
        require(get_registry(), json.loads((run_dir / "run.json").read_text())["providers"], f"resuming {run_dir}")
    for name in MODEL_FIELDS:
        if name in given and given[name] != recorded.get(name):
            raise UsageError(f"--{name.replace('_', '-')} cannot change when resuming "
                             f"(the run has {recorded.get(name)!r}); start a new run instead")
    train(resolve(recorded, given), run_dir, resume=True, progress=progress)

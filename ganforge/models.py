"""The generator and discriminator of a run, built from the registry: with PacGAN packing, standardized
units and augmentation applied around the plugin's networks; and a trained run's generator, loaded from its
checkpoint (what export, sampling, evaluation and :func:`ganforge.load` start from)."""
from __future__ import annotations

from pathlib import Path

import torch

from ganforge import checkpoint, contracts, rundir
from ganforge.config import TrainConfig
from ganforge.errors import UsageError
from ganforge.interfaces import DataSpec
from ganforge.plugins import get_registry, require
from ganforge.version import __version__


def data_spec(data, conditional: bool, dataset: str) -> DataSpec:
    """What the architecture is told about ``data``: its shape, and its classes when ``conditional``."""
    if conditional and data.num_classes is None:
        raise UsageError(f"--conditional needs class labels, and dataset '{dataset}' has none")
    return DataSpec(data.shape, data.num_classes if conditional else None)


def build_models(cfg: TrainConfig, spec: DataSpec, registry=None):
    """The generator of ``cfg.arch`` and the discriminator of ``cfg.d_arch`` (default: the same),
    packed when ``cfg.pack`` > 1, working in standardized units when ``cfg.standardize``."""
    registry = registry or get_registry()
    G, D = registry.create("architectures", cfg.arch, spec, cfg.latent_dim, **cfg.arch_options)
    if cfg.standardize and spec.is_image:
        raise UsageError("--standardize is for vector data; image data is already in [-1, 1]")
    features = spec.shape  # one sample, before packing
    if cfg.pack > 1:  # never with labels: config.CONFLICTS
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

def load_generator(run_dir, checkpoint_name: str | None = None, raw: bool = False, verb: str = "exporting",
                   parts: tuple = ("arch", "d_arch")):
    """A run's generator (the EMA one when the run has it, unless ``raw``) in eval mode, and its metadata.
    The plugins of ``parts`` must be there; ``verb`` says what for when one is not."""
    G, meta, _ = load_run(run_dir, checkpoint_name, raw, verb, parts)
    return G, meta


def load_run(run_dir, checkpoint_name: str | None = None, raw: bool = False, verb: str = "loading",
             parts: tuple = ("arch", "d_arch")):
    """:func:`load_generator`, and the run's TrainConfig."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist")
    path = rundir.find(run_dir, checkpoint_name)
    state = checkpoint.load(path)
    cfg = TrainConfig(**state["config"])
    registry = get_registry()
    require(registry, {part: state["providers"][part] for part in parts}, f"{verb} {run_dir}")
    spec = DataSpec(tuple(state["data_shape"]), state["num_classes"])
    G, _ = build_models(cfg, spec, registry)
    use_ema = state["ema"] is not None and not raw
    try:
        G.load_state_dict(state["ema"] if use_ema else state["G"])
    except RuntimeError as exc:
        raise UsageError(f"checkpoint {path} does not fit architecture '{cfg.arch}': "
                         f"{str(exc).splitlines()[0]}") from None
    meta = {
        "format": "ganforge-generator/1",
        "latent_dim": G.latent_dim,
        "latent_distribution": "normal",
        "output_shape": list(G.output_shape),
        "value_range": [-1.0, 1.0] if spec.is_image else None,
        "num_classes": spec.num_classes,
        "inputs": ["z", "labels"] if spec.num_classes else ["z"],
        "arch": cfg.arch,
        "loss": cfg.loss,
        "dataset": cfg.dataset,
        "step": state["step"],
        "generator": "ema" if use_ema else "raw",
        "ganforge_version": __version__,
    }
    return G.eval(), meta, cfg

"""The generator and discriminator of a run, built from the registry: with PacGAN packing and
standardized units applied around the plugin's networks."""
from __future__ import annotations

import torch

from ganforge import contracts
from ganforge.config import TrainConfig
from ganforge.errors import UsageError
from ganforge.interfaces import DataSpec
from ganforge.plugins import get_registry


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

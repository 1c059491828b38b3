"""Built-in architectures: ``mlp`` (fully connected, classic GAN), ``dcgan`` (Radford et al. 2016) and
``resnet`` (the residual G and D of R3GAN, Huang et al. 2024)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ganforge.hookspecs import hookimpl
from ganforge.errors import UsageError
from ganforge.interfaces import DataSpec


@hookimpl
def register_architectures(register):
    register("mlp", mlp)
    register("dcgan", dcgan)
    register("resnet", resnet)


class Generator(nn.Module):
    """Shared generator plumbing: attributes of the contract and the optional label embedding.

    Conditional generators concatenate an embedding of the label to ``z``.
    """

    def __init__(self, latent_dim: int, output_shape: tuple, num_classes: int | None, embed_dim: int):
        super().__init__()
        self.latent_dim, self.output_shape, self.num_classes = latent_dim, tuple(output_shape), num_classes
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        self.input_dim = latent_dim + (embed_dim if num_classes else 0)

    def join(self, z, labels):
        if self.embed is None:
            return z
        if labels is None:
            raise ValueError("this generator is class-conditional: pass labels")
        return torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)


class Discriminator(nn.Module):
    """Shared discriminator plumbing: ``features`` -> linear logit, plus a projection term
    ``<embed(y), h>`` when conditional (Miyato & Koyama 2018)."""

    def __init__(self, num_classes: int | None, feature_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.project = nn.Embedding(num_classes, feature_dim) if num_classes else None
        if self.project is not None:  # N(0, 1), nn.Embedding's default, would swamp the logit at the start
            nn.init.normal_(self.project.weight, 0.0, 0.02)

    def logits(self, h, out, labels):
        """``h``: [B, F] features; ``out``: [B] unconditional logits."""
        if self.project is None:
            return out
        if labels is None:
            raise ValueError("this discriminator is class-conditional: pass labels")
        return out + (self.project(labels).to(h.dtype) * h).sum(dim=1)


#: What a built-in discriminator's ``d_norm`` option takes.
D_NORMS = ("batch", "layer", "spectral", "none")


def spectral_norm(module: nn.Module, kinds: tuple) -> None:
    """Miyato et al. 2018: every weight of the ``kinds`` of layer divided by its largest singular value."""
    for m in list(module.modules()):
        if isinstance(m, kinds):
            nn.utils.parametrizations.spectral_norm(m)


# ---------------------------------------------------------------- mlp

class MLPGenerator(Generator):
    def __init__(self, spec: DataSpec, latent_dim: int, hidden: int, layers: int):
        super().__init__(latent_dim, spec.shape, spec.num_classes, embed_dim=min(latent_dim, 32))
        blocks, width = [], self.input_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        blocks.append(nn.Linear(width, math.prod(spec.shape)))
        if spec.is_image:
            blocks.append(nn.Tanh())
        self.net = nn.Sequential(*blocks)

    def forward(self, z, labels=None):
        return self.net(self.join(z, labels)).view(-1, *self.output_shape)


class MLPDiscriminator(Discriminator):
    def __init__(self, spec: DataSpec, hidden: int, layers: int, norm: str):
        super().__init__(spec.num_classes, hidden)
        blocks, width = [], math.prod(spec.shape)
        for i in range(layers):
            blocks.append(nn.Linear(width, hidden))
            if i > 0 and norm in ("batch", "layer"):  # as dcgan: none on the input layer
                blocks.append(nn.BatchNorm1d(hidden) if norm == "batch" else nn.LayerNorm(hidden))
            blocks.append(nn.LeakyReLU(0.2))
            width = hidden
        self.features = nn.Sequential(*blocks)
        self.out = nn.Linear(width, 1)
        if norm == "spectral":
            spectral_norm(self, (nn.Linear, nn.Embedding))

    def forward(self, x, labels=None):
        h = self.features(x.flatten(1))
        return self.logits(h, self.out(h).squeeze(1), labels)


def mlp(spec: DataSpec, latent_dim: int, hidden: int = 256, layers: int = 3, d_norm: str = "none",
        g_layers: int | None = None):
    """Fully connected G (ReLU) and D (LeakyReLU 0.2) with ``layers`` hidden layers of ``hidden`` units
    (G: ``g_layers`` of them, when given).

    Works for vectors and images; image generators end in tanh. ``d_norm``: the discriminator's
    normalisation after each hidden layer but the first, as dcgan's: "none", "batch", "layer" or "spectral".
    """
    g_layers = layers if g_layers is None else g_layers
    _check_positive("mlp", hidden=hidden, layers=layers, g_layers=g_layers)
    _check_choice("mlp", "d_norm", d_norm, D_NORMS)
    return MLPGenerator(spec, latent_dim, hidden, g_layers), MLPDiscriminator(spec, hidden, layers, d_norm)


mlp.search = {"hidden": {"choices": [64, 128, 256]}, "layers": {"low": 2, "high": 4},  # ganforge tune's space
              "d_norm": {"choices": ["none", "batch", "spectral"]}}


# ---------------------------------------------------------------- dcgan

class DCGANGenerator(Generator):
    def __init__(self, spec: DataSpec, latent_dim: int, width: int, upsample: str):
        super().__init__(latent_dim, spec.shape, spec.num_classes, embed_dim=min(latent_dim, 50))
        channels, size = spec.shape[0], spec.shape[1]
        stages = int(math.log2(size)) - 2          # 4x4 -> size
        ch = width * 2 ** (stages - 1)
        layers = [nn.ConvTranspose2d(self.input_dim, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        for i in range(stages):
            last = i == stages - 1
            out = channels if last else ch // 2
            if upsample == "transposed":
                layers.append(nn.ConvTranspose2d(ch, out, 4, 2, 1, bias=last))
            else:  # nearest-neighbour upsampling then a convolution: no checkerboard artifacts
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, out, 3, 1, 1, bias=last)]
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(out), nn.ReLU(True)]
            ch = out
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z, labels=None):
        return self.net(self.join(z, labels)[:, :, None, None])


class DCGANDiscriminator(Discriminator):
    def __init__(self, spec: DataSpec, width: int, norm: str):
        channels, size = spec.shape[0], spec.shape[1]
        stages = int(math.log2(size)) - 2          # size -> 4x4
        top = width * 2 ** (stages - 1)
        super().__init__(spec.num_classes, top)
        layers, ch = [], channels
        for i in range(stages):
            out = width * 2 ** i
            layers.append(nn.Conv2d(ch, out, 4, 2, 1, bias=False))
            if i > 0 and norm in ("batch", "layer"):  # no normalisation on the input layer (Radford et al.)
                layers.append(nn.BatchNorm2d(out) if norm == "batch" else nn.GroupNorm(1, out))
            layers.append(nn.LeakyReLU(0.2, True))
            ch = out
        self.features = nn.Sequential(*layers)
        self.out = nn.Conv2d(ch, 1, 4, 1, 0)
        dcgan_init(self)
        if norm == "spectral":
            spectral_norm(self, (nn.Conv2d, nn.Embedding))

    def forward(self, x, labels=None):
        h = self.features(x)
        out = self.out(h).flatten()
        return out if self.project is None else self.logits(h.sum(dim=(2, 3)), out, labels)


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.: conv weights ~ N(0, 0.02); BatchNorm scale ~ N(1, 0.02), shift 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def dcgan(spec: DataSpec, latent_dim: int, width: int = 64, upsample: str = "transposed", d_norm: str = "batch"):
    """DCGAN G and D for square power-of-two images from 16x16 up, any channel count.

    ``width``: channels of the widest-resolution layer (doubled at each halving).
    ``upsample``: "transposed" (strided transposed convolutions) or "nearest"
    (nearest-neighbour upsampling followed by a 3x3 convolution).
    ``d_norm``: the discriminator's normalisation, "batch" (DCGAN), "layer" (what
    WGAN-GP uses: a gradient penalty is per sample, BatchNorm mixes samples), "spectral"
    (spectral normalisation of every weight, SNGAN) or "none".
    """
    spec.check_image_size("dcgan")
    _check_choice("dcgan", "upsample", upsample, ("transposed", "nearest"))
    _check_choice("dcgan", "d_norm", d_norm, D_NORMS)
    _check_positive("dcgan", width=width)
    return DCGANGenerator(spec, latent_dim, width, upsample), DCGANDiscriminator(spec, width, d_norm)


dcgan.search = {"width": {"choices": [32, 64, 96]}, "d_norm": {"choices": ["none", "batch", "spectral"]}}


# ---------------------------------------------------------------- resnet

class ResidualBlock(nn.Module):
    """R3GAN's block, an inverted bottleneck: a 1x1 convolution widening ``expansion`` times, a grouped 3x3
    convolution (``group`` channels a group), a 1x1 convolution back, LeakyReLU 0.2 between them, added to
    the input. No normalisation: the last convolution starts at zero and the others are scaled by
    ``blocks`` ** -1/4 (fix-up initialisation, Zhang et al. 2019), so every block starts as the identity
    and the variance of the sum stays bounded however many blocks there are."""

    def __init__(self, channels: int, expansion: int, group: int, blocks: int):
        super().__init__()
        hidden = channels * expansion
        self.widen = nn.Conv2d(channels, hidden, 1)
        self.spatial = nn.Conv2d(hidden, hidden, 3, padding=1, groups=math.gcd(hidden, max(1, hidden // group)))
        self.narrow = nn.Conv2d(hidden, channels, 1, bias=False)
        self.act = nn.LeakyReLU(0.2)
        for conv in (self.widen, self.spatial):
            nn.init.kaiming_normal_(conv.weight, a=0.2)
            conv.weight.data.mul_(blocks ** -0.25)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.narrow.weight)

    def forward(self, x):
        return x + self.narrow(self.act(self.spatial(self.act(self.widen(x)))))


def resnet_channels(size: int, width: int) -> list:
    """Channels at 4x4, 8x8, ..., size x size: ``width`` at the full size, doubled at each halving."""
    stages = int(math.log2(size)) - 1
    return [width * 2 ** (stages - 1 - i) for i in range(stages)]


def resnet_stages(chs: list, blocks: int, expansion: int, group: int) -> tuple:
    """``blocks`` residual blocks at each width of ``chs`` (fix-up scaled by all the net's blocks), and the
    1x1 convolutions from each width to the next: what G and D each run between resamplings."""
    stages = nn.ModuleList(
        nn.Sequential(*(ResidualBlock(c, expansion, group, blocks * len(chs)) for _ in range(blocks))) for c in chs)
    return stages, nn.ModuleList(nn.Conv2d(c, c_next, 1) for c, c_next in zip(chs, chs[1:]))


class ResNetGenerator(Generator):
    """z (and the class embedding) -> a 4x4 basis through a linear layer, then at each resolution
    ``blocks`` residual blocks and a transition (a 1x1 convolution to the next width, bilinear upsampling
    by 2); a 1x1 convolution to the image's channels and tanh."""

    def __init__(self, spec: DataSpec, latent_dim: int, width: int, blocks: int, expansion: int, group: int):
        super().__init__(latent_dim, spec.shape, spec.num_classes, embed_dim=min(latent_dim, 50))
        chs = resnet_channels(spec.shape[1], width)
        self.basis = nn.Linear(self.input_dim, chs[0] * 16)
        self.stages, self.transitions = resnet_stages(chs, blocks, expansion, group)
        self.to_image = nn.Conv2d(chs[-1], spec.shape[0], 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, z, labels=None):
        x = self.act(self.basis(self.join(z, labels))).view(-1, self.basis.out_features // 16, 4, 4)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.transitions):
                x = F.interpolate(self.transitions[i](x), scale_factor=2.0, mode="bilinear", align_corners=False)
        return torch.tanh(self.to_image(x))


class ResNetDiscriminator(Discriminator):
    """The generator mirrored: a 1x1 convolution from the image, then at each resolution ``blocks``
    residual blocks and a transition (bilinear downsampling by 2, which is 2x2 averaging, and a 1x1
    convolution to the next width); at 4x4 a 4x4 convolution to features, LeakyReLU, a linear logit and
    the class projection."""

    def __init__(self, spec: DataSpec, width: int, blocks: int, expansion: int, group: int):
        chs = resnet_channels(spec.shape[1], width)[::-1]
        super().__init__(spec.num_classes, chs[-1])
        self.from_image = nn.Conv2d(spec.shape[0], chs[0], 1)
        self.stages, self.transitions = resnet_stages(chs, blocks, expansion, group)
        self.basis = nn.Conv2d(chs[-1], chs[-1], 4)
        self.out = nn.Linear(chs[-1], 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x, labels=None):
        x = self.from_image(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.transitions):
                x = self.transitions[i](F.avg_pool2d(x, 2))
        h = self.act(self.basis(x).flatten(1))
        return self.logits(h, self.out(h).squeeze(1), labels)


def resnet(spec: DataSpec, latent_dim: int, width: int = 16, blocks: int = 1, expansion: int = 2, group: int = 16):
    """The residual G and D of R3GAN (Huang et al. 2024) for square power-of-two images from 16x16 up, any
    channel count: no normalisation, fix-up initialisation, inverted-bottleneck blocks with grouped
    convolutions, bilinear resampling.

    ``width``: channels at the full resolution (doubled at each halving, as dcgan's). ``blocks``: residual
    blocks per resolution. ``expansion``: how much wider a block's inner convolutions are. ``group``:
    channels per group of the 3x3 convolution.
    """
    spec.check_image_size("resnet")
    _check_positive("resnet", width=width, blocks=blocks, expansion=expansion, group=group)
    return (ResNetGenerator(spec, latent_dim, width, blocks, expansion, group),
            ResNetDiscriminator(spec, width, blocks, expansion, group))


def _check_choice(arch: str, key: str, value, choices: tuple) -> None:
    if value not in choices:
        names = [f"'{c}'" for c in choices]
        raise UsageError(f"{arch} option {key} must be {', '.join(names[:-1])} or {names[-1]}, got {value!r}")


def _check_positive(arch: str, **options) -> None:
    for key, value in options.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UsageError(f"{arch} option {key} must be a positive integer, got {value!r}")

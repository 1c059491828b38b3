"""SNGAN ResNet generator and spectrally normalised ResNet discriminator (Miyato et al. 2018)."""
import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ganforge import hookimpl
from ganforge.errors import UsageError


@hookimpl
def register_architectures(register):
    register("sngan", sngan)


class GBlock(nn.Module):
    """BN-ReLU-up-conv-BN-ReLU-conv, plus an upsampled 1x1 shortcut."""

    def __init__(self, cin, cout):
        super().__init__()
        self.main = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Upsample(scale_factor=2),
                                  nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1))
        self.shortcut = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(cin, cout, 1))

    def forward(self, x):
        return self.main(x) + self.shortcut(x)


class DBlock(nn.Module):
    """ReLU-conv-ReLU-conv (then average pooling when downsampling), plus a 1x1 shortcut.
    The first block of the discriminator skips the leading ReLU (the 'optimised' block)."""

    def __init__(self, cin, cout, down, first=False):
        super().__init__()
        layers = [] if first else [nn.ReLU()]
        layers += [spectral_norm(nn.Conv2d(cin, cout, 3, 1, 1)), nn.ReLU(), spectral_norm(nn.Conv2d(cout, cout, 3, 1, 1))]
        pool = [nn.AvgPool2d(2)] if down else []
        self.main = nn.Sequential(*layers, *pool)
        if first:
            self.shortcut = nn.Sequential(*pool, spectral_norm(nn.Conv2d(cin, cout, 1)))
        elif cin != cout or down:
            self.shortcut = nn.Sequential(spectral_norm(nn.Conv2d(cin, cout, 1)), *pool)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        return self.main(x) + self.shortcut(x)


class Generator(nn.Module):
    def __init__(self, shape, latent_dim, num_classes, width):
        super().__init__()
        self.latent_dim, self.output_shape, self.num_classes = latent_dim, tuple(shape), num_classes
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        inputs = latent_dim * (2 if num_classes else 1)
        self.width = width
        self.linear = nn.Linear(inputs, 4 * 4 * width)
        blocks = int(math.log2(shape[1])) - 2
        self.blocks = nn.Sequential(*[GBlock(width, width) for _ in range(blocks)])
        self.out = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, shape[0], 3, 1, 1), nn.Tanh())
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, z, labels=None):
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)
        return self.out(self.blocks(self.linear(z).view(-1, self.width, 4, 4)))


class Discriminator(nn.Module):
    def __init__(self, shape, num_classes, width):
        super().__init__()
        downs = int(math.log2(shape[1])) - 3  # down to 8x8
        blocks = [DBlock(shape[0], width, down=True, first=True)]
        blocks += [DBlock(width, width, down=True) for _ in range(downs - 1)]
        blocks += [DBlock(width, width, down=False) for _ in range(2)]
        self.blocks = nn.Sequential(*blocks, nn.ReLU())
        self.linear = spectral_norm(nn.Linear(width, 1))
        self.project = spectral_norm(nn.Embedding(num_classes, width)) if num_classes else None

    def forward(self, x, labels=None):
        h = self.blocks(x).sum(dim=(2, 3))  # global sum pooling
        out = self.linear(h).squeeze(1)
        if self.project is not None:
            out = out + (self.project(labels).to(h.dtype) * h).sum(dim=1)
        return out


def sngan(spec, latent_dim, g_width=256, d_width=128):
    """SNGAN ResNet G and spectrally normalised ResNet D for square power-of-two images from 32x32."""
    spec.check_image_size("sngan", smallest=32)
    for key, value in (("g_width", g_width), ("d_width", d_width)):
        if not isinstance(value, int) or value <= 0:
            raise UsageError(f"sngan option {key} must be a positive integer, got {value!r}")
    return (Generator(spec.shape, latent_dim, spec.num_classes, g_width),
            Discriminator(spec.shape, spec.num_classes, d_width))

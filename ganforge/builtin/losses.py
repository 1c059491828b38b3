"""Built-in losses. All work on raw logits (softplus, never log(sigmoid)) and reduce in fp32.

With r = D(real) and f = D(fake) logits:

=========  ======================================  ===========================
name       discriminator minimises                  generator minimises
=========  ======================================  ===========================
bce        softplus(-r) + softplus(f)               softplus(-f)  (non-saturating)
minimax    softplus(-r) + softplus(f)               -softplus(f) = log(1 - sigmoid(f))
lsgan      ((r - 1)^2 + f^2) / 2                    (f - 1)^2 / 2
wgan       f - r, then weights clipped to [-c, c]   -f
wgan-gp    f - r + lambda (|grad D(x_hat)| - 1)^2   -f
hinge      relu(1 - r) + relu(1 + f)                -f
rpgan      softplus(f - r), r and f paired          softplus(r - f)
=========  ======================================  ===========================
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ganforge.hookspecs import hookimpl
from ganforge.errors import UsageError
from ganforge.interfaces import GANLoss
from ganforge.penalties import gradient_penalty


@hookimpl
def register_losses(register):
    register("bce", NonSaturating)
    register("minimax", Minimax)
    register("lsgan", LeastSquares)
    register("wgan", Wasserstein)
    register("wgan-gp", WassersteinGP)
    register("hinge", Hinge)
    register("rpgan", RelativisticPairing)


def logits(D, x, labels):
    return D(x, labels).float()


class NonSaturating(GANLoss):
    """Goodfellow et al. 2014, with the non-saturating generator loss -log D(G(z))."""

    def discriminator_loss(self, D, real, fake, labels=None):
        return F.softplus(-logits(D, real, labels)).mean() + F.softplus(logits(D, fake, labels)).mean()

    def generator_loss(self, D, real, fake, labels=None):
        return F.softplus(-logits(D, fake, labels)).mean()


class Minimax(NonSaturating):
    """Goodfellow et al. 2014, the original saturating generator loss log(1 - D(G(z)))."""

    def generator_loss(self, D, real, fake, labels=None):
        return -F.softplus(logits(D, fake, labels)).mean()


class LeastSquares(GANLoss):
    """Mao et al. 2017 (a=0, b=1, c=1)."""

    def discriminator_loss(self, D, real, fake, labels=None):
        return 0.5 * ((logits(D, real, labels) - 1).square().mean() + logits(D, fake, labels).square().mean())

    def generator_loss(self, D, real, fake, labels=None):
        return 0.5 * (logits(D, fake, labels) - 1).square().mean()


class Hinge(GANLoss):
    """Lim & Ye 2017; Miyato et al. 2018."""

    def discriminator_loss(self, D, real, fake, labels=None):
        return F.relu(1 - logits(D, real, labels)).mean() + F.relu(1 + logits(D, fake, labels)).mean()

    def generator_loss(self, D, real, fake, labels=None):
        return -logits(D, fake, labels).mean()


class RelativisticPairing(GANLoss):
    """RpGAN (Jolicoeur-Martineau 2018; Huang et al. 2024, R3GAN, with R1 + R2): D learns that each real
    sample is more realistic than the fake it is paired with, G the reverse. Its landscape has no local
    minima that drop modes (Sun et al. 2020), the reason R3GAN builds on it."""

    def discriminator_loss(self, D, real, fake, labels=None):
        return F.softplus(logits(D, fake, labels) - logits(D, real, labels)).mean()

    def generator_loss(self, D, real, fake, labels=None):
        return F.softplus(logits(D, real, labels) - logits(D, fake, labels)).mean()


class Wasserstein(GANLoss):
    """Arjovsky et al. 2017: critic weights clipped to [-clip, clip] after every update."""

    recommended = {"d_steps": 5}  # part of the method; its learning rates are a recipe (builtin/recipes.py)
    search = {"clip": {"low": 0.005, "high": 1.0, "log": True}}  # ganforge tune's space for the option

    def __init__(self, clip: float = 0.01):
        if not clip > 0:
            raise UsageError(f"wgan option clip must be positive, got {clip!r}")
        self.clip = float(clip)

    def discriminator_loss(self, D, real, fake, labels=None):
        return logits(D, fake, labels).mean() - logits(D, real, labels).mean()

    def generator_loss(self, D, real, fake, labels=None):
        return -logits(D, fake, labels).mean()

    @torch.no_grad()
    def after_discriminator_step(self, D):
        for p in D.parameters():
            p.clamp_(-self.clip, self.clip)


class WassersteinGP(Wasserstein):
    """Gulrajani et al. 2017: a gradient penalty (weight ``gp``, 10 by default) instead of clipping."""

    double_backward = True
    search = {"gp": {"low": 0.1, "high": 100.0, "log": True}}

    def __init__(self, gp: float = 10.0):
        if not gp >= 0:
            raise UsageError(f"wgan-gp option gp must be >= 0, got {gp!r}")
        self.gp = float(gp)

    def discriminator_loss(self, D, real, fake, labels=None, grad_scale=1.0):
        wasserstein = super().discriminator_loss(D, real, fake, labels)
        return wasserstein + self.gp * gradient_penalty(D, real, fake, labels, grad_scale)

    def after_discriminator_step(self, D):
        pass


"""Relativistic GAN losses (Jolicoeur-Martineau 2018) as a ganforge plugin."""
import torch.nn.functional as F

from ganforge import hookimpl
from ganforge.interfaces import GANLoss


@hookimpl
def register_losses(register):
    register("rsgan", RSGAN)
    register("ragan", RaGAN)
    register("ralsgan", RaLSGAN)


@hookimpl
def register_recipes(register):
    # What `ganforge tune` found for rsgan on the built-in grid, from ganforge's generic toy settings
    # (ganforge's docs/benchmarks.md, "Tuning"); its recipe.py, as written.
    register(dataset="grid", loss="rsgan", settings={
        "lr_g": 0.0014537776674069325, "lr_d": 0.0033211551861313353, "betas": [0.0, 0.9], "lr_decay": "linear",
        "d_steps": 3, "r1": 0.18890289999276727, "r2": 0.0012164566875810258, "ema_decay": 0.999,
        "arch_options": {"d_norm": "none"}},
        source="ganforge tune: study relativistic_rsgan-grid, trial 14 of 16, high_quality 0.9484 at 10000 steps")


def logits(D, real, fake, labels):
    return D(real, labels).float(), D(fake, labels).float()


class RSGAN(GANLoss):
    """Relativistic standard GAN: is the real sample more realistic than its paired fake?"""

    def discriminator_loss(self, D, real, fake, labels=None):
        r, f = logits(D, real, fake, labels)
        return F.softplus(-(r - f)).mean()

    def generator_loss(self, D, real, fake, labels=None):
        r, f = logits(D, real, fake, labels)
        return F.softplus(-(f - r)).mean()


class RaGAN(GANLoss):
    """Relativistic average standard GAN (RaSGAN): each sample against the other batch's mean."""

    def discriminator_loss(self, D, real, fake, labels=None):
        r, f = logits(D, real, fake, labels)
        return (F.softplus(-(r - f.mean())).mean() + F.softplus(f - r.mean()).mean()) / 2

    def generator_loss(self, D, real, fake, labels=None):
        r, f = logits(D, real, fake, labels)
        return (F.softplus(-(f - r.mean())).mean() + F.softplus(r - f.mean()).mean()) / 2


class RaLSGAN(GANLoss):
    """Relativistic average least squares GAN."""

    def discriminator_loss(self, D, real, fake, labels=None):
        r, f = logits(D, real, fake, labels)
        return ((r - f.mean() - 1).square().mean() + (f - r.mean() + 1).square().mean()) / 2

    def generator_loss(self, D, real, fake, labels=None):
        r, f = logits(D, real, fake, labels)
        return ((f - r.mean() - 1).square().mean() + (r - f.mean() + 1).square().mean()) / 2

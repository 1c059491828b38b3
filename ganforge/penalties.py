"""Penalties on the discriminator's input gradients: WGAN-GP's gradient penalty (a loss option) and
R1 / R2 (``--r1``, ``--r2``: regularizers usable with any loss).

Each differentiates D's logits with respect to its input and keeps the graph, so the penalty's
own gradient reaches D's weights (double backward: the engine hands these the uncompiled D).
``scale`` multiplies the logits before differentiating and divides the gradients after: the AMP
recipe under fp16, where small gradients would underflow (the GradScaler's scale; 1.0 otherwise).
"""
from __future__ import annotations

import torch


def input_gradients(D, x, labels=None, scale: float = 1.0):
    """grad_x of D(x)'s logits, in fp32, one row per logit (per pack of samples with a packed D)."""
    x = x.detach().requires_grad_(True)
    out = D(x, labels).float()
    (grad,) = torch.autograd.grad(out.sum() * scale, x, create_graph=True)
    return (grad.float() / scale).reshape(out.shape[0], -1)


def gradient_penalty(D, real, fake, labels=None, scale: float = 1.0):
    """E[(||grad_x D(x_hat)||_2 - 1)^2] at x_hat uniformly between paired real and fake samples
    (Gulrajani et al. 2017)."""
    eps = torch.rand(real.shape[0], *[1] * (real.dim() - 1), device=real.device, dtype=real.dtype)
    x_hat = eps * real.detach() + (1 - eps) * fake.detach()
    return (input_gradients(D, x_hat, labels, scale).norm(2, dim=1) - 1).square().mean()


def squared_gradient_norm(D, x, labels=None, scale: float = 1.0):
    """E[||grad_x D(x)||^2]: R1 at real samples, R2 at generated ones (Mescheder et al. 2018),
    which weigh it by gamma / 2."""
    return input_gradients(D, x, labels, scale).square().sum(dim=1).mean()

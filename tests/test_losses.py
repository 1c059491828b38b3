"""Every built-in loss against its formula on fixed logits: values and gradients."""
import pytest
import torch

from ganforge.builtin.losses import gradient_penalty
from ganforge.errors import UsageError
from ganforge.plugins import get_registry

R = torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0], dtype=torch.float64)
F_ = torch.tensor([-2.0, 1.5, 0.0, -0.5, 0.7], dtype=torch.float64)
N = len(R)
sig = torch.sigmoid


def identity_D(x, labels=None):
    """A 'discriminator' whose logits are its input, so a loss can be fed fixed logits."""
    return x


# name -> (D loss, G loss) written naively from the papers, and d(D loss)/d(r, f), d(G loss)/df
FORMULAS = {
    "bce": (lambda r, f: -torch.log(sig(r)).mean() - torch.log(1 - sig(f)).mean(),
            lambda r, f: -torch.log(sig(f)).mean(),
            lambda r, f: (-sig(-r) / N, sig(f) / N), lambda r, f: -sig(-f) / N),
    "minimax": (lambda r, f: -torch.log(sig(r)).mean() - torch.log(1 - sig(f)).mean(),
                lambda r, f: torch.log(1 - sig(f)).mean(),
                lambda r, f: (-sig(-r) / N, sig(f) / N), lambda r, f: -sig(f) / N),
    "lsgan": (lambda r, f: 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f ** 2).mean(),
              lambda r, f: 0.5 * ((f - 1) ** 2).mean(),
              lambda r, f: ((r - 1) / N, f / N), lambda r, f: (f - 1) / N),
    "wgan": (lambda r, f: f.mean() - r.mean(), lambda r, f: -f.mean(),
             lambda r, f: (-torch.ones(N) / N, torch.ones(N) / N), lambda r, f: -torch.ones(N) / N),
    "hinge": (lambda r, f: torch.clamp(1 - r, min=0).mean() + torch.clamp(1 + f, min=0).mean(),
              lambda r, f: -f.mean(),
              lambda r, f: (-(r < 1).double() / N, (f > -1).double() / N), lambda r, f: -torch.ones(N) / N),
    "rpgan": (lambda r, f: -torch.log(sig(r - f)).mean(), lambda r, f: -torch.log(sig(f - r)).mean(),
              lambda r, f: (-sig(f - r) / N, sig(f - r) / N), lambda r, f: -sig(r - f) / N),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_loss_values_and_gradients_match_formula(name):
    d_formula, g_formula, d_grad, g_grad = FORMULAS[name]
    loss = get_registry().create("losses", name)
    r, f = R.clone().requires_grad_(), F_.clone().requires_grad_()
    d = loss.discriminator_loss(identity_D, r, f)
    assert d.dtype == torch.float32  # reduced in fp32 whatever the logits' dtype
    torch.testing.assert_close(d.double(), d_formula(R, F_), rtol=1e-6, atol=1e-6)
    gr, gf = torch.autograd.grad(d, (r, f))
    er, ef = d_grad(R, F_)
    torch.testing.assert_close(gr, er.double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gf, ef.double(), rtol=1e-6, atol=1e-7)

    f = F_.clone().requires_grad_()
    g = loss.generator_loss(identity_D, R, f)
    torch.testing.assert_close(g.double(), g_formula(R, F_), rtol=1e-6, atol=1e-6)
    (gf,) = torch.autograd.grad(g, f)
    torch.testing.assert_close(gf, g_grad(R, F_).double(), rtol=1e-6, atol=1e-7)


def test_rpgan_pairs_each_real_sample_with_its_fake():
    """Relativistic pairing, not averaging: permuting the fakes changes the loss, and the generator's loss
    carries gradients to the real logits too (through which D is frozen in training)."""
    loss = get_registry().create("losses", "rpgan")
    expected = torch.nn.functional.softplus(F_ - R).mean()
    torch.testing.assert_close(loss.discriminator_loss(identity_D, R, F_).double(), expected)
    assert loss.discriminator_loss(identity_D, R, F_.flip(0)) != loss.discriminator_loss(identity_D, R, F_)
    r = R.clone().requires_grad_()
    (gr,) = torch.autograd.grad(loss.generator_loss(identity_D, r, F_), r)
    torch.testing.assert_close(gr, sig(R - F_) / N, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["bce", "minimax", "rpgan"])
def test_logit_losses_are_stable_for_saturated_logits(name):
    loss = get_registry().create("losses", name)
    r = torch.tensor([200.0, -200.0], requires_grad=True)
    f = torch.tensor([-200.0, 200.0], requires_grad=True)
    d = loss.discriminator_loss(identity_D, r, f)
    g = loss.generator_loss(identity_D, r, f)
    grads = torch.autograd.grad(d + g, (r, f))
    assert torch.isfinite(d) and torch.isfinite(g) and all(torch.isfinite(x).all() for x in grads)
    assert d.item() == pytest.approx(200.0)  # one badly wrong real and one fake: 200/2 + 200/2


def test_wgan_clips_weights_after_discriminator_step():
    loss = get_registry().create("losses", "wgan", clip=0.05)
    D = torch.nn.Linear(4, 1)
    with torch.no_grad():
        D.weight.copy_(torch.tensor([[0.3, -0.2, 0.01, -0.04]]))
        D.bias.fill_(-0.5)
    loss.after_discriminator_step(D)
    torch.testing.assert_close(D.weight.data, torch.tensor([[0.05, -0.05, 0.01, -0.04]]))
    torch.testing.assert_close(D.bias.data, torch.tensor([-0.05]))


def test_gradient_penalty_of_linear_critic_is_exact():
    # D(x) = <w, x>: grad_x D = w everywhere, so the penalty is (|w| - 1)^2 for any interpolation.
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    D = lambda x, labels=None: x @ w  # noqa: E731
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    gp = gradient_penalty(D, real, fake)
    assert gp.item() == pytest.approx(16.0)  # (5 - 1)^2
    (gw,) = torch.autograd.grad(gp, w)  # d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|
    torch.testing.assert_close(gw, 2 * 4 * torch.tensor([3.0, 4.0]) / 5)


def test_gradient_penalty_interpolates_uniformly_between_pairs():
    # D(x) = |x|^2 / 2: grad = x_hat = eps * real + (1 - eps) * fake, eps ~ U[0, 1) per sample.
    D = lambda x, labels=None: 0.5 * x.square().sum(1)  # noqa: E731
    real, fake = torch.randn(16, 3), torch.randn(16, 3)
    torch.manual_seed(7)
    gp = gradient_penalty(D, real, fake)
    torch.manual_seed(7)
    eps = torch.rand(16, 1)
    x_hat = eps * real + (1 - eps) * fake
    torch.testing.assert_close(gp, (x_hat.norm(dim=1) - 1).square().mean())


def test_wgan_gp_adds_weighted_penalty_and_scaling_does_not_change_it():
    w = torch.tensor([0.6, 0.0, 0.0])
    D = lambda x, labels=None: x @ w  # noqa: E731
    real, fake = torch.randn(8, 3), torch.randn(8, 3)
    loss = get_registry().create("losses", "wgan-gp", gp=2.0)
    assert loss.double_backward
    expected = (fake @ w).mean() - (real @ w).mean() + 2.0 * (0.6 - 1) ** 2
    torch.testing.assert_close(loss.discriminator_loss(D, real, fake), expected)
    scale = torch.tensor(65536.0)  # as under fp16 with a GradScaler: same value
    torch.testing.assert_close(loss.discriminator_loss(D, real, fake, grad_scale=scale), expected)


def test_loss_options_are_validated():
    with pytest.raises(UsageError, match="loss 'lsgan' has no option 'clip'; its options: none"):
        get_registry().create("losses", "lsgan", clip=0.1)
    with pytest.raises(UsageError, match="wgan option clip must be positive"):
        get_registry().create("losses", "wgan", clip=-1)

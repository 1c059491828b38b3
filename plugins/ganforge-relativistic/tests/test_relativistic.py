"""The relativistic losses against the paper's formulas, written naively in float64."""
import pytest
import torch

from ganforge.plugins import get_registry

R = torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0], dtype=torch.float64)
F_ = torch.tensor([-2.0, 1.5, 0.0, -0.5, 0.7], dtype=torch.float64)
sig = torch.sigmoid


def identity_D(x, labels=None):
    return x


def bce(p, target):  # -[t log p + (1 - t) log(1 - p)]
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()


FORMULAS = {  # name -> (D loss, G loss) of (r, f)
    "rsgan": (lambda r, f: bce(sig(r - f), 1), lambda r, f: bce(sig(f - r), 1)),
    "ragan": (lambda r, f: (bce(sig(r - f.mean()), 1) + bce(sig(f - r.mean()), 0)) / 2,
              lambda r, f: (bce(sig(f - r.mean()), 1) + bce(sig(r - f.mean()), 0)) / 2),
    "ralsgan": (lambda r, f: (((r - f.mean() - 1) ** 2).mean() + ((f - r.mean() + 1) ** 2).mean()) / 2,
                lambda r, f: (((f - r.mean() - 1) ** 2).mean() + ((r - f.mean() + 1) ** 2).mean()) / 2),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_values_and_gradients_match_the_paper(name):
    d_formula, g_formula = FORMULAS[name]
    loss = get_registry().create("losses", f"relativistic:{name}")
    for method, formula in ((loss.discriminator_loss, d_formula), (loss.generator_loss, g_formula)):
        r, f = R.clone().requires_grad_(), F_.clone().requires_grad_()
        value = method(identity_D, r, f)
        r64, f64 = R.clone().requires_grad_(), F_.clone().requires_grad_()
        expected = formula(r64, f64)
        torch.testing.assert_close(value.double(), expected.detach(), rtol=1e-6, atol=1e-6)
        got = torch.autograd.grad(value, (r, f))
        want = torch.autograd.grad(expected, (r64, f64))
        for a, b in zip(got, want):
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-7)


def test_generator_loss_depends_on_real_logits():
    # the point of a relativistic loss: G is judged against the real batch too
    loss = get_registry().create("losses", "ragan")
    f = F_.clone()
    assert loss.generator_loss(identity_D, R, f) != loss.generator_loss(identity_D, R + 1, f)


def test_plugin_is_found_through_its_entry_point():
    plugin = get_registry().get("losses", "rsgan").plugin
    assert (plugin.name, plugin.package, plugin.builtin) == ("relativistic", "ganforge-relativistic", False)
    assert plugin.provides["losses"] == ["rsgan", "ragan", "ralsgan"]


def test_its_recipe_for_the_built_in_grid_applies_over_ganforges():
    import ganforge

    cfg, origins = ganforge.config_for(dataset="grid", loss="rsgan")
    assert (cfg.lr_g, cfg.d_steps, cfg.betas) == (0.0014537776674069325, 3, [0.0, 0.9])  # the plugin's recipe
    assert origins["lr_g"] == origins["d_steps"] == "recipe 'grid+rsgan' (plugin relativistic)"
    assert (cfg.arch, cfg.batch_size, cfg.steps) == ("mlp", 256, 30000)  # ganforge's grid recipe under it
    assert origins["steps"] == "recipe 'grid'"
    assert ganforge.config_for(dataset="ring", loss="rsgan")[0].d_steps == 1  # for the grid alone

"""Augmentations of what D sees (--augment), R1/R2 (--r1, --r2, lazy), spectral norm in dcgan's D."""
import copy
import re
import tomllib
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import ganforge
from ganforge import hookimpl, penalties, training
from ganforge.builtin.architectures import dcgan, resnet
from ganforge.builtin.augmentations import ADA, OPS, DiffAugment, translation
from ganforge.builtin.losses import NonSaturating, RelativisticPairing
from ganforge.cli import app
from ganforge.config import TrainConfig
from ganforge.errors import UsageError
from ganforge.exporting import export
from ganforge.interfaces import Augmentation, DataSpec
from ganforge.plugins import plugin_registered
from ganforge.state import TrainState

GUIDE = Path(__file__).parent.parent / "docs" / "plugins.md"
runner = CliRunner()

IMAGES = DataSpec((1, 16, 16))
TINY_IMAGES = dict(arch="dcgan", dataset="digits", image_size=16, latent_dim=8, batch_size=16,
                   arch_options={"width": 8}, log_every=1, sample_every=100, checkpoint_every=100)


def images(n=8, seed=0):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("augment", [*(DiffAugment(IMAGES, op) for op in OPS), ADA(IMAGES)],
                         ids=[*OPS, "ada"])
def test_augmentations_keep_the_shape_and_pass_gradients(augment):
    if isinstance(augment, ADA):
        augment.p = torch.tensor(0.5)
    x = images().requires_grad_(True)
    out = augment(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert grad.abs().sum() > 0


def test_probability_zero_is_the_identity():
    x = images()
    assert torch.equal(DiffAugment(IMAGES, p=0)(x), x)
    assert torch.equal(ADA(IMAGES)(x), x)  # ADA starts at p = 0


def test_translation_shifts_each_image_within_an_eighth_filling_zeros():
    x = images(16) + 3  # no zeros in the input: zeros in the output are fill
    torch.manual_seed(0)
    out = translation(x)
    for a, b in zip(x, out):
        padded = torch.nn.functional.pad(a, [2, 2, 2, 2])
        shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                  if torch.equal(b, padded[:, 2 + dy:18 + dy, 2 + dx:18 + dx])]
        assert len(shifts) == 1


def test_cutout_zeros_one_square_of_half_the_side():
    torch.manual_seed(0)
    out = DiffAugment(IMAGES, "cutout")(torch.ones(32, 1, 16, 16))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    for img in out[:, 0]:
        rows, cols = (img == 0).any(dim=1), (img == 0).any(dim=0)
        assert (img == 0).sum() == rows.sum() * cols.sum()  # a rectangle
        assert 4 <= rows.sum() <= 8 and 4 <= cols.sum() <= 8  # 8x8, cut by the border at most in half


def test_color_on_a_flat_grey_image_is_a_brightness_shift_within_half():
    torch.manual_seed(0)
    out = DiffAugment(IMAGES, "color")(torch.full((64, 1, 16, 16), 0.25))
    shift = out[:, 0, 0, 0] - 0.25
    assert torch.allclose(out, (0.25 + shift)[:, None, None, None])  # contrast and saturation: identity here
    assert shift.abs().max() <= 0.5 and shift.std() > 0.2


def test_ada_p_follows_the_sign_of_d_on_reals():
    ada = ADA(IMAGES, interval=4, kimg=1, target=0.6)
    for _ in range(3):
        ada.observe(torch.ones(64))
    assert ada.p.item() == 0  # only every `interval` observations
    ada.observe(torch.ones(64))
    assert ada.p.item() == pytest.approx(4 * 64 / 1000)  # r = 1 > 0.6: up by one batch-interval / kimg
    for _ in range(4):
        ada.observe(torch.tensor([1.0] * 32 + [-1.0] * 32))  # r = 0 < 0.6: down again
    assert ada.p.item() == pytest.approx(0)
    for _ in range(8):
        ada.observe(-torch.ones(64))
    assert ada.p.item() == 0  # never below 0
    state = ada.state_dict()
    again = ADA(IMAGES, interval=4, kimg=1)
    again.load_state_dict(state)
    assert again.p == ada.p and again.seen == ada.seen


@pytest.mark.parametrize("make,message", [
    (lambda: DiffAugment(IMAGES, "translation,flip"), "augmentation diffaugment has no operation 'flip'; its "
     "operations: color, translation, cutout (e.g. --augment diffaugment --augment-opt policy=translation,cutout)"),
    (lambda: DiffAugment(IMAGES, p=2), "augmentation diffaugment option p must be between 0 and 1, got 2"),
    (lambda: ADA(DataSpec((2,))), "augmentation ada is for images, and the data has samples of shape (2,); "
     "drop --augment"),
    (lambda: ADA(IMAGES, target=1.5), "augmentation ada option target must be between 0 and 1, got 1.5"),
])
def test_bad_options_are_one_line(make, message):
    with pytest.raises(UsageError) as exc:
        make()
    assert str(exc.value) == message


def test_the_example_in_diffaugments_error_trains(tmp_path):
    """The command the error suggests is one ganforge train takes (it once suggested a spelling it refuses)."""
    with pytest.raises(UsageError) as exc:
        DiffAugment(IMAGES, "flip")
    example = re.search(r"\(e\.g\. (.*)\)$", str(exc.value)).group(1).split()
    result = runner.invoke(app, ["train", "--steps", "1", "--arch-opt", "width=8", "--no-progress", "--out-dir",
                                 str(tmp_path), "--name", "r", *example])
    assert result.exit_code == 0, result.output
    assert tomllib.loads((tmp_path / "r" / "config.toml").read_text())["augment_options"] == {
        "policy": "translation,cutout"}


class Recording(Augmentation):
    """Adds a constant; records every batch it augments and the real logits it is shown."""

    made = []

    def __init__(self, spec):
        self.seen, self.observed = [], []
        Recording.made.append(self)

    def __call__(self, x):
        self.seen.append(x.detach().clone())
        return x + 0.5

    def observe(self, real_logits):
        self.observed.append(real_logits.clone())


class RecordingPlugin:
    @hookimpl
    def register_augmentations(self, register):
        register("recording", Recording)


def test_d_sees_real_and_generated_batches_augmented_alike_and_observes_reals(tmp_path):
    Recording.made.clear()
    with plugin_registered(RecordingPlugin(), "recording-plugin"):
        ganforge.train(**TINY_IMAGES, steps=2, augment="recording", r1=0, out_dir=str(tmp_path), name="r")
    (augment,) = Recording.made
    # first the contract check on a dummy batch of 2; then per step: D's loss on the real batch, then on
    # the fake one, then G's loss on the same fake one
    assert len(augment.seen) == 7 and len(augment.observed) == 2 and len(augment.seen[0]) == 2
    real, fake_d, fake_g = augment.seen[1:4]
    assert real.min() >= -1 and real.max() <= 1 and torch.equal(fake_d, fake_g)
    assert augment.observed[0].shape == (16,)


class SmallD(torch.nn.Module):
    """A small conv D, nonlinear in its input, so that its input gradient depends on the weights."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.out = torch.nn.Linear(4 * 16 * 16, 1)

    def forward(self, x, labels=None):
        return self.out(torch.tanh(self.conv(x)).flatten(1)).squeeze(1)


def test_r1_and_its_weight_gradient_match_a_float64_reference():
    torch.manual_seed(0)
    D, x = SmallD(), images()
    value = penalties.squared_gradient_norm(D, x)
    (w_grad,) = torch.autograd.grad(value, D.conv.weight)

    D64, x64 = SmallD().double(), x.double().requires_grad_(True)
    D64.load_state_dict({k: v.double() for k, v in D.state_dict().items()})
    (g,) = torch.autograd.grad(D64(x64).sum(), x64, create_graph=True)
    reference = g.square().sum(dim=(1, 2, 3)).mean()
    (w_reference,) = torch.autograd.grad(reference, D64.conv.weight)
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)
    assert torch.allclose(w_grad.double(), w_reference, rtol=1e-4, atol=1e-7)
    # the fp16 recipe: scaling the logits and unscaling the gradients changes nothing in fp32
    assert penalties.squared_gradient_norm(D, x, scale=1024.0).item() == pytest.approx(value.item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = penalties.squared_gradient_norm(D, x)
    assert low.dtype == torch.float32 and low.item() == pytest.approx(value.item(), rel=0.05)


def test_r1_is_lazy_every_n_updates_weighted_by_n(tmp_path, monkeypatch):
    passed = []
    d_step = training.d_step

    def spy(*args):
        passed.append(args[-2:])
        return d_step(*args)

    monkeypatch.setattr(training, "d_step", spy)
    ganforge.train(**TINY_IMAGES, steps=3, d_steps=2, r1=0.5, r2=0.25, reg_every=3, out_dir=str(tmp_path), name="r")
    assert passed == [(1.5, 0.75), (0, 0), (0, 0), (1.5, 0.75), (0, 0), (0, 0)]


def test_a_d_step_with_r1_adds_gamma_half_its_gradient():
    """The D update's gradient is that of the loss plus gamma/2 R1 at the real batch."""
    cfg, real, bce = TrainConfig(lr_d=1e-30), images(16), NonSaturating()
    grads = []
    for gamma in (0.0, 3.0):
        torch.manual_seed(0)
        G, D = dcgan(IMAGES, 8, width=8, d_norm="none")
        state = TrainState(cfg, G, D, None, torch.device("cpu"))
        training.d_step(state, training.Nets(cfg, state, bce, 1), bce, real, None, nullcontext, False, False,
                        r1=gamma)
        grads.append([p.grad.clone() for p in D.parameters()])
    torch.manual_seed(0)
    _, D = dcgan(IMAGES, 8, width=8, d_norm="none")
    r1 = torch.autograd.grad(penalties.squared_gradient_norm(D, real), list(D.parameters()), allow_unused=True)
    for without, with_r1, extra in zip(*grads, r1):
        extra = torch.zeros_like(without) if extra is None else extra  # the last bias: no input gradient
        assert torch.allclose(with_r1 - without, 1.5 * extra, rtol=1e-4, atol=1e-6)


def test_r1_and_r2_together_match_a_float64_reference():
    """R3GAN's recipe on one D update: rpgan, gamma/2 R1 at the real batch and gamma/2 R2 at the generated
    one; the update's gradient against the same sum written out and differentiated in float64."""
    cfg, real, loss = TrainConfig(lr_d=1e-30), images(16), RelativisticPairing()
    torch.manual_seed(0)
    G, D = resnet(IMAGES, 8, width=8)
    for p in D.parameters():  # away from the fix-up start, where every block is the identity
        p.data.add_(0.05 * torch.randn_like(p))
    D64 = copy.deepcopy(D).double()
    state = TrainState(cfg, G, D, None, torch.device("cpu"))
    _, fake = training.d_step(state, training.Nets(cfg, state, loss, 1), loss, real, None, nullcontext, False, False,
                              r1=2.0, r2=0.5)

    def squared_gradient_norm(x):
        x = x.double().requires_grad_(True)
        (g,) = torch.autograd.grad(D64(x).sum(), x, create_graph=True)
        return g.square().sum(dim=(1, 2, 3)).mean()

    real64, fake64 = real.double(), fake.detach().double()
    total = (torch.nn.functional.softplus(D64(fake64) - D64(real64)).mean()
             + 2.0 / 2 * squared_gradient_norm(real64) + 0.5 / 2 * squared_gradient_norm(fake64))
    reference = torch.autograd.grad(total, list(D64.parameters()))
    for p, expected in zip(D.parameters(), reference):
        torch.testing.assert_close(p.grad.double(), expected, rtol=1e-4, atol=1e-6)
    assert squared_gradient_norm(fake64) > 0.1 * squared_gradient_norm(real64) > 0  # R2 is a real part of it


def test_spectral_norm_holds_every_d_weight_to_norm_one():
    G, D = dcgan(IMAGES, 8, width=8, d_norm="spectral")
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in D.modules())
    for _ in range(30):  # power iterations run in training-mode forwards
        D(images(4))
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)


def test_an_augmented_regularized_run_exports_and_verifies(tmp_path):
    run = ganforge.train(**TINY_IMAGES, steps=3, ema=True, augment="ada", augment_options={"kimg": 0.01}, r1=1.0,
                         r2=0.5, reg_every=2, out_dir=str(tmp_path), name="r")
    for path, diff in export(run):
        assert path.is_file() and diff <= 1e-4


def test_the_guides_augmentation_plugin_installs_and_trains(site, tmp_path):
    """docs/plugins.md's augmentation plugin, installed from the guide's own text."""
    module = next(b for b in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
                  if "register_augmentations" in b)
    site("ganforge-noise", "noise", "ganforge_noise", module)
    assert "augmentations: noise" in runner.invoke(app, ["plugins"]).output
    flags = ["--dataset", "digits", "--image-size", "16", "--arch-opt", "width=8", "--batch-size", "16", "--no-progress",
             "--steps", "2", "--out-dir", str(tmp_path)]
    result = runner.invoke(app, ["train", *flags, "--augment", "noise", "--augment-opt", "std=0.05", "--name", "r"])
    assert result.exit_code == 0, result.output
    assert 'augment = "noise"' in (tmp_path / "r" / "config.toml").read_text()
    result = runner.invoke(app, ["train", *flags, "--augment", "noise", "--augment-opt", "std=-1", "--name", "r2"])
    assert result.exit_code == 2
    assert result.output == "Error: augmentation noise option std must be >= 0, got -1\n"
    assert not (tmp_path / "r2").exists()

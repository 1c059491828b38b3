"""ganforge.contracts: each check's one-line message, and a good case that passes."""
import pytest
import torch
from torch import nn

from ganforge.contracts import (call_dataset, check_data, check_generator_output, check_logits, check_loss_value,
                                check_models, describe)
from ganforge.errors import UsageError
from ganforge.interfaces import Data, DataSpec, StreamingData
from ganforge.plugins import Entry, Plugin

PLUGIN = Plugin("x", "ganforge-x", "1.0")
LOSS, ARCH, DATA = (Entry(kind, "bad", None, PLUGIN) for kind in ("losses", "architectures", "datasets"))


def message(check, *args, **kwargs) -> str:
    with pytest.raises(UsageError) as err:
        check(*args, **kwargs)
    return str(err.value)


def test_describe_names_the_part_the_plugin_and_the_package():
    assert describe(LOSS) == "loss 'bad' (plugin 'x', package ganforge-x)"
    assert describe(Entry("feature_extractors", "f", None, PLUGIN)) == \
        "feature extractor 'f' (plugin 'x', package ganforge-x)"


def test_loss_value():
    logits = torch.randn(4, requires_grad=True)
    check_loss_value(logits.mean(), LOSS, "discriminator_loss")  # good
    assert message(check_loss_value, 0.5, LOSS, "discriminator_loss") == (
        "loss 'bad' (plugin 'x', package ganforge-x): discriminator_loss returned a float, not a scalar tensor; "
        "return a torch tensor (e.g. F.softplus(-D(real, labels).float()).mean()), not a Python number")
    assert message(check_loss_value, None, LOSS, "generator_loss").startswith(
        "loss 'bad' (plugin 'x', package ganforge-x): generator_loss returned None, not a scalar tensor;")
    assert message(check_loss_value, logits * 2, LOSS, "discriminator_loss") == (
        "loss 'bad' (plugin 'x', package ganforge-x): discriminator_loss returned a tensor of shape [4], "
        "not a scalar; reduce it to one number (e.g. .mean())")
    detached = "returned a tensor that does not depend on {}'s output through autograd (requires_grad is " \
               "False); compute it from D(...) with torch ops: did you call .item() or detach()?"
    assert message(check_loss_value, logits.mean().detach(), LOSS, "discriminator_loss") == (
        "loss 'bad' (plugin 'x', package ganforge-x): discriminator_loss " + detached.format("D"))
    assert message(check_loss_value, torch.tensor(1.0), LOSS, "generator_loss") == (
        "loss 'bad' (plugin 'x', package ganforge-x): generator_loss " + detached.format("G"))


class G(nn.Module):
    def __init__(self, output_shape=(2,)):
        super().__init__()
        self.latent_dim, self.output_shape = 3, output_shape


def test_generator_output():
    spec = DataSpec((1, 4, 4))
    check_generator_output(torch.zeros(2, 1, 4, 4), G((1, 4, 4)), spec, ARCH)  # good
    prefix = "architecture 'bad' (plugin 'x', package ganforge-x): the generator"
    assert message(check_generator_output, torch.zeros(2, 1, 4, 4), G((1, 8, 8)), spec, ARCH) == (
        f"{prefix}'s output_shape is [1, 8, 8], not the data's [1, 4, 4]; set it to spec.shape")
    assert message(check_generator_output, [1.0], G((1, 4, 4)), spec, ARCH) == (
        f"{prefix} returned a list, not a tensor; return a float tensor [B, *spec.shape]")
    assert message(check_generator_output, torch.zeros(2, 16), G((1, 4, 4)), spec, ARCH) == (
        f"{prefix} returned shape [2, 16] for 2 latents; it must return [2, 1, 4, 4] ([B, *spec.shape])")
    assert message(check_generator_output, torch.zeros(2, 1, 4, 4, dtype=torch.long), G((1, 4, 4)), spec,
                   ARCH) == (f"{prefix} returned dtype torch.int64; it must return a floating-point tensor "
                             "(images in [-1, 1]: end in tanh)")


def test_logits():
    check_logits(torch.zeros(4), 4, ARCH)  # good
    check_logits(torch.zeros(2), 4, ARCH, pack=2)
    prefix = "architecture 'bad' (plugin 'x', package ganforge-x): the discriminator"
    assert message(check_logits, torch.zeros(4, 1), 4, ARCH) == (
        f"{prefix} returned shape [4, 1] for 4 samples; it must return raw logits of shape [4] ([B]): "
        "flatten the trailing singleton dimension (.flatten() or .squeeze(1))")
    assert message(check_logits, torch.zeros(4), 4, ARCH, pack=2) == (
        f"{prefix} returned shape [4] for 4 samples packed by 2; it must return raw logits of shape [2] "
        "([B/pack])")
    assert message(check_logits, (torch.zeros(4),), 4, ARCH) == (
        f"{prefix} returned a tuple for 4 samples, not a tensor; return raw logits of shape [4] ([B])")


def test_data():
    prefix = "dataset 'bad' (plugin 'x', package ganforge-x)"
    check_data(Data(torch.rand(5, 1, 2, 2) * 2 - 1, torch.arange(5) % 2, 2), DATA)  # good
    check_data(Data(torch.zeros(5, 1, 2, 2, dtype=torch.uint8) + 255), DATA)
    check_data(Data(torch.randn(5, 2) * 100), DATA)  # vectors: any range
    check_data(StreamingData([(torch.zeros(2), 0)], (2,)), DATA)
    assert message(check_data, {"x": 1}, DATA) == (
        f"{prefix} returned a dict, not ganforge.interfaces.Data or StreamingData; return Data(x, labels, "
        "num_classes)")
    assert message(check_data, StreamingData([], (2,)), DATA) == f"{prefix} returned no samples; it needs at least one"
    assert message(check_data, Data(torch.zeros(5, 2, dtype=torch.int32)), DATA) == (
        f"{prefix}: x has dtype torch.int32; use uint8 images [N, C, H, W] (0..255) or a float tensor [N, *shape]")
    assert message(check_data, Data(torch.arange(20.0).reshape(5, 1, 2, 2)), DATA) == (
        f"{prefix}: float images must be in [-1, 1], got values in [0, 19]; scale them (x / 127.5 - 1 for 0..255) "
        "or pass uint8")
    assert message(check_data, Data(torch.zeros(5, 2), torch.tensor([0, 1, 2, 0, 1]), 2), DATA) == (
        f"{prefix}: labels must be in range(2) (num_classes), got values from 0 to 2")
    assert message(check_data, Data(torch.zeros(5, 2), torch.tensor([-1, 1, 0, 0, 1])), DATA) == (
        f"{prefix}: labels must be in range(2) (num_classes), got values from -1 to 1")
    changed = Data(torch.zeros(5, 2), torch.arange(5))
    changed.labels = changed.labels.float()
    assert message(check_data, changed, DATA) == f"{prefix}: labels must be int64 [5], got torch.float32 [5]"


def test_call_dataset_turns_only_datas_own_refusals_into_one_line():
    assert len(call_dataset(DATA, lambda: Data(torch.zeros(3, 2)))) == 3  # good
    assert message(call_dataset, DATA, lambda: Data(torch.zeros(3, 2), torch.zeros(2))) == (
        "dataset 'bad' (plugin 'x', package ganforge-x): Data(...) refused what the factory passed: labels must "
        "have shape [3], got (2,)")
    assert message(call_dataset, DATA, lambda: Data(torch.zeros(0, 2))) == (
        "dataset 'bad' (plugin 'x', package ganforge-x): Data(...) refused what the factory passed: Data needs a "
        "non-empty [N, *shape] tensor, got shape (0, 2)")

    def own_error():
        raise ValueError("the factory's own bug")
    with pytest.raises(ValueError, match="the factory's own bug"):  # not Data's: left alone
        call_dataset(DATA, own_error)


class Net(nn.Module):
    """A G (or a D with ``logit_shape``) with BatchNorm, dropout and spectral norm: state that a
    forward pass in train mode would change."""

    def __init__(self, out, logit_shape=None):
        super().__init__()
        self.latent_dim, self.output_shape, self.logit_shape = 3, (out,), logit_shape
        self.net = nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(3 if logit_shape is None else 2,
                                                                                   out)),
                                 nn.BatchNorm1d(out), nn.Dropout(0.5))

    def forward(self, x, labels=None):
        out = self.net(x)
        return out if self.logit_shape is None else out.reshape(self.logit_shape)


def test_models_leave_weights_buffers_modes_and_the_global_rng_alone():
    torch.manual_seed(1)
    G, D = Net(2), Net(1, logit_shape=(-1,))
    D.net[2].eval()  # a submodule's own mode is restored as it was
    state = lambda: [v.clone() for v in [*G.state_dict().values(), *D.state_dict().values()]]  # noqa: E731
    before = state()
    rng = torch.get_rng_state()
    check_models(G, D, DataSpec((2,)), 1, ARCH, ARCH)  # good
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a, b) for a, b in zip(before, state(), strict=True))
    assert G.training and D.training and not D.net[2].training
    D.logit_shape = (-1, 1)
    assert message(check_models, G, D, DataSpec((2,)), 1, ARCH, ARCH).startswith(
        "architecture 'bad' (plugin 'x', package ganforge-x): the discriminator returned shape [2, 1] for 2 samples;")
    assert G.training and D.training  # restored after a failed check too

"""Every registered architecture (built-in or plugin) on several data shapes.

An architecture may refuse a shape it cannot make, but only with a UsageError;
whatever it builds must honour the contract in ganforge.interfaces.
"""
import math

import pytest
import torch
from torch import nn

from ganforge.config import TrainConfig
from ganforge.errors import UsageError
from ganforge.interfaces import DataSpec
from ganforge.plugins import get_registry
from ganforge.models import build_models

SPECS = [(1, 16, 16), (3, 32, 32), (1, 64, 64), (3, 64, 64), (2,), (1,)]
ARCHS = get_registry().names("architectures")
# the built-in refusals; plugins may refuse any shape, with a UsageError
BUILTIN_REFUSALS = {(arch, shape) for arch in ("dcgan", "resnet") for shape in ((2,), (1,))}


def build(arch, shape, num_classes=None, latent_dim=16, **options):
    torch.manual_seed(0)
    return get_registry().create("architectures", arch, DataSpec(shape, num_classes), latent_dim, **options)


@pytest.mark.parametrize("shape", SPECS, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_contract(arch, shape):
    try:
        G, D = build(arch, shape)
    except UsageError:
        builtin = get_registry().get("architectures", arch).plugin.builtin
        assert not builtin or (arch, shape) in BUILTIN_REFUSALS
        return
    assert G.latent_dim == 16 and tuple(G.output_shape) == shape and getattr(G, "num_classes", None) is None
    z = torch.randn(8, 16)
    x = G(z)
    assert x.shape == (8, *shape) and torch.isfinite(x).all()
    if len(shape) == 3:
        assert x.min() >= -1 and x.max() <= 1
    logits = D(x)
    assert logits.shape == (8,) and torch.isfinite(logits).all()
    logits.sum().backward()  # gradients reach every generator parameter through D
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in G.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_discriminator_emits_logits_not_probabilities(arch):
    G, D = build(arch, (1, 32, 32))
    with torch.no_grad():
        for p in D.parameters():
            p.mul_(50)  # a sigmoid output would stay in (0, 1)
        logits = D(torch.rand(32, 1, 32, 32) * 2 - 1)
    assert logits.min() < 0 < logits.max() or logits.abs().max() > 1


@pytest.mark.parametrize("arch", ARCHS)
def test_conditional_architecture_uses_labels(arch):
    G, D = build(arch, (1, 32, 32), num_classes=10)
    G.eval()
    assert G.num_classes == 10
    z = torch.randn(4, 16).repeat(2, 1)
    labels = torch.tensor([0, 1, 2, 3, 9, 8, 7, 6])
    x = G(z, labels)
    assert x.shape == (8, 1, 32, 32)
    assert not torch.allclose(x[:4], x[4:])  # same z, other labels, other images
    D.eval()
    same = x[:4].repeat(2, 1, 1, 1)
    out = D(same, labels)
    assert out.shape == (8,) and not torch.allclose(out[:4], out[4:])


@pytest.mark.parametrize("arch,shape,options", [("dcgan", (1, 32, 32), {"d_norm": norm})
                                                for norm in ("batch", "layer", "spectral", "none")]
                         + [("mlp", (2,), {})])
def test_a_built_in_conditional_discriminators_class_term_starts_on_the_logits_scale(arch, shape, options):
    """nn.Embedding's N(0, 1) made the class term 50-150x the logits' spread at the start, which
    left a conditional lsgan run on the digits grey; N(0, 0.02) keeps it within a few times."""
    _, D = build(arch, shape, num_classes=10, **options)
    x = (torch.rand(16, *shape) * 2 - 1).repeat(10, *[1] * len(shape))
    with torch.no_grad():
        out = D(x, torch.arange(10).repeat_interleave(16)).view(10, 16)  # ten labels (rows) x 16 inputs
    across_labels, across_inputs = out.std(dim=0).mean(), out.mean(dim=0).std()
    assert across_labels < 10 * across_inputs


def test_dcgan_init_follows_radford():
    G, D = build("dcgan", (3, 64, 64), latent_dim=100)
    for module in [*G.modules(), *D.modules()]:
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.weight.numel() > 1000:
            assert abs(module.weight.mean().item()) < 0.002
            assert module.weight.std().item() == pytest.approx(0.02, rel=0.05)
        if isinstance(module, nn.BatchNorm2d):
            assert module.weight.mean().item() == pytest.approx(1.0, abs=0.01)
            assert module.bias.abs().max().item() == 0


def test_dcgan_layout_matches_the_paper():
    G, D = build("dcgan", (1, 32, 32), latent_dim=100)
    convs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [256, 128, 64, 1]  # 100 -> 256 -> 128 -> 64 -> 1
    assert isinstance(list(G.modules())[-1], nn.Tanh)
    d_convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in d_convs] == [64, 128, 256, 1]
    assert not any(isinstance(m, nn.Sigmoid) for m in D.modules())


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_dcgan_nearest_upsampling(size):
    G, D = build("dcgan", (3, size, size), upsample="nearest", width=8)
    assert not any(isinstance(m, nn.ConvTranspose2d) and m.stride == (2, 2) for m in G.modules())
    assert G(torch.randn(2, 16)).shape == (2, 3, size, size)


@pytest.mark.parametrize("shape,message", [
    ((1, 28, 28), "dcgan needs square power-of-two images of at least 16x16, got 28x28; set --image-size"),
    ((1, 8, 8), "got 8x8"),
    ((2,), "dcgan needs image data, got samples of shape (2,); use --arch mlp"),
])
def test_dcgan_refuses_shapes_it_cannot_make(shape, message):
    with pytest.raises(UsageError) as err:
        build("dcgan", shape)
    assert message in str(err.value)


SQUARE = "x needs square power-of-two images of at least 32x32, got {}; set --image-size to 32, 64, 128, ..."


@pytest.mark.parametrize("shape,message", [
    ((3, 16, 16), SQUARE.format("16x16")), ((3, 48, 48), SQUARE.format("48x48")), ((3, 64, 32), SQUARE.format("64x32")),
    ((8,), "x needs image data, got samples of shape (8,); use --arch mlp"),
    ((1, 32, 32), None), ((3, 128, 128), None),
])
def test_the_public_image_size_check(shape, message):
    """DataSpec.check_image_size, which the built-in networks and the sngan plugin use."""
    if message is None:
        DataSpec(shape).check_image_size("x", smallest=32)
        return
    with pytest.raises(UsageError) as err:
        DataSpec(shape).check_image_size("x", smallest=32)
    assert str(err.value) == message


def test_dcgan_rejects_bad_options():
    with pytest.raises(UsageError, match="upsample must be 'transposed' or 'nearest', got 'bilinear'"):
        build("dcgan", (1, 32, 32), upsample="bilinear")
    with pytest.raises(UsageError, match="architecture 'dcgan' has no option 'depth'; its options: width, upsample, d_norm"):
        build("dcgan", (1, 32, 32), depth=3)


def test_mlp_g_layers_deepens_the_generator_alone():
    linears = lambda net: sum(isinstance(m, nn.Linear) for m in net.modules())
    G, D = build("mlp", (2,), hidden=8, layers=2, g_layers=5)
    assert (linears(G), linears(D)) == (6, 3)  # hidden layers + the output layer
    assert linears(build("mlp", (2,), hidden=8, layers=2)[0]) == 3  # default: as many as D
    with pytest.raises(UsageError, match="mlp option g_layers must be a positive integer, got 0"):
        build("mlp", (2,), g_layers=0)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_resnet_is_r3gans_design(size):
    """No normalisation, channels doubling at each halving from ``width``, and every residual block starting
    as the identity (its last convolution zero: fix-up initialisation), at any power-of-two size."""
    from ganforge.builtin.architectures import ResidualBlock

    G, D = build("resnet", (3, size, size), width=8)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) for m in [*G.modules(), *D.modules()])
    stages = int(math.log2(size)) - 1  # 4x4 up to size x size
    widths = [8 * 2 ** i for i in range(stages)][::-1]  # 4x4 first
    assert [stage[0].widen.in_channels for stage in G.stages] == widths
    assert [stage[0].widen.in_channels for stage in D.stages] == widths[::-1]
    blocks = [m for m in [*G.modules(), *D.modules()] if isinstance(m, ResidualBlock)]
    assert len(blocks) == 2 * stages
    for block in blocks:
        x = torch.randn(2, block.widen.in_channels, 4, 4)
        assert torch.equal(block(x), x)  # the identity at the start
        assert block.spatial.groups == max(1, block.spatial.in_channels // 16)  # 16 channels a group


def test_resnet_scales_a_blocks_inner_weights_by_the_number_of_blocks():
    """Fix-up: with the last convolution at zero, the others are He-initialised and scaled by L ** -1/4."""
    from ganforge.builtin.architectures import ResidualBlock

    torch.manual_seed(0)
    one, sixteen = ResidualBlock(64, 2, 16, blocks=1), ResidualBlock(64, 2, 16, blocks=16)
    he = math.sqrt(2 / (1 + 0.2 ** 2) / 64)  # kaiming_normal_ with a=0.2 on 64 input channels
    assert one.widen.weight.std().item() == pytest.approx(he, rel=0.05)
    assert sixteen.widen.weight.std().item() == pytest.approx(he / 2, rel=0.05)


def test_resnet_options_and_refusals():
    G, D = build("resnet", (1, 32, 32), width=4, blocks=2, expansion=3, group=4)
    assert all(len(stage) == 2 for stage in [*G.stages, *D.stages])
    assert G.stages[-1][0].widen.out_channels == 12 and G.stages[-1][0].spatial.groups == 3
    with pytest.raises(UsageError, match="resnet needs square power-of-two images of at least 16x16, got 28x28"):
        build("resnet", (1, 28, 28))
    with pytest.raises(UsageError, match="resnet option blocks must be a positive integer, got 0"):
        build("resnet", (1, 32, 32), blocks=0)
    with pytest.raises(UsageError, match=r"resnet needs image data, got samples of shape \(2,\); use --arch mlp"):
        build("resnet", (2,))


def test_generator_of_one_architecture_with_discriminator_of_another():
    cfg = TrainConfig(arch="dcgan", d_arch="mlp", latent_dim=16, arch_options={"width": 8})
    G, D = build_models(cfg, DataSpec((1, 32, 32)))
    assert any(isinstance(m, nn.ConvTranspose2d) for m in G.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in D.modules())
    assert D(G(torch.randn(3, 16))).shape == (3,)


@pytest.mark.parametrize("arch,shape,options,layers", [
    ("dcgan", (3, 32, 32), {"width": 8}, {"batch": nn.BatchNorm2d, "layer": nn.GroupNorm}),
    ("mlp", (2,), {"hidden": 8}, {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}),
])
@pytest.mark.parametrize("norm", ["batch", "layer", "spectral", "none"])
def test_discriminator_normalisation(arch, shape, options, layers, norm):
    """Of the 3 hidden layers all but the first are followed by the layer ``d_norm`` names; "spectral"
    reparametrises every weight (the hidden layers and the output)."""
    _, D = build(arch, shape, d_norm=norm, **options)
    norms = [type(m) for m in D.modules() if isinstance(m, tuple(layers.values()))]
    assert norms == ([layers[norm]] * 2 if norm in layers else [])
    spectral = [m for m in D.modules() if hasattr(m, "parametrizations")]
    assert len(spectral) == (4 if norm == "spectral" else 0)  # the hidden layers and the output
    # per-sample normalisation: a sample's logit does not depend on the rest of the batch
    x = torch.randn(4, *shape)
    with nn.utils.parametrize.cached():  # one power iteration for both calls
        independent = torch.allclose(D(x)[:2], D(x[:2]), atol=1e-5)
    assert independent == (norm != "batch")


@pytest.mark.parametrize("arch", ["dcgan", "mlp"])
def test_discriminator_norm_names_its_choices(arch):
    with pytest.raises(UsageError, match=f"{arch} option d_norm must be 'batch', 'layer', 'spectral' or 'none', "
                                         "got 'group'"):
        build(arch, (1, 32, 32), d_norm="group")

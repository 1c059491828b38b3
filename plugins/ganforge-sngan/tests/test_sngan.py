"""The SNGAN plugin: layout, spectral normalisation, and training + export through the CLI."""
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from ganforge.cli import app
from ganforge.interfaces import DataSpec
from ganforge.plugins import get_registry


def build(shape, **options):
    torch.manual_seed(0)
    return get_registry().create("architectures", "sngan", DataSpec(shape), 16, **options)


def test_layout_for_32_and_64():
    for size, up, down in ((32, 3, 2), (64, 4, 3)):
        G, D = build((3, size, size), g_width=32, d_width=32)
        assert len(G.blocks) == up and G(torch.randn(2, 16)).shape == (2, 3, size, size)
        x = torch.randn(2, 3, size, size)
        assert D.blocks(x).shape == (2, 32, 8, 8)  # `down` halvings to 8x8, as in the paper
        assert sum(isinstance(block.main[-1], nn.AvgPool2d) for block in D.blocks[:-1]) == down
        assert D(x).shape == (2,)


def test_every_discriminator_weight_is_spectrally_normalised():
    _, D = build((3, 32, 32), g_width=16, d_width=16)
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(hasattr(m, "parametrizations") for m in layers)
    D.train()
    for _ in range(30):  # power iterations converge: the largest singular value becomes 1
        D(torch.randn(2, 3, 32, 32))
    weight = D.linear.weight
    assert torch.linalg.matrix_norm(weight, ord=2).item() == pytest.approx(1.0, abs=1e-3)


def test_refuses_small_images():
    from ganforge.errors import UsageError

    with pytest.raises(UsageError, match="sngan needs square power-of-two images of at least 32x32, got 16x16"):
        build((1, 16, 16))


def test_trains_and_exports_through_the_cli(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--arch", "sngan", "--loss", "hinge", "--arch-opt", "g_width=16",
                                 "--arch-opt", "d_width=16", "--steps", "2", "--batch-size", "8",
                                 "--out-dir", str(tmp_path), "--no-progress", "--conditional"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "sngan-hinge-digits-001"
    result = runner.invoke(app, ["export", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "export" / "generator.onnx").is_file() and (run / "export" / "generator.pt").is_file()
    assert '"package": "ganforge-sngan"' in (run / "run.json").read_text()

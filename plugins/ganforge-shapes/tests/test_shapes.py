"""The shapes dataset: shape, range, labels that mean what they say, determinism, training."""
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ganforge.cli import app
from ganforge.errors import UsageError
from ganforge.plugins import get_registry


def create(**options):
    return get_registry().create("datasets", "shapes", None, options.pop("image_size", None), False, **options)


def test_shape_range_and_labels():
    data = create(n=300, image_size=32)
    assert data.x.shape == (300, 3, 32, 32) and data.x.dtype == torch.uint8 and data.num_classes == 3
    assert set(data.labels.tolist()) == {0, 1, 2}
    x, labels = data.batch(torch.arange(300))
    assert x.min() >= -1 and x.max() <= 1 and torch.equal(labels, data.labels)


def test_labels_match_what_is_drawn():
    # a filled circle covers pi/4 of its bounding box; a triangle (any rotation) clearly less
    data = create(n=200, image_size=64, channels=1, shapes=["circle", "square", "triangle"])
    fill = []
    for img in data.x[:, 0].numpy():
        bright = img > img.max() / 2
        ys, xs = np.nonzero(bright)
        fill.append(bright.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
    fill = np.array(fill)
    labels = data.labels.numpy()
    circle, triangle = fill[labels == 0].mean(), fill[labels == 2].mean()
    assert circle == pytest.approx(np.pi / 4, abs=0.05)
    assert triangle < circle - 0.1


def test_same_seed_same_images():
    assert torch.equal(create(n=20, seed=5).x, create(n=20, seed=5).x)
    assert not torch.equal(create(n=20, seed=5).x, create(n=20, seed=6).x)


def test_bad_options():
    with pytest.raises(UsageError, match="shapes option shapes must be distinct names from circle, square, triangle"):
        create(shapes=["hexagon"])
    with pytest.raises(UsageError, match="shapes option n must be a positive integer, got 0"):
        create(n=0)


def test_trains_conditionally_through_the_cli(tmp_path):
    result = CliRunner().invoke(app, ["train", "--dataset", "shapes", "--data-opt", "n=64", "--conditional",
                                      "--arch-opt", "width=8", "--image-size", "16", "--steps", "2",
                                      "--batch-size", "16", "--out-dir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "dcgan-bce-shapes-001" / "samples" / "step-2.png").is_file()

"""Dataset shapes, value ranges and labels; MNIST from ../shared/data; error messages."""
from pathlib import Path

import pytest
import torch
from PIL import Image

from ganforge.builtin.datasets import grid_modes, ring_modes
from ganforge.errors import UsageError
from ganforge.interfaces import Data
from ganforge.plugins import get_registry

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def create(name, root=None, image_size=None, download=False, **options):
    return get_registry().create("datasets", name, root, image_size, download, **options)


def check_images(data: Data, n, shape, num_classes):
    assert len(data) == n and data.shape == shape and data.is_image
    x, labels = data.batch(torch.arange(min(n, 512)))
    assert x.dtype == torch.float32 and x.shape == (min(n, 512), *shape)
    assert x.min() >= -1 and x.max() <= 1
    assert x.min() < -0.9 and x.max() > 0.9  # uses the whole range: black background, white strokes
    if num_classes:
        assert data.num_classes == num_classes and labels.dtype == torch.int64
        assert set(data.labels.unique().tolist()) == set(range(num_classes))
    else:
        assert labels is None and data.labels is None


@pytest.mark.parametrize("size", [None, 16, 64])
def test_digits_is_embedded_real_data(size):
    data = create("digits", image_size=size)
    check_images(data, 1797, (1, size or 32, size or 32), 10)
    assert data.x.dtype == torch.uint8  # kept small; scaled to [-1, 1] per batch


def test_mnist_from_shared_data():
    data = create("mnist", root=SHARED_DATA, split="test")
    check_images(data, 10_000, (1, 32, 32), 10)
    native = create("mnist", root=SHARED_DATA, image_size=28, split="test")
    assert native.x.shape == (10_000, 1, 28, 28)
    assert native.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the t10k file's first labels


def test_stacked_mnist_stacks_three_seeded_digits_as_rgb():
    digits = create("mnist", root=SHARED_DATA, split="test")
    data = create("stacked-mnist", root=SHARED_DATA, split="test", n=20_000)
    check_images(data, 20_000, (3, 32, 32), 1000)  # every mode present
    assert data.stacked_from.shape == (1, 32, 32) and data.stacked_from.num_classes == 10
    # every channel is one of the digits, and the label reads the three digits as a number (R, G, B)
    for i in (0, 1, 19_999):
        found = [int((digits.x[:, 0] == channel).flatten(1).all(1).nonzero()[0]) for channel in data.x[i]]
        assert data.labels[i] == sum(int(digits.labels[j]) * 10 ** (2 - c) for c, j in enumerate(found))
    same = create("stacked-mnist", root=SHARED_DATA, split="test", n=20_000)
    assert torch.equal(same.x, data.x) and torch.equal(same.labels, data.labels)  # seeded
    other = create("stacked-mnist", root=SHARED_DATA, split="test", n=20_000, seed=1)
    assert not torch.equal(other.labels, data.labels)
    assert torch.equal(create("stacked-mnist", root=SHARED_DATA, split="test", n=10).x, data.x[:10])
    assert create("stacked-mnist", root=SHARED_DATA, split="test").shape == (3, 32, 32)


@pytest.mark.parametrize("options,message", [
    ({"n": 0}, "stacked-mnist option n (number of stacks) must be a positive integer, got 0"),
    ({"seed": 1.5}, "stacked-mnist option seed must be an integer, got 1.5"),
    ({"split": "val"}, "MNIST option split must be 'train' or 'test', got 'val'"),
])
def test_stacked_mnist_refuses_bad_options(options, message):
    with pytest.raises(UsageError) as err:
        create("stacked-mnist", root=SHARED_DATA, **{"split": "test", **options})
    assert str(err.value) == message


@pytest.mark.parametrize("name,title", [("mnist", "MNIST"), ("fashion-mnist", "Fashion-MNIST"),
                                        ("cifar10", "CIFAR-10")])
def test_missing_torchvision_dataset_says_what_to_do(tmp_path, name, title):
    with pytest.raises(UsageError) as err:
        create(name, root=tmp_path, download=False)
    assert str(err.value) == (f"{title} (train) not found under {tmp_path}; put the files there "
                              "or allow downloading (drop --no-download)")


def test_bad_split_is_refused():
    with pytest.raises(UsageError, match="MNIST option split must be 'train' or 'test', got 'val'"):
        create("mnist", root=SHARED_DATA, split="val")


def test_ring_is_eight_gaussians_on_radius_two():
    data = create("ring", n=20_000)
    assert data.shape == (2,) and not data.is_image and data.num_classes == 8
    x = data.x
    modes = ring_modes()
    assert torch.allclose(modes.norm(dim=1), torch.full((8,), 2.0))
    nearest = torch.cdist(x, modes).argmin(1)
    assert torch.equal(nearest, data.labels)
    spread = x - modes[data.labels]
    assert spread.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.bincount(data.labels, minlength=8).min() > 20_000 / 8 * 0.9


def test_grid_is_twenty_five_gaussians():
    data = create("grid", n=20_000)
    modes = grid_modes()
    assert modes.shape == (25, 2) and set(modes.flatten().tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
    assert (data.x - modes[data.labels]).std().item() == pytest.approx(0.05, rel=0.05)
    assert torch.equal(torch.cdist(data.x, modes).argmin(1), data.labels)


def test_gaussian1d_matches_its_parameters():
    data = create("gaussian1d", mean=-1.5, std=0.5, n=50_000)
    assert data.shape == (1,) and data.labels is None
    assert data.x.mean().item() == pytest.approx(-1.5, abs=0.01)
    assert data.x.std().item() == pytest.approx(0.5, rel=0.02)


def test_toy_data_is_deterministic_per_seed():
    assert torch.equal(create("ring", n=100, seed=3).x, create("ring", n=100, seed=3).x)
    assert not torch.equal(create("ring", n=100, seed=3).x, create("ring", n=100, seed=4).x)


def test_folder_with_class_subfolders_and_a_corrupt_file(tmp_path, capsys):
    for cls, color in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (40 + 10 * i, 30), color).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"not a jpeg")
    data = create("folder", root=tmp_path, image_size=16)
    assert data.x.shape == (6, 3, 16, 16) and data.num_classes == 2
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    x, _ = data.batch(torch.tensor([0, 5]))
    assert x[0, 0].min() == 1 and x[0, 2].max() == -1  # red cat
    assert x[1, 2].min() == 1 and x[1, 0].max() == -1  # blue dog
    assert "skipped 1 unreadable image file(s)" in capsys.readouterr().out
    gray = create("folder", root=tmp_path, image_size=16, channels=1)
    assert gray.shape == (1, 16, 16)


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(2):
        Image.new("L", (20, 20), 128).save(tmp_path / f"{i}.png")
    data = create("folder", root=tmp_path, image_size=16)
    assert data.labels is None and data.num_classes is None and data.shape == (3, 16, 16)


@pytest.mark.parametrize("setup,message", [
    (lambda p: None, "no images (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp) found under"),
    (lambda p: (p / "a.png").write_bytes(b"junk"), "none of the 1 image files under"),
])
def test_folder_errors(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        create("folder", root=tmp_path)
    with pytest.raises(UsageError, match="is not a directory; pass --data-root DIR"):
        create("folder", root=tmp_path / "missing")


def test_data_validates_labels():
    with pytest.raises(ValueError, match=r"labels must have shape \[3\], got \(2,\)"):
        Data(torch.zeros(3, 2), torch.tensor([0, 1]))


def test_a_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    """torchvision makes its folders and a partial file before the network fails: all of it goes, what was
    there stays."""
    import torchvision

    from ganforge.builtin.datasets import fashion_mnist, mnist

    def offline(root, train, download):
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        (raw / "train-images-idx3-ubyte.gz").write_bytes(b"partial")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    (tmp_path / "data" / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "MNIST" / "raw" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"^MNIST \(train\) is not under .* and downloading it failed \(RuntimeError\)"):
        mnist(root=tmp_path / "data")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "data", "data/MNIST", "data/MNIST/raw", "data/MNIST/raw/notes.txt"]
    with pytest.raises(UsageError, match="downloading it failed"):
        fashion_mnist(root=tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()

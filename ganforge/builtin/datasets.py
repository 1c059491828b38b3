"""Built-in datasets: embedded digits, torchvision image sets, image folders and 2-D/1-D toy data."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ganforge.hookspecs import hookimpl
from ganforge.errors import UsageError
from ganforge.interfaces import Data, StreamingData

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@hookimpl
def register_datasets(register):
    register("digits", digits)
    register("mnist", mnist)
    register("stacked-mnist", stacked_mnist)
    register("fashion-mnist", fashion_mnist)
    register("cifar10", cifar10)
    register("folder", folder)
    register("ring", ring)
    register("grid", grid)
    register("gaussian1d", gaussian1d)


def resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, C, size, size] (bilinear, antialiased when shrinking)."""
    if size is None or images.shape[-2:] == (size, size):
        return images
    if size <= 0:
        raise UsageError(f"image size must be positive, got {size}")
    out = []
    for chunk in images.split(4096):
        out.append(F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True,
                                 align_corners=False).round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def digits(root=None, image_size=None, download=False):
    """1,797 real 8x8 handwritten digits (UCI optdigits via scikit-learn), embedded: no download.

    Upscaled to ``image_size`` (default 32), 1 channel, 10 classes.
    """
    from safetensors.torch import load_file

    tensors = load_file(Path(__file__).with_name("digits.safetensors"))
    images = (tensors["images"].float() * (255 / 16)).round().to(torch.uint8)[:, None]
    return Data(resize(images, image_size or 32), tensors["labels"].long(), 10)


def read_idx(path: Path) -> torch.Tensor:
    """A uint8 tensor from an IDX file (the MNIST format), gzipped or not."""
    import gzip

    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    ndim = raw[3] if len(raw) > 4 else 0
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if raw[:3] != b"\0\0\x08" or not dims or len(raw) != 4 + 4 * ndim + math.prod(dims):
        raise UsageError(f"{path} is not a uint8 IDX file (corrupt or truncated?); download it again")
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).view(*dims)


def _find_idx(folder: Path, stem: str):
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def _mnist_like(cls_name: str, title: str, root, image_size, download, split):
    """MNIST-format data from ``root/<cls_name>/raw`` (plain or .gz IDX files; one split is enough)."""
    if split not in ("train", "test"):
        raise UsageError(f"{title} option split must be 'train' or 'test', got {split!r}")
    root = Path(root or "data").expanduser()
    raw, prefix = root / cls_name / "raw", "train" if split == "train" else "t10k"
    files = [_find_idx(raw, f"{prefix}-{kind}-idx{n}-ubyte") for kind, n in (("images", 3), ("labels", 1))]
    if None in files:
        _download(cls_name, title, root, download, split)
        files = [_find_idx(raw, f"{prefix}-{kind}-idx{n}-ubyte") for kind, n in (("images", 3), ("labels", 1))]
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.dim() != 3 or labels.shape != images.shape[:1]:
        raise UsageError(f"{title} files under {raw} do not match (images {tuple(images.shape)}, "
                         f"labels {tuple(labels.shape)}); download them again")
    return Data(resize(images[:, None].contiguous(), image_size or 32), labels.long(), 10)


def _download(cls_name: str, title: str, root: Path, download: bool, split: str):
    """Fetch a torchvision dataset into ``root``; UsageError saying what to do when that is impossible."""
    import torchvision

    if not download:
        raise UsageError(f"{title} ({split}) not found under {root}; put the files there "
                         "or allow downloading (drop --no-download)")
    top = root.absolute()  # root, or the first of its folders still to make
    while not top.parent.exists():
        top = top.parent
    before = {top, *top.rglob("*")} if top.exists() else set()
    try:
        return getattr(torchvision.datasets, cls_name)(root=str(root), train=split == "train", download=True)
    except Exception as exc:
        for path in sorted({top, *top.rglob("*")} - before if top.exists() else (), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()  # what the failed download left: nothing stays
        raise UsageError(f"{title} ({split}) is not under {root} and downloading it failed "
                         f"({type(exc).__name__}); are you offline? Copy the files into {root} "
                         "or pass --data-root") from None


def mnist(root=None, image_size=None, download=True, split="train"):
    """MNIST, 1 channel, 10 classes; ``split`` "train" (60k) or "test" (10k), from ``root/MNIST/raw``."""
    return _mnist_like("MNIST", "MNIST", root, image_size, download, split)


def stacked_mnist(root=None, image_size=None, download=True, split="train", n=60_000, seed=0):
    """Stacked-MNIST (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018): ``n`` images whose R, G
    and B channels are three MNIST digits of ``split`` drawn at random (seeded by ``seed``); 1,000 modes,
    labelled 100 x R's digit + 10 x G's + B's. Unconditional by default, as in the literature."""
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise UsageError(f"stacked-mnist option n (number of stacks) must be a positive integer, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UsageError(f"stacked-mnist option seed must be an integer, got {seed!r}")
    digits = mnist(root, image_size, download, split)
    index = torch.randint(len(digits), (n, 3), generator=torch.Generator().manual_seed(seed))
    labels = (digits.labels[index] * torch.tensor([100, 10, 1])).sum(1)
    return Data(digits.x[index, 0], labels, 1000, stacked_from=digits)


def fashion_mnist(root=None, image_size=None, download=True, split="train"):
    """Fashion-MNIST, 1 channel, 10 classes, from ``root/FashionMNIST/raw``."""
    return _mnist_like("FashionMNIST", "Fashion-MNIST", root, image_size, download, split)


def cifar10(root=None, image_size=None, download=True, split="train"):
    """CIFAR-10 (torchvision's loader), 3 channels, 10 classes."""
    import torchvision

    if split not in ("train", "test"):
        raise UsageError(f"CIFAR-10 option split must be 'train' or 'test', got {split!r}")
    root = Path(root or "data").expanduser()
    try:
        ds = torchvision.datasets.CIFAR10(root=str(root), train=split == "train", download=False)
    except RuntimeError:
        ds = _download("CIFAR10", "CIFAR-10", root, download, split)
    images = torch.as_tensor(ds.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
    return Data(resize(images, image_size or 32), torch.as_tensor(ds.targets), 10)


def load_image(path: Path, size: int, channels: int) -> torch.Tensor:
    """One image file, resized (shorter side) and center-cropped: uint8 [channels, size, size]."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        scale = size / min(im.size)
        im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, channels).permute(2, 0, 1)


class ImageFiles(torch.utils.data.Dataset):
    """Image files read when asked for (the streaming form of ``folder``)."""

    def __init__(self, files: list, labels: list, size: int, channels: int):
        self.files, self.labels, self.size, self.channels = files, labels, size, channels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return load_image(self.files[i], self.size, self.channels), self.labels[i]


def folder(root=None, image_size=None, download=False, channels=3, max_memory_mb=4096, stream=None):
    """Every image under ``root`` (recursively), resized and center-cropped to ``image_size`` (64).

    When images sit in sub-folders, the first-level folder names are the class labels (as
    torchvision's ImageFolder). Unreadable files are skipped and counted. Up to ``max_memory_mb``
    of pixels are loaded into memory; larger folders (or ``stream=true``) are read by a DataLoader.
    """
    from PIL import Image

    if channels not in (1, 3):
        raise UsageError(f"folder option channels must be 1 or 3, got {channels!r}")
    if root is None:
        raise UsageError("the folder dataset needs --data-root DIR (a directory of images)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UsageError(f"data root {root} is not a directory; pass --data-root DIR")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UsageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    size = image_size or 64
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    if stream is None:
        stream = len(files) * channels * size * size > max_memory_mb * 2**20
    images, kept, skipped = [], [], 0
    for path in files:
        try:
            if stream:  # only the header now; pixels are read during training
                with Image.open(path) as im:
                    im.size
            else:
                images.append(load_image(path, size, channels))
        except Exception:
            skipped += 1
            continue
        kept.append(path)
    if not kept:
        raise UsageError(f"none of the {len(files)} image files under {root} could be read")
    if skipped:
        print(f"folder: skipped {skipped} unreadable image file(s) under {root}")
    labels = [classes.index(p.relative_to(root).parts[0]) if classes and len(p.relative_to(root).parts) > 1
              else -1 for p in kept]
    num_classes = len(classes) if classes and min(labels) >= 0 else None
    if stream:
        return StreamingData(ImageFiles(kept, labels, size, channels), (channels, size, size), num_classes)
    return Data(torch.stack(images), torch.tensor(labels) if num_classes else None, num_classes)


def mixture(centers: torch.Tensor, std: float, n: int, seed: int) -> Data:
    """``n`` samples from an equal-weight Gaussian mixture; the label is the mode index."""
    if n <= 0:
        raise UsageError(f"number of samples n must be positive, got {n}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(centers), (n,), generator=g)
    x = centers[labels] + std * torch.randn(n, centers.shape[1], generator=g)
    return Data(x, labels, len(centers), modes=centers, mode_std=std)


def ring_modes(radius: float = 2.0, modes: int = 8) -> torch.Tensor:
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return (radius * torch.stack([angles.cos(), angles.sin()], 1)).float()


def grid_modes() -> torch.Tensor:
    axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
    return torch.cartesian_prod(axis, axis)


def ring(root=None, image_size=None, download=False, n=100_000, std=0.02, radius=2.0, modes=8, seed=0):
    """8 Gaussians (std 0.02) evenly spaced on a circle of radius 2 (VEEGAN, PacGAN)."""
    return mixture(ring_modes(radius, modes), std, n, seed)


def grid(root=None, image_size=None, download=False, n=100_000, std=0.05, seed=0):
    """25 Gaussians (std 0.05) at {-4, -2, 0, 2, 4}^2 (VEEGAN, PacGAN)."""
    return mixture(grid_modes(), std, n, seed)


def gaussian1d(root=None, image_size=None, download=False, n=100_000, mean=4.0, std=1.25, seed=0):
    """A 1-D normal N(mean, std^2), the classic toy target."""
    if n <= 0 or std <= 0:
        raise UsageError(f"gaussian1d needs n > 0 and std > 0, got n={n}, std={std}")
    g = torch.Generator().manual_seed(seed)
    return Data(mean + std * torch.randn(n, 1, generator=g))

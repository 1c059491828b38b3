"""A procedurally generated, labelled shapes dataset for ganforge."""
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from ganforge import hookimpl
from ganforge.errors import UsageError
from ganforge.interfaces import Data

SHAPES = ("circle", "square", "triangle")
SUPERSAMPLE = 4  # draw 4x larger, then downsample: anti-aliased edges


@hookimpl
def register_datasets(register):
    register("shapes", shapes)


def draw(kind: str, size: int, rng: np.random.Generator, channels: int) -> np.ndarray:
    """One image [channels, size, size] uint8 with a single filled shape."""
    big = size * SUPERSAMPLE
    background = tuple(int(v) for v in rng.integers(0, 40, 3))
    color = tuple(int(v) for v in rng.integers(90, 256, 3))
    img = Image.new("RGB", (big, big), background)
    pen = ImageDraw.Draw(img)
    radius = rng.uniform(0.18, 0.38) * big
    cx, cy = rng.uniform(radius, big - radius, 2)
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "circle":
        pen.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=color)
    else:
        corners = 4 if kind == "square" else 3
        points = [(cx + radius * math.cos(angle + 2 * math.pi * k / corners),
                   cy + radius * math.sin(angle + 2 * math.pi * k / corners)) for k in range(corners)]
        pen.polygon(points, fill=color)
    img = img.resize((size, size), Image.LANCZOS)
    if channels == 1:
        img = img.convert("L")
    return np.asarray(img).reshape(size, size, channels).transpose(2, 0, 1)


def shapes(root=None, image_size=None, download=False, n=10_000, seed=0, channels=3, shapes=SHAPES):
    """``n`` images of one filled shape each, labelled by shape (in the order of ``shapes``)."""
    shapes = list(shapes)
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes or len(set(shapes)) != len(shapes):
        raise UsageError(f"shapes option shapes must be distinct names from {', '.join(SHAPES)}, got {shapes!r}")
    if not isinstance(n, int) or n <= 0:
        raise UsageError(f"shapes option n must be a positive integer, got {n!r}")
    if channels not in (1, 3):
        raise UsageError(f"shapes option channels must be 1 or 3, got {channels!r}")
    size = image_size or 32
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(shapes), n)
    images = np.stack([draw(shapes[k], size, rng, channels) for k in labels])
    return Data(torch.from_numpy(images), torch.from_numpy(labels), len(shapes))

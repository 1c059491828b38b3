"""Pictures from NumPy arrays with Pillow only (no torch, no matplotlib): sample grids,
scatter plots of 2-D data, histograms of 1-D data and loss curves."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]
GREY = (170, 170, 170)


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> Image.Image:
    """[N, C, H, W] images in [-1, 1] (C = 1 or 3) tiled into one picture."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    pixels = ((np.clip(images, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
    grid = np.zeros((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        y, x = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        grid[y:y + h, x:x + w] = pixels[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid, "L" if c == 1 else "RGB")
    scale = max(1, 256 // max(grid.shape[:2]))  # small images become visible
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


class _Axes:
    """A plot area mapping data coordinates to pixels, with a frame and tick labels."""

    def __init__(self, xlim, ylim, size=(480, 480), margin=40, title: str = "", xticks: bool = True):
        self.img = Image.new("RGB", size, "white")
        self.draw = ImageDraw.Draw(self.img)
        self.x0, self.x1 = xlim
        self.y0, self.y1 = ylim
        self.left, self.top = margin, margin // 2 + 10
        self.right, self.bottom = size[0] - margin // 2, size[1] - margin
        self.draw.rectangle([self.left, self.top, self.right, self.bottom], outline="black")
        if title:
            self.draw.text((self.left, 4), title, fill="black")
        for v in (self.x0, self.x1) if xticks else ():
            self.draw.text((self.px(v, self.y0)[0] - 10, self.bottom + 4), f"{v:.3g}", fill="black")
        for v in (self.y0, self.y1):
            self.draw.text((2, self.px(self.x0, v)[1] - 5), f"{v:.3g}", fill="black")

    def px(self, x, y):
        sx = (self.right - self.left) / ((self.x1 - self.x0) or 1)
        sy = (self.bottom - self.top) / ((self.y1 - self.y0) or 1)
        return self.left + (np.asarray(x) - self.x0) * sx, self.bottom - (np.asarray(y) - self.y0) * sy

    def points(self, xy, color, r=1.5):
        xs, ys = self.px(xy[:, 0], xy[:, 1])
        for x, y in zip(xs, ys):
            self.draw.ellipse([x - r, y - r, x + r, y + r], fill=color)

    def line(self, xs, ys, color, width=2):
        px, py = self.px(xs, ys)
        if len(px) > 1:
            self.draw.line(list(zip(px.tolist(), py.tolist())), fill=color, width=width)


def padded_limits(*arrays, pad=0.1):
    """(low, high) around the finite values of ``arrays``, widened by ``pad`` of the span."""
    values = np.concatenate([np.ravel(a) for a in arrays if a is not None] or [np.zeros(0)]).astype(float)
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (-1.0, 1.0)
    span = (hi - lo) or 1.0
    return lo - pad * span, hi + pad * span


def scatter(points: np.ndarray, reference: np.ndarray | None = None, modes: np.ndarray | None = None,
            title: str = "", limits: tuple | None = None) -> Image.Image:
    """2-D points (blue) over reference data (grey), with modes marked as red crosses."""
    lim = limits or padded_limits(points, reference, modes)
    ax = _Axes(lim, lim, title=title)
    if reference is not None:
        ax.points(reference, GREY, r=1)
    ax.points(points, COLORS[0])
    if modes is not None:
        xs, ys = ax.px(modes[:, 0], modes[:, 1])
        for x, y in zip(xs, ys):
            ax.draw.line([x - 5, y - 5, x + 5, y + 5], fill=COLORS[1], width=2)
            ax.draw.line([x - 5, y + 5, x + 5, y - 5], fill=COLORS[1], width=2)
    return ax.img


def histogram(values: np.ndarray, reference: np.ndarray | None = None, bins: int = 50,
              title: str = "") -> Image.Image:
    """Density histograms of 1-D values (blue) and reference data (grey outline)."""
    edges = np.linspace(*padded_limits(values, reference, pad=0.05), bins + 1)
    hist = np.histogram(values, edges, density=True)[0]
    ref = np.histogram(reference, edges, density=True)[0] if reference is not None else np.zeros(bins)
    ax = _Axes((edges[0], edges[-1]), (0, max(hist.max(), ref.max()) * 1.1 or 1), size=(560, 360), title=title)
    for i in range(bins):
        (x0, x1), (y0, y1) = ax.px(edges[i:i + 2], [0, hist[i]])
        ax.draw.rectangle([x0, y1, x1, y0], fill=COLORS[0])
    if reference is not None:
        ax.line(np.repeat(edges, 2)[1:-1], np.repeat(ref, 2), GREY)
    return ax.img


def line_plot(series: dict, title: str = "", xlabel: str = "step") -> Image.Image:
    """Curves ``{name: (xs, ys)}`` on one pair of axes, with a legend. Non-finite values (a NaN loss of
    a run that skips such updates) leave gaps in their curve."""
    xs = [np.asarray(x, float) for x, _ in series.values()]
    ys = [np.asarray(y, float) for _, y in series.values()]
    ax = _Axes(padded_limits(*xs, pad=0), padded_limits(*ys), size=(640, 400), margin=56, title=title)
    for i, (name, x, y) in enumerate(zip(series, xs, ys)):
        color = COLORS[i % len(COLORS)]
        finite = np.isfinite(x) & np.isfinite(y)
        breaks = np.flatnonzero(~finite)
        for piece in np.split(np.arange(len(x)), breaks):
            piece = piece[finite[piece]]
            ax.line(x[piece], y[piece], color)
        ax.draw.text((ax.right - 120, ax.top + 6 + 14 * i), f"-- {name}", fill=color)
    ax.draw.text(((ax.left + ax.right) // 2, ax.bottom + 18), xlabel, fill="black")
    return ax.img


def samples_picture(x: np.ndarray, reference: np.ndarray | None = None, modes: np.ndarray | None = None,
                    title: str = "", nrow: int | None = None) -> Image.Image:
    """Generated samples as a picture: a grid of images [N, C, H, W], a histogram of 1-D values, or a
    scatter plot of (the first two coordinates of) vectors, over ``reference`` data when given."""
    if x.ndim == 4:
        return image_grid(x, nrow=nrow)
    if x.shape[1] == 1:
        return histogram(x[:, 0], None if reference is None else reference[:, 0], title=title)
    return scatter(x[:, :2], None if reference is None else reference[:, :2], None if modes is None else modes[:, :2],
                   title=title)


def intervals(series: dict, title: str = "", size=(320, 260), count: int | None = None) -> Image.Image:
    """Per position ``i`` of ``series`` ({i: {"values", "mean", "low", "high"}}; ``count`` positions, 1 to
    ``count`` on the x axis): its values as points, its mean as a tick and its interval as a bar."""
    count = count or (max(series) + 1 if series else 1)
    ys = [np.asarray([v for v in (*s["values"], s["low"], s["high"]) if v is not None], float) for s in series.values()]
    ax = _Axes((0.5, count + 0.5), padded_limits(*ys), size=size, margin=48, title=title, xticks=False)
    for i, s in series.items():
        x, color = i + 1, COLORS[i % len(COLORS)]
        if s["low"] is not None:
            (x0, x1), (lo, hi) = ax.px([x - 0.12, x + 0.12], [s["low"], s["high"]])
            ax.draw.line([(x0 + x1) / 2, lo, (x0 + x1) / 2, hi], fill=color, width=2)
            ax.draw.line([x0, lo, x1, lo], fill=color, width=2)
            ax.draw.line([x0, hi, x1, hi], fill=color, width=2)
        (mx0, mx1), (my, _) = ax.px([x - 0.25, x + 0.25], [s["mean"], s["mean"]])
        ax.draw.line([mx0, my, mx1, my], fill="black", width=2)
        values = np.asarray(s["values"], float)
        offsets = (np.arange(len(values)) - (len(values) - 1) / 2) * 0.08  # seeds side by side
        ax.points(np.stack([x + 0.3 + offsets, values], 1), color, r=3)
        ax.draw.text((ax.px(x, 0)[0] - 3, ax.bottom + 16), str(x), fill="black")
    return ax.img

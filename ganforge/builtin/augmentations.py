"""Built-in augmentations of what the discriminator sees: ``diffaugment`` (Zhao et al. 2020) and
``ada``, the same operations at a strength p tuned during training by ADA's overfitting heuristic
(Karras et al. 2020).

Both apply the same random operations to real and generated batches, differentiably, so the
generator learns the data, not the augmented data. ``--augment diffaugment --augment-opt
policy=translation,cutout`` picks the operations; images only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ganforge.hookspecs import hookimpl
from ganforge.errors import UsageError
from ganforge.interfaces import Augmentation, DataSpec


@hookimpl
def register_augmentations(register):
    register("diffaugment", DiffAugment)
    register("ada", ADA)


def _per_sample(x, low=0.0, high=1.0):
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) * (high - low) + low


def color(x):
    """Brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5] (for images in [-1, 1])."""
    x = x + _per_sample(x, -0.5, 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _per_sample(x, 0.0, 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _per_sample(x, 0.5, 1.5) + mean


def _grid(x):
    b, h, w = (torch.arange(n, device=x.device) for n in (x.shape[0], x.shape[2], x.shape[3]))
    return torch.meshgrid(b, h, w, indexing="ij")


def translation(x, ratio: float = 0.125):
    """Shift each image by up to ``ratio`` of its size in each direction, filling with zeros."""
    B, _, H, W = x.shape
    sh, sw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (B, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (B, 1, 1), device=x.device)
    b, i, j = _grid(x)
    i, j = (i + dy + 1).clamp(0, H + 1), (j + dx + 1).clamp(0, W + 1)
    return F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)[b, i, j].permute(0, 3, 1, 2)


def cutout(x, ratio: float = 0.5):
    """Zero a square of ``ratio`` of the image's size at a random place (it may overhang the border)."""
    B, _, H, W = x.shape
    ch, cw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    oy = torch.randint(0, H + (1 - ch % 2), (B, 1, 1), device=x.device)
    ox = torch.randint(0, W + (1 - cw % 2), (B, 1, 1), device=x.device)
    b, i, j = _grid(torch.empty(B, 1, ch, cw, device=x.device))
    i, j = (i + oy - ch // 2).clamp(0, H - 1), (j + ox - cw // 2).clamp(0, W - 1)
    mask = torch.ones(B, H, W, device=x.device, dtype=x.dtype)
    mask[b, i, j] = 0
    return x * mask.unsqueeze(1)


OPS = {"color": color, "translation": translation, "cutout": cutout}


class DiffAugment(Augmentation):
    """Differentiable augmentation (Zhao et al. 2020): each operation of ``policy`` (comma-separated:
    color, translation, cutout) is applied to each sample with probability ``p`` (1: always, as in the
    paper), drawn anew for every batch, real and generated alike."""

    name = "diffaugment"

    def __init__(self, spec: DataSpec, policy: str = "color,translation,cutout", p: float = 1.0):
        if not spec.is_image:
            raise UsageError(f"augmentation {self.name} is for images, and the data has samples of shape "
                             f"{spec.shape}; drop --augment")
        ops = [op.strip() for op in str(policy).split(",") if op.strip()]
        unknown = [op for op in ops if op not in OPS]
        if unknown or not ops:
            raise UsageError(f"augmentation {self.name} has no operation {(unknown or [''])[0]!r}; its operations: "
                             f"{', '.join(OPS)} (e.g. --augment {self.name} --augment-opt policy=translation,cutout)")
        if not (isinstance(p, (int, float)) and 0 <= p <= 1):
            raise UsageError(f"augmentation {self.name} option p must be between 0 and 1, got {p!r}")
        self.ops, self.p = [OPS[op] for op in ops], float(p)

    def __call__(self, x):
        for op in self.ops:
            if isinstance(self.p, float) and self.p == 1.0:  # always (ADA's p is a tensor: never compared on the host)
                x = op(x)
            else:
                x = torch.where(torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.p, op(x), x)
        return x


class ADA(DiffAugment):
    """The DiffAugment operations applied with a probability p that adapts (Karras et al. 2020): p
    starts at 0; every ``interval`` discriminator updates, r = E[sign(D(real))] over them is compared
    with ``target`` and p moves up (D overfits) or down by one logit-count / (``kimg`` * 1000), so p can
    go from 0 to 1 over ``kimg`` thousand real samples. p is kept on the device (no host syncs) and in
    checkpoints; it is logged as ``ada_p``."""

    name = "ada"

    def __init__(self, spec: DataSpec, policy: str = "color,translation,cutout", target: float = 0.6,
                 interval: int = 4, kimg: float = 100.0):
        super().__init__(spec, policy, 0.0)
        if not (isinstance(target, (int, float)) and 0 < target < 1):
            raise UsageError(f"augmentation ada option target must be between 0 and 1, got {target!r}")
        if not (isinstance(interval, int) and interval > 0) or not (isinstance(kimg, (int, float)) and kimg > 0):
            raise UsageError(f"augmentation ada options interval and kimg must be positive, got {interval!r}, {kimg!r}")
        self.target, self.interval, self.kimg = float(target), interval, float(kimg)
        self.p = torch.zeros(())
        self.signs = torch.zeros(2)  # sum of sign(D(real)), number of logits: since the last adjustment
        self.seen = 0  # observations since the last adjustment

    def observe(self, real_logits):
        if self.p.device != real_logits.device:
            self.p, self.signs = self.p.to(real_logits.device), self.signs.to(real_logits.device)
        logits = real_logits.detach().float()
        self.signs += torch.stack([logits.sign().sum(), torch.tensor(float(logits.numel()), device=logits.device)])
        self.seen += 1
        if self.seen == self.interval:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(self.signs)  # one p for every rank
            r = self.signs[0] / self.signs[1]
            self.p = (self.p + torch.sign(r - self.target) * self.signs[1] / (self.kimg * 1000)).clamp(0, 1)
            self.signs.zero_()
            self.seen = 0

    def log(self) -> dict:
        return {"ada_p": self.p}

    def state_dict(self):
        return {"p": self.p, "signs": self.signs, "seen": self.seen}

    def load_state_dict(self, state):
        self.p, self.signs, self.seen = state["p"].clone(), state["signs"].clone(), int(state["seen"])

"""Everything a checkpoint holds (:class:`TrainState`: the one place its layout is written and read), the
update that moves it (backward, optimizer, GradScaler), the watch for a non-finite loss and the EMA
generator's averaging."""
from __future__ import annotations

import copy
import math

import torch

from ganforge import checkpoint, distributed, rundir
from ganforge.config import TrainConfig
from ganforge.errors import TrainingDiverged, UsageError


class TrainState:
    """G, D, the EMA generator, both optimizers and GradScalers, the augmentation's state (ADA's p), the
    step, the updates skipped and the position in the data (``batches.drawn``): what a run needs to
    continue exactly."""

    def __init__(self, cfg: TrainConfig, G, D, batches, device: torch.device, augment=None):
        self.G, self.D, self.batches, self.device, self.augment = G, D, batches, device, augment
        self.ema = copy.deepcopy(G).requires_grad_(False) if cfg.ema else None
        self.opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas), foreach=True)
        self.opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas), foreach=True)
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.step, self.skipped = 0, 0  # iterations done; updates skipped for non-finite losses

    @property
    def generator(self):
        """The generator samples come from: the EMA one when the run keeps it."""
        return self.ema if self.ema is not None else self.G

    def state_dict(self) -> dict:
        cuda = self.device.type == "cuda"
        return {
            "step": self.step, "batches_drawn": self.batches.drawn, "skipped": self.skipped,
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "augment": self.augment.state_dict() if self.augment is not None else {},
            "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else []},
        }

    def load_state_dict(self, state: dict, source, restore_rng: bool = True) -> None:
        """Continue from a checkpoint's ``state`` (``source`` names it in errors). The RNG state is
        restored only when the run keeps its number of processes (``restore_rng``)."""
        try:
            self.G.load_state_dict(state["G"])
            self.D.load_state_dict(state["D"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
        except RuntimeError as exc:
            raise UsageError(f"checkpoint {source} does not fit the run's models: "
                             f"{str(exc).splitlines()[0]}") from None
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        for scaler, saved in ((self.scaler_g, state["scaler_g"]), (self.scaler_d, state["scaler_d"])):
            if scaler.is_enabled() and saved:  # empty when the run was not fp16 until now
                scaler.load_state_dict(saved)
        if self.augment is not None and state.get("augment"):
            self.augment.load_state_dict(state["augment"])
        self.step, self.batches.drawn, self.skipped = state["step"], state["batches_drawn"], state.get("skipped", 0)
        if restore_rng:
            torch.set_rng_state(state["rng"]["cpu"])
            if self.device.type == "cuda" and state["rng"]["cuda"]:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save(self, path, records: dict, **extra) -> None:
        """Write the checkpoint ``path``: the state, ``records`` (the config, the run's providers) and ``extra``
        metadata; TrainingDiverged instead when G or D has non-finite weights."""
        if not all(torch.isfinite(p).all() for p in [*self.G.parameters(), *self.D.parameters()]):
            raise TrainingDiverged(f"non-finite weights at step {self.step}; the last good checkpoint is kept "
                                   f"in {path.parent}; lower the learning rates")
        checkpoint.save(path, {**extra, **self.state_dict(), **records})

    def update(self, value, optimizer, scaler, skip_nonfinite: bool) -> bool:
        """Backward and one optimizer step; with ``skip_nonfinite``, a non-finite loss (on any rank:
        a host sync) is skipped and counted instead. Whether the step was taken."""
        optimizer.zero_grad(set_to_none=True)
        if skip_nonfinite and distributed.any_rank(not bool(torch.isfinite(value)), value.device):
            self.skipped += 1
            return False
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
        return True


class NonFiniteWatch:
    """The first step with a non-finite loss, remembered on the device (no host sync) until :meth:`check`."""

    def __init__(self, device):
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.losses = torch.zeros(2, device=device)

    def note(self, step: int, d_loss, g_loss) -> None:
        losses = torch.stack([d_loss.detach().float(), g_loss.detach().float()])
        newly = (self.step < 0) & ~torch.isfinite(losses).all()
        self.step = torch.where(newly, step, self.step)
        self.losses = torch.where(newly, losses, self.losses)

    def check(self, run_dir) -> None:
        """TrainingDiverged when a loss was non-finite (a host sync)."""
        if self.step.item() >= 0:
            d_bad, g_bad = self.losses.tolist()
            raise TrainingDiverged(f"non-finite loss at step {self.step.item()} (d_loss={d_bad}, g_loss={g_bad}); "
                                   f"stopped, the last good checkpoint is kept in {run_dir / rundir.CHECKPOINTS}. "
                                   "Lower the learning rates, or pass --on-nonfinite skip")


def ema_decay_at(decay: float, step: int, rampup: float | None = None) -> float:
    """The EMA's decay after update ``step`` (0-based): an average over about the last ``rampup`` of the
    steps so far (StyleGAN2-ADA's ramp-up; default 1/9, TF's num_updates warm-up), until that would
    exceed ``decay``."""
    window = (1 + step) / (10 + step) if rampup is None else 1 - 1 / (1 + (1 + step) * rampup)
    return min(decay, window)


def ema_warmup_steps(decay: float, rampup: float | None = None) -> int:
    """The step from which :func:`ema_decay_at` is ``decay``: before it, the EMA averages over a window
    growing with the steps, so early samples show what G has learnt."""
    return math.ceil(decay / ((1 - decay) * (rampup or 1 / 9)) - 1 - 1e-6)


@torch.no_grad()
def update_ema(ema, G, decay: float) -> None:
    """Move ``ema``'s weights a fraction 1 - ``decay`` of the way towards ``G``'s; buffers copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(G.parameters()), 1 - decay)
    for b_ema, b in zip(ema.buffers(), G.buffers()):
        b_ema.copy_(b)

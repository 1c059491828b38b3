"""The callbacks of a run: what they see of it (:class:`Run`), calling them in order (:class:`Callbacks`),
and what a failing one does (the run stops, checkpointed, with one line naming it: :func:`failure_line`)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ganforge import contracts, rundir
from ganforge.config import TrainConfig
from ganforge.interfaces import Callback, Data
from ganforge.state import TrainState

SAMPLES = 64  # size of the fixed-noise batch drawn for sample grids
DEFAULT_CALLBACKS = ("metrics", "samples")  # the run directory's own files: always on
PROGRESS = "progress"  # the callback that shows progress (a bar in a terminal, else log lines)


class Run:
    """What callbacks see of a run in progress: ``cfg``, ``run_dir``, ``state`` (its ``step``,
    ``G``, ``D``, ``generator``), ``total`` steps, ``data``, and the fixed-noise samples."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, state: TrainState, data, total: int, device):
        self.cfg, self.run_dir, self.state, self.data, self.total = cfg, run_dir, state, data, total
        g = torch.Generator().manual_seed(cfg.seed + 1)
        self.z = torch.randn(SAMPLES, state.G.latent_dim, generator=g).to(device)
        classes = getattr(state.G, "num_classes", None)
        self.labels = (torch.arange(SAMPLES) % classes).to(device) if classes else None
        self.reference = None  # real points drawn under generated ones
        if isinstance(data, Data) and not data.is_image:
            idx = torch.randperm(len(data), generator=g)[:2000].to(data.x.device)
            self.reference = data.batch(idx)[0].cpu().numpy()
        self._samples = self._picture = (None, None)  # (step, value): computed once per step
        self.stop_reason = None  # set by :meth:`stop`
        self.record = None  # run.json as this process started it (rank 0)

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def title(self) -> str:
        return f"{self.cfg.arch}/{self.cfg.loss} step {self.step}"

    @torch.no_grad()
    def samples(self) -> torch.Tensor:
        """The generator's (EMA's) samples of the fixed noise at this step, float32 on the CPU."""
        if self._samples[0] != self.step:
            G = self.state.generator
            was_training = G.training
            G.eval()
            x = G(self.z, self.labels).float().cpu()
            G.train(was_training)
            self._samples = (self.step, x)
        return self._samples[1]

    def samples_picture(self):
        """:meth:`samples` drawn as a picture (grid, scatter over the data, or histogram)."""
        from ganforge import plotting

        if self._picture[0] != self.step:
            classes = getattr(self.state.G, "num_classes", None)
            picture = plotting.samples_picture(self.samples().numpy(), self.reference, title=self.title,
                                               nrow=classes if classes and classes <= 16 else None)
            self._picture = (self.step, picture)
        return self._picture[1]

    def stop(self, reason: str) -> None:
        """End the run after the next step, checkpointed, as finished early (run.json: status "stopped"
        and ``stop_reason``); for callbacks such as early stopping or a tuner's pruning."""
        self.stop_reason = reason

    def due(self, every: int) -> bool:
        """Whether this step is one of every ``every`` steps, or the last."""
        return self.step % every == 0 or self.step == self.total


class CallbackRaised(Exception):
    """A callback's exception, on its way from :meth:`Callbacks.notify` to the loop that checkpoints."""

    def __init__(self, callback, event: str):
        super().__init__(event)
        self.callback, self.event = callback, event


class Callbacks:
    """The run's callbacks, in order: the run directory's own (metrics, samples), the ``--logger`` ones,
    those passed in, and the progress display. Each is checked against the Callback contract first.
    One that raises stops the run (:class:`CallbackRaised`), except in ``on_end``, where the others
    still run and the failure is a warning."""

    def __init__(self, registry, loggers, given, progress: bool):
        self.items = []  # (callback, description, --logger name or None)
        for name in (*DEFAULT_CALLBACKS, *loggers):
            callback = contracts.create(registry, "callbacks", name)
            who = contracts.describe(registry.get("callbacks", name))
            self.items.append((callback, who, name if name in loggers else None))
        for i, callback in enumerate(given):
            who = f"callback {i + 1} of the callbacks given ({type(callback).__name__})"
            contracts.check_part(callback, Callback, who)
            self.items.append((callback, who, None))
        if progress:  # last, so that it shows what the others did
            self.items.append((registry.create("callbacks", PROGRESS), "the progress display", None))

    def notify(self, event: str, run, *args) -> None:
        for callback, _, _ in self.items:
            try:
                getattr(callback, event)(run, *args)
            except Exception as exc:
                raise CallbackRaised(callback, event) from exc

    def notify_end(self, run) -> None:
        for callback, who, _ in self.items:
            try:
                callback.on_end(run)
            except Exception as exc:
                print(f"Warning: {who} failed in on_end: {type(exc).__name__}: {exc}".splitlines()[0],
                      file=sys.stderr)

    def drop(self, callback) -> tuple:
        """Stop calling ``callback``; its (description, --logger name or None)."""
        who, logger = next((w, n) for c, w, n in self.items if c is callback)
        self.items = [item for item in self.items if item[0] is not callback]
        return who, logger


def failure_line(failure: CallbackRaised, who: str, logger: str | None, run) -> str:
    """The one line for a failed callback (its traceback goes to the run's error.txt): who failed, where
    and how, that the run is checkpointed, and how to continue without it."""
    import traceback

    exc = failure.__cause__
    (run.run_dir / rundir.ERROR).write_text("".join(traceback.format_exception(exc)))
    line = (f"{who} failed in {failure.event} at step {run.step}: " + f"{type(exc).__name__}: {exc}".splitlines()[0]
            + f"; checkpoint step-{run.step} is written, the traceback is in {run.run_dir / rundir.ERROR}. ")
    if logger is None:
        return line + f"Continue without that callback: ganforge train --resume {run.run_dir}"
    flags = " ".join(f"--logger {n}" for n in run.cfg.loggers if n != logger) or "--logger none"
    return line + f"Continue without it: ganforge train --resume {run.run_dir} {flags}"

"""Built-in training callbacks: the run directory's metrics log and sample pictures (always on),
a TensorBoard logger (``--logger tensorboard``), and the progress display (``--progress``): a live bar
in a terminal, plain log lines otherwise."""
from __future__ import annotations

import math
import re
import sys
import time

from ganforge import rundir
from ganforge.errors import UsageError
from ganforge.hookspecs import hookimpl
from ganforge.interfaces import Callback
from ganforge.rundir import MetricsLog, atomic_write, duration


@hookimpl
def register_callbacks(register):
    register("metrics", Metrics)
    register("samples", Samples)
    register("tensorboard", TensorBoard)
    register("progress", progress)


def progress() -> Callback:
    """The progress display (``ganforge train --progress``, the default): a live bar in a terminal, one
    line per ``--log-every`` steps otherwise."""
    return ProgressBar() if sys.stdout.isatty() else LogLines()


class Metrics(Callback):
    """``metrics.jsonl`` (the logged losses and evaluation metrics), then ``loss.png`` and ``eval.png``."""

    def on_start(self, run):
        self.log = MetricsLog(run.run_dir / rundir.METRICS)
        self.log.truncate(run.step)  # drop what was logged after the checkpoint a run resumes from

    def on_step(self, run, record):
        if record is not None:
            self.log.append(record)

    def on_evaluate(self, run, metrics):
        self.log.append({"step": run.step, **metrics})

    def on_end(self, run):
        self.log.plot(f"{run.cfg.arch} / {run.cfg.loss} on {run.cfg.dataset}", run.cfg.keep_best)


class Samples(Callback):
    """``samples/step-N.png`` at step 0 and every ``--sample-every`` steps: the fixed-noise grid, scatter or
    histogram. At the end, ``progress.gif``: about ``FRAMES`` pictures spread over the run whatever its
    length, with those of a resumed run's earlier part (its step-N.png files)."""

    FRAMES = 24

    def on_start(self, run):
        (run.run_dir / rundir.SAMPLES).mkdir(exist_ok=True)
        for step, path in self.pictures(run):
            if step > run.step:  # drawn after the checkpoint a run resumes from: drawn again
                path.unlink()
        self.frames, self.frame_every = {}, max(1, math.ceil(run.total / self.FRAMES))
        if run.step == 0:
            self.draw(run)

    def draw(self, run):
        picture = run.samples_picture()
        picture.save(run.run_dir / rundir.SAMPLES / f"step-{run.step}.png")
        self.frames[run.step] = picture

    def on_step(self, run, record):
        if run.due(run.cfg.sample_every):
            self.draw(run)
        elif run.due(self.frame_every):
            self.frames[run.step] = run.samples_picture()

    def on_end(self, run):
        from PIL import Image

        pictures = {step: Image.open(path) for step, path in self.pictures(run) if step not in self.frames}
        pictures.update(self.frames)
        if not pictures:
            return
        frames = [pictures[step].convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
                  for step in sorted(pictures)]
        durations = [250] * (len(frames) - 1) + [2000]  # hold the last picture
        atomic_write(run.run_dir / rundir.PROGRESS, lambda tmp: frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0))

    @staticmethod
    def pictures(run) -> list:
        """``(step, path)`` of the run's sample pictures, by step."""
        found = ((re.fullmatch(r"step-(\d+)\.png", path.name), path) for path in (run.run_dir / rundir.SAMPLES).glob("*"))
        return sorted((int(m.group(1)), path) for m, path in found if m)


class TensorBoard(Callback):
    """TensorBoard event files in ``<run>/tensorboard``: losses, images/s, both learning rates and evaluation
    metrics as scalars, the fixed-noise sample picture every ``--sample-every`` steps, the resolved config
    as text, and at the end the run's settings as hparams with its last metrics."""

    def __init__(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("--logger tensorboard needs the tensorboard package: pip install 'ganforge[tensorboard]'"
                             ) from None
        self.writer_class = SummaryWriter

    def on_start(self, run):
        from ganforge.config import to_toml

        self.writer = self.writer_class(str(run.run_dir / rundir.TENSORBOARD), purge_step=run.step + 1)
        self.last = {}  # the newest value of each loss and metric, for the hparams at the end
        config = "".join(f"    {line}\n" for line in to_toml(run.cfg.to_dict()).splitlines())  # a code block
        self.writer.add_text("config", config, run.step)

    def on_step(self, run, record):
        for key, value in (record or {}).items():
            if key != "step":
                self.writer.add_scalar(f"train/{key}", value, run.step)
                self.last[f"train/{key}"] = value
        if record is not None:
            for name, optimizer in (("lr_g", run.state.opt_g), ("lr_d", run.state.opt_d)):
                self.writer.add_scalar(f"train/{name}", optimizer.param_groups[0]["lr"], run.step)
        if run.due(run.cfg.sample_every):
            import numpy as np

            self.writer.add_image("samples", np.asarray(run.samples_picture().convert("RGB")), run.step,
                                  dataformats="HWC")

    def on_evaluate(self, run, metrics):
        for key, value in metrics.items():
            self.writer.add_scalar(f"eval/{key}", value, run.step)
            self.last[f"eval/{key}"] = value

    def on_end(self, run):
        if not hasattr(self, "writer"):
            return
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                   for k, v in run.cfg.to_dict().items() if v is not None}
        self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in self.last.items()}, run_name=".",
                                global_step=run.step)
        self.writer.close()


class ProgressBar(Callback):
    """A rich progress bar showing step, losses, images/s and ETA (``ganforge train --progress``)."""

    def on_start(self, run):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[stats]}"),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        self.task = self.bar.add_task("train", total=run.total, completed=run.step, stats="")
        self.bar.start()

    def on_step(self, run, record):
        fields = {}
        if record is not None:
            fields["stats"] = f"D {record['d_loss']:.4f}  G {record['g_loss']:.4f}  {record['images_per_s']:.0f} img/s"
        self.bar.update(self.task, completed=run.step, **fields)

    def on_end(self, run):
        if hasattr(self, "bar"):
            self.bar.stop()


class LogLines(Callback):
    """One plain line per ``--log-every`` step (step, losses, images/s, ETA): the progress display when
    stdout is not a terminal (nohup, SLURM, CI, ``> log.txt``), where a live bar would print nothing."""

    def on_start(self, run):
        self.first, self.t0 = run.step, time.monotonic()

    def on_step(self, run, record):
        if record is None:
            return
        done = run.step - self.first
        eta = (time.monotonic() - self.t0) / done * (run.total - run.step) if done else 0.0
        extra = "".join(f"  {k} {v:.4g}" for k, v in record.items()
                        if k not in ("step", "d_loss", "g_loss", "images_per_s"))
        print(f"step {run.step}/{run.total}  d_loss {record['d_loss']:.4f}  g_loss {record['g_loss']:.4f}  "
              f"{record['images_per_s']:.0f} img/s  eta {duration(eta)}{extra}", flush=True)

"""What a run writes: its directory and the names of everything in it, its metrics log, pictures of its
samples; and the one atomic file write every writer in ganforge goes through. No torch at import time."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import tomllib
from pathlib import Path

from ganforge.errors import UsageError

# A run directory's layout: every module names its files through these.
CONFIG = "config.toml"        # the resolved settings (ganforge train --config takes it)
RECORD = "run.json"           # providers, recipes, history, status
METRICS = "metrics.jsonl"     # losses every --log-every steps, metrics every --eval-every
LOSS_PLOT, EVAL_PLOT = "loss.png", "eval.png"
SAMPLES = "samples"           # samples/step-N.png
PROGRESS = "progress.gif"     # the sample grids so far, as an animation
CHECKPOINTS = "checkpoints"   # checkpoints/step-N.safetensors, checkpoints/best.safetensors
BEST = "best"
CHECKPOINT = re.compile(r"^step-(\d+)\.safetensors$")  # checkpoints/step-N.safetensors
ERROR = "error.txt"           # the traceback of a failed callback
EXPORT = "export"             # ganforge export's default output
TENSORBOARD = "tensorboard"


def is_run(path) -> bool:
    """Whether ``path`` is a run directory (it has a config.toml)."""
    return (Path(path) / CONFIG).is_file()


def atomic_write(path, write, durable: bool = False) -> Path:
    """Write ``path`` through ``write(tmp_path)`` into a temporary file beside it, then rename it over
    ``path``: a reader (or a crash) sees the old file or the new one, never a partial one. When
    ``write`` raises, ``path`` is untouched. ``durable`` also fsyncs the file and the directory."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(f"output directory {path.parent} does not exist")
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps the suffix, which readers may go by; own to
    # this process: two writing one file at once never share it
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def cache_dir() -> Path:
    """Where ganforge keeps what it fetched or trained once: ``$GANFORGE_CACHE``, else ``~/.cache/ganforge``."""
    if os.environ.get("GANFORGE_CACHE"):
        return Path(os.environ["GANFORGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ganforge"


def new_run_dir(out_dir, name: str | None, stem: str, overwrite: bool = False) -> Path:
    """``<out_dir>/<name>``, or ``<out_dir>/<stem>-NNN`` with the next free number. An existing
    directory is never reused, unless ``overwrite`` (then its contents are replaced)."""
    base = Path(out_dir)
    base.mkdir(parents=True, exist_ok=True)
    if name:
        run_dir = base / name
        if run_dir.exists():
            if not overwrite:
                raise UsageError(f"run directory {run_dir} already exists; pick another --name, continue it "
                                 "with --resume, or replace it with --overwrite")
            shutil.rmtree(run_dir)
        run_dir.mkdir()
        return run_dir
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)
    taken = [int(m.group(1)) for p in base.iterdir() if (m := re.fullmatch(re.escape(stem) + r"-(\d+)", p.name))]
    number = max(taken, default=0) + 1
    while True:
        run_dir = base / f"{stem}-{number:03d}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            number += 1


def read_record(run_dir) -> dict:
    """A run's ``run.json`` (its providers, history and status), or {} when it has none."""
    path = Path(run_dir) / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def write_record(run_dir, record: dict) -> None:
    """Write ``run.json`` atomically."""
    atomic_write(Path(run_dir) / RECORD, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def changes(before: dict, after: dict) -> dict:
    """``{setting: [before, after]}`` for the settings that differ between two configs."""
    return {key: [before.get(key), value] for key, value in after.items() if before.get(key) != value}


def summary(run_dir) -> dict:
    """One run at a glance, from its files alone (no torch): name, dataset, arch, loss, steps done (its
    newest checkpoint) of the total, the last logged metrics and the status: finished, running, stopped
    (by a signal), diverged, failed, or ended (its process is gone without saying why: killed)."""
    run_dir = Path(run_dir)
    cfg = tomllib.loads((run_dir / CONFIG).read_text())
    record = read_record(run_dir)
    found = checkpoints(run_dir)
    done = int(CHECKPOINT.match(found[-1].name).group(1)) if found else 0
    total = record["history"][-1]["total"] if record.get("history") else cfg.get("steps")
    status = record.get("status") or ("finished" if total and done >= total else "ended")
    if status == "running" and record.get("host") == socket.gethostname() and not alive(record.get("pid")):
        status = "ended"
    records = MetricsLog(run_dir / METRICS).read()
    last = {}
    for r in records:  # the newest value of each metric, losses and evaluations alike
        last.update({k: v for k, v in r.items() if k not in ("step", "images_per_s", "skipped")})
    return {"name": run_dir.name, "path": str(run_dir), "dataset": cfg.get("dataset"), "arch": cfg.get("arch"),
            "loss": cfg.get("loss"), "step": done, "total": total, "status": status, "metrics": last}


def alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    return True  # it does (PermissionError: it does, as another user's)


def find_runs(directory) -> list:
    """The run directories (those with a config.toml) in ``directory``, by name; ``directory`` itself
    when it is one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory; ganforge train writes runs under ./runs (--out-dir)")
    if is_run(directory):
        return [directory]
    return sorted(p for p in directory.iterdir() if is_run(p))


def path_of(run_dir, step: int | str) -> Path:
    """Where a run's checkpoint of ``step`` (or the one named so, e.g. ``best``) is or would be written."""
    return Path(run_dir) / CHECKPOINTS / f"{f'step-{step}' if isinstance(step, int) else step}.safetensors"


def checkpoints(run_dir) -> list:
    """The run's checkpoint files, oldest step first."""
    folder = Path(run_dir) / CHECKPOINTS
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.safetensors") if (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def find(run_dir, name: str | None = None) -> Path:
    """A run's checkpoint by name (``step-2000``, a file name or path), or its latest."""
    run_dir = Path(run_dir)
    if name is not None:
        candidates = [Path(name), run_dir / CHECKPOINTS / name, path_of(run_dir, name)]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        have = ", ".join(p.stem for p in checkpoints(run_dir)) or "none"
        raise UsageError(f"no checkpoint '{name}' in {run_dir}; available: {have}")
    found = checkpoints(run_dir)
    if not found:
        raise UsageError(f"{run_dir} has no checkpoints (no checkpoints/step-N.safetensors); "
                         "train it first or pick another run")
    return found[-1]


class MetricsLog:
    """``metrics.jsonl``: one JSON record per line, each with its ``step``. Loss records carry
    ``d_loss``; evaluation records carry metrics."""

    def __init__(self, path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def truncate(self, step: int) -> None:
        """Drop the records after ``step`` (logged after the checkpoint a run resumes from)."""
        if self.path.exists():
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.read() if r["step"] <= step))

    def plot(self, title: str, metric: str | None = None) -> None:
        """loss.png from the losses; eval.png from the evaluation ``metric`` (default: the first logged)."""
        from ganforge import plotting

        records = self.read()
        losses = [r for r in records if "d_loss" in r]
        evals = [r for r in records if "d_loss" not in r]
        if losses:
            steps = [r["step"] for r in losses]
            plotting.line_plot({"D loss": (steps, [r["d_loss"] for r in losses]),
                                "G loss": (steps, [r["g_loss"] for r in losses])},
                               title=title).save(self.path.parent / LOSS_PLOT)
        key = metric or next((k for k in (evals[-1] if evals else {}) if k != "step"), None)
        points = [(r["step"], r[key]) for r in evals if math.isfinite(r.get(key, math.nan))]
        if points:
            plotting.line_plot({key: tuple(zip(*points))}, title=title).save(self.path.parent / EVAL_PLOT)


def duration(seconds: float) -> str:
    """``45s``, ``3m12s``, ``2h05m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"

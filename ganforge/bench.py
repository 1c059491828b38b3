"""``ganforge bench``: losses compared at an equal budget, over seeds, with one protocol per dataset.

A bench is a grid of cells (loss, dataset, seed). Each cell is an ordinary run directory, trained with
the recipes that apply to it (or, with ``same_settings``, with one config per dataset shared by every
loss) and scored by its dataset's protocol (:func:`protocol`). The cells are a work queue in Optuna's
storage, the one ``ganforge tune`` uses: a study with the grid sampler, so any number of workers, on one
machine or many, share one bench. A cell whose worker dies is failed (at once on the same machine, by
its pid; after the heartbeat's grace period elsewhere) and queued again; a cell whose trial lost a race
for the same cell gives way, so no cell is trained twice. The report (:mod:`ganforge.bench_report`) is
built from the storage alone.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ganforge import config, layering, rundir
from ganforge.errors import Interrupted, TrainingDiverged, UsageError
from ganforge.interfaces import Callback

CELL = ("loss", "dataset", "seed")  # the grid's parameters
BENCH_KEYS = {"dataset": "--dataset", "loss": "--loss", "seed": "--seeds", "steps": "--steps",  # settings the
              "out_dir": "--out-dir", "name": "--study (cells are named after it)"}  # bench sets, and how
NO_PROTOCOL = ("has no bench protocol: a bench scores Gaussian mixtures (ring, grid: modes, high-quality "
               "samples, reverse KL), stacked data (Stacked-MNIST: modes, reverse KL) and images (FID and "
               "the rest under the offline judges)")


@dataclass(frozen=True)
class Definition:
    """What a bench compares: its losses and datasets as given, ``seeds`` seeds (0..seeds-1), the budget
    of each cell (``steps``, or ``budget_minutes`` of training; None: the recipes' steps), the settings
    fixed for every cell, and whether every loss on a dataset shares one config."""

    losses: tuple
    datasets: tuple
    seeds: int
    steps: int | None = None
    budget_minutes: float | None = None
    settings: dict = field(default_factory=dict)
    same_settings: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "Definition":
        return cls(**{**d, "losses": tuple(d["losses"]), "datasets": tuple(d["datasets"])})

    def to_dict(self) -> dict:
        return {**asdict(self), "losses": list(self.losses), "datasets": list(self.datasets)}

    @property
    def default_name(self) -> str:
        """The datasets and a hash of the whole definition: the same command joins the same bench."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return "-".join(self.datasets) + "-" + digest

    def command(self, name: str, storage: str) -> str:
        """The ``ganforge bench`` command of this bench, for the report."""
        words = ["ganforge", "bench", "--loss", ",".join(self.losses), "--dataset", ",".join(self.datasets),
                 "--seeds", str(self.seeds)]
        words += ["--steps", str(self.steps)] if self.steps else []
        words += ["--budget-minutes", f"{self.budget_minutes:g}"] if self.budget_minutes else []
        words += [w for k, v in self.settings.items() for w in ("--set", f"{k}={config.toml_value(v)}")]
        words += ["--same-settings"] if self.same_settings else []
        return config.shell_line(words + ["--study", name, "--storage", storage])


def protocol(data) -> list | None:
    """How a bench scores a cell of this dataset: a list of judges, each the ``extractor`` for
    :func:`ganforge.evaluation.evaluate` (None: the dataset's default metrics), or None when there is no
    protocol. Gaussian mixtures: modes, high-quality samples, reverse KL; stacked data: modes and reverse
    KL by the digit classifier; images: every feature metric under the offline judges (the classifier,
    where there are labels, and the label-free autoencoder)."""
    if getattr(data, "modes", None) is not None or getattr(data, "stacked_from", None) is not None:
        return [None]
    if len(data.shape) == 3:
        return ["classifier", "autoencoder"] if data.num_classes else ["autoencoder"]
    return None


def check(definition: Definition, registry) -> tuple:
    """The definition against the plugins: ``(losses, datasets, protocols, refused)``, the losses and
    datasets a bench can run, each dataset's :func:`protocol`, and one line per name it cannot run."""
    from ganforge.data import load_data

    losses, refused = [], []
    for loss in dict.fromkeys(definition.losses):
        try:
            registry.get("losses", loss)
            losses.append(loss)
        except UsageError as exc:
            refused.append(str(exc))
    datasets, protocols = [], {}
    for dataset in dict.fromkeys(definition.datasets):
        try:
            cfg = layering.build({**definition.settings, "dataset": dataset}, registry=registry,
                                 source="ganforge bench --set")
            data = load_data(cfg.dataset, cfg.data_root, cfg.image_size, cfg.download, cfg.data_options,
                             registry=registry)
            judges = protocol(data)
            if judges is None:
                raise UsageError(f"dataset '{dataset}' {NO_PROTOCOL}; drop it from --dataset")
            datasets.append(dataset)
            protocols[dataset] = judges
        except UsageError as exc:
            refused.append(str(exc))
    return losses, datasets, protocols, refused


def cell_name(loss: str, dataset: str, seed: int) -> str:
    """A cell's run directory name: ``ring-relativistic.rsgan-seed0``."""
    return f"{dataset}-{loss.replace(':', '.')}-seed{seed}"


def shared_settings(dataset: str, definition: Definition, registry) -> dict:
    """With ``same_settings``: every setting of a run of ``dataset`` with the recipes that name no loss and
    the bench's settings, less the settings that are part of a bench loss's method (WGAN's critic steps),
    which each loss keeps. Written as a config file, it sits over every loss's recipes."""
    from ganforge.recipes import applying

    name = registry.get("datasets", dataset).name
    recipes = applying(registry.recipes, name, None, definition.settings.get("arch"), config.TrainConfig.arch)
    cfg = layering.resolve(config.TrainConfig().to_dict(), *(r.settings for r in recipes), definition.settings)
    methods = {key for loss in definition.losses
               for key in getattr(registry.get("losses", loss).factory, "recommended", {})}
    return {k: v for k, v in cfg.to_dict().items()
            if k not in {*BENCH_KEYS, "loss_options", *methods} or k in definition.settings}


class Budget(Callback):
    """Stops a run after ``minutes`` of training."""

    def __init__(self, minutes: float):
        self.seconds, self.start = minutes * 60, None

    def on_start(self, run):
        self.start = time.monotonic()

    def on_step(self, run, record):
        if time.monotonic() - self.start >= self.seconds:
            run.stop(f"the bench's budget of {self.seconds / 60:g} minutes")


class Bench:
    """One worker of a bench: ``work()`` trains and scores cells until none is left to start."""

    def __init__(self, definition: Definition, name: str, storage: str, out_dir: Path, registry, log=None):
        self.definition, self.name, self.storage, self.registry = definition, name, storage, registry
        self.log = log or (lambda line: print(line, flush=True))  # a line per cell, also into a file
        self.root = Path(out_dir) / name
        self.losses, self.datasets, self.protocols, self.refused = check(definition, registry)
        self.study = None

    @property
    def cells(self) -> list:
        return list(itertools.product(self.losses, self.datasets, range(self.definition.seeds)))

    def open(self):
        """Create the bench's study, or join it: the same definition or a one-line error."""
        import optuna

        from ganforge.tuning import open_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.GridSampler({"loss": self.losses, "dataset": self.datasets,
                                               "seed": list(range(self.definition.seeds))})
        self.study = optuna.create_study(study_name=self.name, storage=open_storage(self.storage, max_retry=None),
                                         sampler=sampler, load_if_exists=True)
        stored = self.study.user_attrs.get("bench")
        if stored is None and self.study.trials:
            raise UsageError(f"study '{self.name}' in {self.storage} is not a bench (a ganforge tune study?); "
                             "pick another --study")
        if stored is None:
            for key, value in {"bench": self.definition.to_dict(), "refused": self.refused,
                               "protocols": self.protocols,
                               "command": self.definition.command(self.name, self.storage)}.items():
                self.study.set_user_attr(key, value)
        elif stored != self.definition.to_dict():
            raise UsageError(f"bench '{self.name}' in {self.storage} was started with other options "
                             f"({self.study.user_attrs['command']}); give the same ones, or another --study")
        return self.study

    def work(self) -> None:
        """Run cells until every one is finished or being run by another worker."""
        from optuna.trial import TrialState

        while True:
            trials = self.study.get_trials(deepcopy=False)
            self.reclaim(trials)
            taken = {cell_of(t) for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING)}
            waiting = {cell_of(t) for t in trials if t.state == TrialState.WAITING}
            todo = [c for c in self.cells if c not in taken]
            if not todo:
                return
            if len(trials) >= len(self.cells) and not waiting & set(todo):  # the grid is spent: queue it again
                self.study.enqueue_trial(dict(zip(CELL, todo[0])))
            self.study.optimize(self.cell, n_trials=1)

    def reclaim(self, trials) -> None:
        """Fail the cells of this machine whose worker is dead, and queue them again (the heartbeat does
        the same for other machines' after its grace period)."""
        import optuna
        from optuna.trial import TrialState

        host = socket.gethostname()
        for t in trials:
            if (t.state == TrialState.RUNNING and t.user_attrs.get("host") == host
                    and not rundir.alive(t.user_attrs.get("pid"))):
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    if self.study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                        self.log(f"{_label(cell_of(t))}: its worker (pid {t.user_attrs['pid']}) is gone; queued again")
                        self.study.enqueue_trial(dict(zip(CELL, cell_of(t))))

    def cell(self, trial) -> float:
        """Train and score one cell; its outcome, metrics, wall time, command and versions go to the
        trial's user attributes. Returns the training's wall seconds."""
        import optuna
        from optuna.trial import TrialState

        loss = trial.suggest_categorical("loss", self.losses)
        dataset = trial.suggest_categorical("dataset", self.datasets)
        seed = trial.suggest_categorical("seed", list(range(self.definition.seeds)))
        cell = (loss, dataset, seed)
        rivals = [t for t in self.study.get_trials(deepcopy=False)
                  if t.number != trial.number and cell_of(t) == cell and (
                      t.state == TrialState.COMPLETE or (t.state == TrialState.RUNNING and t.number < trial.number))]
        if rivals:
            raise optuna.TrialPruned(f"{_label(cell)} is trial {rivals[0].number}'s")
        for key, value in {"host": socket.gethostname(), "pid": os.getpid()}.items():
            trial.set_user_attr(key, value)
        result = self.run_cell(loss, dataset, seed)
        for key, value in result.items():
            trial.set_user_attr(key, value)
        scores = ", ".join(f"{k} {v:.4g}" for k, v in result.get("metrics", {}).items())
        self.log(f"{_label(cell)}: {scores or result['outcome'] + ': ' + result['line']} "
                 f"({rundir.duration(result['train_seconds'])})")
        return result["train_seconds"]

    def run_cell(self, loss: str, dataset: str, seed: int) -> dict:
        """Train and score one cell: ``{outcome, line?, metrics?, train_seconds, steps?, command, run_dir,
        versions?}``; outcome "ok", "diverged", "refused" (bad input) or "failed" (an error, with its log)."""
        from ganforge.evaluation import evaluate
        from ganforge.training import train

        runs = self.root / "runs"
        given = {"dataset": dataset, "loss": loss, "seed": seed,
                 **({"steps": self.definition.steps} if self.definition.steps else {}),
                 **self.definition.settings, "out_dir": str(runs), "name": cell_name(loss, dataset, seed)}
        shared = self.root / f"shared-{dataset}.toml" if self.definition.same_settings else None
        if shared:
            given = {k: v for k, v in given.items() if k in BENCH_KEYS}  # the rest is in the shared file
        out = {"command": config.train_command(given, shared), "run_dir": str(runs / given["name"]),
               "train_seconds": 0.0}
        log = runs / f"{given['name']}.log"
        start = time.monotonic()
        try:
            runs.mkdir(parents=True, exist_ok=True)
            if shared:
                text = config.to_toml(shared_settings(dataset, self.definition, self.registry))
                rundir.atomic_write(shared, lambda p: p.write_text(text))
            cfg = layering.build(given, shared, registry=self.registry, source="ganforge bench")
            budget = [Budget(self.definition.budget_minutes)] if self.definition.budget_minutes else []
            with open(log, "w") as stream, contextlib.redirect_stdout(stream):
                run_dir = train(cfg, progress=True, overwrite=True, callbacks=budget)
            out["train_seconds"] = time.monotonic() - start
            record = rundir.read_record(run_dir)
            out["steps"] = record["step"]
            out["versions"] = {"ganforge": record["ganforge_version"], **{
                p["package"]: p["version"] for p in record.get("providers", {}).values()}}
            metrics = {}
            for judge in self.protocols[dataset]:
                scored = evaluate(run_dir, extractor=judge, registry=self.registry).metrics
                metrics.update({k if judge is None else f"{k}@{judge}": float(v)
                                for k, v in scored.items() if k != "kid_std"})
            out.update(outcome="ok", metrics=metrics)  # reverse KL is infinite where no sample is near a mode
        except TrainingDiverged as exc:
            out.update(outcome="diverged", line=str(exc).splitlines()[0])
        except UsageError as exc:
            out.update(outcome="refused", line=str(exc))
        except Interrupted:
            raise  # Ctrl-C or SIGTERM: the cell is not finished, and is queued again
        except Exception as exc:  # a cell's failure is recorded; the bench goes on
            out.update(outcome="failed", line=f"{type(exc).__name__}: {exc} (see {log})".splitlines()[0])
        out["train_seconds"] = out["train_seconds"] or time.monotonic() - start
        return out


def cell_of(trial) -> tuple:
    """A trial's (loss, dataset, seed): its params, or for a queued trial its fixed params."""
    params = trial.params or trial.system_attrs.get("fixed_params", {})
    return tuple(params.get(k) for k in CELL)


def _label(cell: tuple) -> str:
    loss, dataset, seed = cell
    return f"{loss} on {dataset}, seed {seed}"

"""``ganforge tune``: hyper-parameter search with Optuna (TPE sampler, median pruner on the metric that
``--eval-every`` reports). Every trial is an ordinary run directory, trained in this process; the
study lives in Optuna's storage (SQLite by default), so a killed tune resumes and several workers,
on one machine or many, can share one study.

The search space is declared with each setting (``setting(..., search=...)`` in :mod:`ganforge.config`)
and with the options of each architecture and loss (its factory's ``search`` attribute); a TOML file overrides it
(:func:`space`). Settings the user fixes, and those that are part of the loss's method, are not searched.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path

from ganforge import config, layering
from ganforge.errors import UsageError
from ganforge.interfaces import Callback
from ganforge.metrics import metric_direction

def check_spec(name: str, spec) -> dict:
    """A search spec, checked: ``{low, high[, log]}`` (floats, or integers when both are) or ``{choices}``."""
    if not isinstance(spec, dict) or not (set(spec) in ({"choices"}, {"low", "high"}, {"low", "high", "log"})):
        raise UsageError(f"search space of {name} must be {{low = A, high = B[, log = true]}} or "
                         f"{{choices = [...]}}, got {spec!r}")
    if "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise UsageError(f"search space of {name}: choices must be a non-empty list, got {spec['choices']!r}")
        return {"choices": list(spec["choices"])}
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if not (config._number(low) and config._number(high) and low < high and isinstance(log, bool)) \
            or (log and low <= 0):
        raise UsageError(f"search space of {name}: needs low < high (both > 0 on a log scale), got {spec!r}")
    return {"low": low, "high": high, "log": log}


def default_space(registry, arch: str, loss: str) -> dict:
    """``{setting or "TABLE.KEY": spec}``: the searches declared on the settings, on ``arch``'s factory
    (``arch_options``) and on ``loss``'s (``loss_options``)."""
    out = {name: f.metadata["search"] for name, f in config.FIELDS.items() if f.metadata.get("search")}
    for table, kind, name in (("arch_options", "architectures", arch), ("loss_options", "losses", loss)):
        factory = registry.get(kind, name).factory
        out.update({f"{table}.{k}": v for k, v in getattr(factory, "search", {}).items()})
    return {key: check_spec(key, spec) for key, spec in out.items()}


def space(registry, arch: str, loss: str, file=None, fixed=()) -> dict:
    """The search space: :func:`default_space`, with the ``file``'s keys over it (a TOML file of
    ``setting = {low, high, log}`` / ``{choices}`` / ``false`` (not searched), tables for option keys, and
    ``defaults = false`` to search only what it names); without the ``fixed`` settings (names, and
    ``TABLE.KEY`` for option keys)."""
    out = default_space(registry, arch, loss)
    if file is not None:
        path = Path(file)
        try:
            given = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"search space file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"search space file {path} is not valid TOML: {exc}") from None
        if given.pop("defaults", True) is False:
            out = {}
        for key, spec in given.items():
            if key in config.OPTION_TABLES and isinstance(spec, dict) and not ({"low", "choices"} & set(spec)):
                for sub, sub_spec in spec.items():
                    _put(out, f"{key}.{sub}", sub_spec, path)
            else:
                _put(out, key, spec, path)
    return {key: spec for key, spec in out.items() if key not in fixed}


def _put(out: dict, key: str, spec, path) -> None:
    name = key.partition(".")[0]
    if name not in config.FIELDS:
        config.check_value(name, None, f"search space file {path}")  # raises: the unknown-key message
    if spec is False:
        out.pop(key, None)
        return
    spec = check_spec(key, spec)
    for value in spec.get("choices", [spec.get("low"), spec.get("high")]):
        if "." not in key:
            config.check_value(name, value, f"search space file {path}")
    out[key] = spec


def suggest(trial, space: dict) -> dict:
    """Settings for one trial: ``{setting: value}``, option keys as ``{table: {key: value}}``."""
    out = {}
    for key, spec in space.items():
        if "choices" in spec:  # Optuna's choices are scalars: lists (betas) go by their JSON text
            texts = [json.dumps(c) for c in spec["choices"]]
            value = json.loads(trial.suggest_categorical(key, texts))
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int) and not spec["log"]:
            value = trial.suggest_int(key, spec["low"], spec["high"])
        else:
            value = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=spec["log"])
        table, _, sub = key.partition(".")
        if sub:
            out.setdefault(table, {})[sub] = value
        else:
            out[key] = value
    return out


class Report(Callback):
    """A callback that reports each evaluation's ``metric`` to the Optuna ``trial`` and stops the run
    when the pruner says so."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric
        self.last = self.pruned_at = None

    def on_evaluate(self, run, metrics):
        if self.metric not in metrics:
            raise UsageError(f"the evaluation reports {', '.join(metrics)}, not {self.metric}; "
                             "pick one of those with --metric")
        self.last = float(metrics[self.metric])
        if not math.isfinite(self.last):
            return
        self.trial.report(self.last, run.step)
        if run.step < run.total and self.trial.should_prune():
            self.pruned_at = run.step
            run.stop(f"pruned by ganforge tune: {self.metric} {self.last:.4g} at step {run.step}")


@dataclass
class Tune:
    """One ``ganforge tune`` worker: what to tune (``given``: dataset, loss, arch and every fixed setting),
    the metric and its direction, the space, the study."""

    given: dict
    metric: str
    trials: int
    space: dict
    study: str
    storage: str
    out_dir: Path
    config_file: Path | None = None
    pruner: object = None  # an optuna pruner; default MedianPruner after the first evaluation
    log: object = print

    def objective(self, trial):
        import optuna

        from ganforge.errors import TrainingDiverged
        from ganforge.training import train

        params = suggest(trial, self.space)
        settings = layering.merge_settings(self.given, params, {"out_dir": str(self.out_dir / self.study),
                                                                 "name": f"trial-{trial.number:03d}"})
        cfg = layering.build(settings, self.config_file, source="ganforge tune")
        report = Report(trial, self.metric)
        trial.set_user_attr("run_dir", str(Path(cfg.out_dir) / cfg.name))
        trial.set_user_attr("settings", params)
        line = f"trial {trial.number}: " + ", ".join(f"{k}={config.short_value(v)}" for k, v in _flat(params).items())
        log = Path(cfg.out_dir) / f"{cfg.name}.log"  # the run's own output, out of the way
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(log, "w") as out, contextlib.redirect_stdout(out):
                train(cfg, progress=True, overwrite=True, callbacks=[report])
        except TrainingDiverged as exc:
            self.log(f"{line} -> diverged")
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        except UsageError:
            raise
        except Exception as exc:
            self.log(f"{line} -> failed: {type(exc).__name__}: {exc} (see {log})".splitlines()[0])
            raise
        result = f"{self.metric} {report.last:.4g}" if report.last is not None else f"no {self.metric}"
        if report.pruned_at is not None:
            self.log(f"{line} -> {result} at step {report.pruned_at}: pruned")
            raise optuna.TrialPruned(f"pruned at step {report.pruned_at}")
        self.log(f"{line} -> {result}")
        if report.last is None or not math.isfinite(report.last):
            raise optuna.TrialPruned(f"{self.metric} is {report.last}")
        return report.last

    def run(self):
        """Run trials until the study has ``trials`` finished ones (complete or pruned, from every worker);
        returns the study."""
        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(self.storage)
        direction = "maximize" if metric_direction(self.metric) == "max" else "minimize"
        study = optuna.create_study(  # the sampler's seed is random: workers must not draw the same trials
            study_name=self.study, storage=storage, load_if_exists=True, direction=direction,
            sampler=optuna.samplers.TPESampler(n_startup_trials=max(1, min(10, self.trials // 3))),
            pruner=self.pruner or optuna.pruners.MedianPruner(
                n_startup_trials=3, n_warmup_steps=self.given.get("eval_every", 0)))
        if study.direction.name.lower() != direction:
            raise UsageError(f"study '{self.study}' in {self.storage} {study.direction.name.lower()}s its metric; "
                             f"{self.metric} needs {direction}: pick another --study")
        done = (TrialState.COMPLETE, TrialState.PRUNED)
        while len(study.get_trials(deepcopy=False, states=done)) < self.trials:
            study.optimize(self.objective, n_trials=1, catch=(RuntimeError, ArithmeticError))
        return study


def open_storage(url: str, attempts: int = 5, max_retry: int | None = 1):
    """Optuna's database storage, with heartbeats (a killed worker's trial fails, and is retried up to
    ``max_retry`` times; None: always).
    Workers started together on a new database race to create its tables; the losers retry once the
    winner has made them."""
    import optuna
    import sqlalchemy.exc

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=60, grace_period=180,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.Random().random())  # its own stream: the run's seeds stay untouched


def best_outputs(study, given: dict, metric: str, out: Path, file_settings: dict | None = None) -> tuple:
    """Write the best trial's settings with the fixed ones (``given``, ``file_settings``) as ``best.toml``
    (``ganforge train --config`` takes it), and the searched ones as a ``register_recipes`` snippet
    (``recipe.py``), into ``out``; returns (best trial, toml text, snippet)."""
    best = study.best_trial
    settings = best.user_attrs["settings"]
    keep = {k: v for k, v in layering.merge_settings(file_settings or {}, given).items()
            if not k.startswith("eval_") and k not in ("out_dir", "name")}
    toml = (f"# ganforge tune, study {study.study_name}: trial {best.number}, {metric} {best.value:.4g} "
            f"({best.user_attrs['run_dir']})\n" + config.to_toml(layering.merge_settings(keep, settings)))
    keys = ", ".join(f"{k}={json.dumps(given[k].rpartition(':')[2])}"  # recipes name parts without a plugin
                     for k in ("dataset", "loss", "arch") if k in given)
    snippet = ("from ganforge import hookimpl\n\n\n@hookimpl\ndef register_recipes(register):\n"
               f"    register({keys}, settings={_py(settings)},\n"
               f"             source=\"ganforge tune: study {study.study_name}, trial {best.number} of "
               f"{len(study.trials)}, {metric} {best.value:.4g} at {given['steps']} steps\")\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "best.toml").write_text(toml)
    (out / "recipe.py").write_text(snippet)
    return best, toml, snippet


def _py(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_py(v)}" for k, v in value.items()) + "}"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _flat(params: dict) -> dict:
    return {f"{k}.{s}" if isinstance(v, dict) else k: sv for k, v in params.items()
            for s, sv in (v.items() if isinstance(v, dict) else [(None, v)])}

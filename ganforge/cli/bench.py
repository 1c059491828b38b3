"""``ganforge bench``: losses compared over seeds at an equal budget; cells shared by any number of workers."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ganforge.cli.common import DEFAULT_STORAGE, load_registry, parse_options, user_errors


def bench(
    loss: Optional[str] = typer.Option(None, help="Losses to compare, comma-separated (plugin:name where two "
                                                  "plugins share a name)."),
    dataset: Optional[str] = typer.Option(None, help="Datasets, comma-separated; each scored by its protocol."),
    seeds: int = typer.Option(3, min=1, help="Seeds per loss and dataset (0 to N-1)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Training steps of every cell (default: the recipes')."),
    budget_minutes: Optional[float] = typer.Option(None, help="Or: minutes of training per cell (the recipes' "
                                                              "steps at most)."),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="A setting for every cell, as in a "
                                   "config file (repeatable)."),
    same_settings: bool = typer.Option(False, "--same-settings", help="Every loss on a dataset trains with one "
                                       "config (the dataset's recipes and --set) instead of its own recipes; "
                                       "a loss keeps the settings that are part of its method."),
    study: Optional[str] = typer.Option(None, help="Bench name (default: the datasets and a hash of the "
                                                   "options); workers with the same name share it."),
    storage: str = typer.Option(DEFAULT_STORAGE, help="Optuna storage URL, the one ganforge tune uses; workers "
                                "that share it (e.g. postgresql://...) share the bench."),
    out_dir: Path = typer.Option(Path("bench"), help="Where OUT_DIR/NAME/report.md and the cells' runs go."),
    report: Optional[str] = typer.Option(None, help="Only rebuild the report of the bench with this name from "
                                                    "the storage."),
):
    """Compare losses fairly: every (loss, dataset, seed) cell is a run directory, scored by the dataset's
    protocol; writes OUT_DIR/NAME/report.md, report.json and report.png (mean and 95% interval per loss and
    metric, and the differences beyond the seed spread). Start it on more cores or machines with the same
    command and --storage to share the cells."""
    from ganforge.bench import Definition
    from ganforge.errors import Interrupted, UsageError

    with user_errors():
        if report is not None:
            if loss or dataset:
                raise UsageError("--report rebuilds a finished bench's report; give it without --loss and --dataset")
            found = _load(report, storage)
            if found is None:
                raise UsageError(f"no bench named '{report}' in {storage}; see --study of the bench's command")
            _write(found, out_dir / report)
            return
        if not loss or not dataset:
            raise UsageError("give --loss and --dataset (comma-separated names), or --report NAME")
        if steps is not None and budget_minutes is not None:
            raise UsageError("--steps and --budget-minutes both set the budget of a cell; give one")
        if budget_minutes is not None and budget_minutes <= 0:
            raise UsageError(f"--budget-minutes must be positive, got {budget_minutes:g}")
        from ganforge import config
        from ganforge.bench import BENCH_KEYS, Bench

        settings = parse_options(set_, "--set")
        for key in settings:
            if key in BENCH_KEYS:
                raise UsageError(f"--set {key}: the bench sets it; use {BENCH_KEYS[key]}")
        settings = {k: config.check_value(k, v, "--set") for k, v in settings.items()}
        definition = Definition(_names(loss, "--loss"), _names(dataset, "--dataset"), seeds, steps, budget_minutes,
                                settings, same_settings)
        job = Bench(definition, study or definition.default_name, storage, out_dir, load_registry())
        for line in job.refused:
            typer.echo(f"Error: {line}", err=True)
        if not job.cells:
            raise typer.Exit(2)
        job.open()
        typer.echo(f"bench {job.name} in {storage}: {len(job.losses)} losses x {len(job.datasets)} datasets x "
                   f"{seeds} seeds = {len(job.cells)} cells")
        try:
            job.work()
        except (Interrupted, KeyboardInterrupt):
            typer.echo("interrupted: the cell in progress is not counted; the same command goes on with the "
                       "cells not finished", err=True)
            raise typer.Exit(130) from None
        _write(job.study, job.root)
    if job.refused:
        raise typer.Exit(2)


def _names(text: str, flag: str) -> tuple:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        from ganforge.errors import UsageError

        raise UsageError(f"{flag} takes comma-separated names, got {text!r}")
    return names


def _load(name: str, storage: str):
    import optuna

    from ganforge.tuning import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        found = optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        return None
    return found if "bench" in found.user_attrs else None


def _write(study, directory: Path) -> None:
    from ganforge import bench_report
    from ganforge.bench import cell_of

    report, paths = bench_report.update(study, cell_of, directory)
    typer.echo(f"{len(report['cells'])} cells, {len(report['missing'])} not finished; report: "
               + ", ".join(map(str, paths)))

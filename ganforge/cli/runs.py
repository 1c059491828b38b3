"""``ganforge runs``: the runs in a directory, one line each. Reads files only: no torch."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from ganforge.cli.common import user_errors


def runs(
    directory: Path = typer.Argument(Path("runs"), help="Directory of runs (ganforge train's --out-dir), or one run."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """List runs: name, dataset, arch/loss, steps done of the total, status and the last metrics."""
    from ganforge.rundir import find_runs, summary

    with user_errors():
        rows = [summary(run) for run in find_runs(directory)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no runs in {directory}")
        return
    table = [("name", "dataset", "arch/loss", "steps", "status", "last metrics")] + [
        (r["name"], r["dataset"], f"{r['arch']}/{r['loss']}", f"{r['step']}/{r['total']}", r["status"],
         "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r["metrics"].items()))
        for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(5)]
    for row in table:
        typer.echo("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) + "  " + row[5])

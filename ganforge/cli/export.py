"""``ganforge export``: a run's generator to ONNX and TorchScript, verified against PyTorch."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ganforge.cli.common import load_registry, user_errors


def export(
    run: Path = typer.Argument(..., help="Run directory made by ganforge train."),
    format: str = typer.Option("all", "--format", "-f", help="onnx, torchscript or all."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (one format); "
                                       "default: RUN/export/generator.onnx and generator.pt."),
    checkpoint: Optional[str] = typer.Option(None, help="Checkpoint name, e.g. step-2000 (default: the latest)."),
    raw: bool = typer.Option(False, "--raw", help="Export the raw generator even when the run has an EMA one."),
):
    """Export a run's generator (EMA when the run has one) and verify it against PyTorch."""
    with user_errors():
        from ganforge.api import export as run_export

        load_registry()
        for path, diff in run_export(run, format, out, checkpoint, raw):
            typer.echo(f"wrote {path} (verified against PyTorch: max abs difference {diff:.2g})")

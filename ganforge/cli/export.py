"""``ganforge export``: a run's generator to ONNX and TorchScript, verified against PyTorch."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ganforge.cli import app, load_registry, user_errors
from ganforge.errors import UsageError

FORMAT_CHOICES = ("onnx", "torchscript", "all")


@app.command()
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
        if format not in FORMAT_CHOICES:
            raise UsageError(f"unknown format '{format}'; use one of: {', '.join(FORMAT_CHOICES)}")
        if out is not None and format == "all":
            format = {".onnx": "onnx", ".pt": "torchscript"}.get(out.suffix, "")
            if not format:
                raise UsageError(f"cannot tell the format from {out.name}: use a .onnx or .pt name, or --format")
        from ganforge.export import ExportMismatch, export as run_export

        load_registry()

        formats = ("onnx", "torchscript") if format == "all" else (format,)
        try:
            results = run_export(run, formats, out, checkpoint, raw)
        except ExportMismatch as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None
        for path, diff in results:
            typer.echo(f"wrote {path} (verified against PyTorch: max abs difference {diff:.2g})")

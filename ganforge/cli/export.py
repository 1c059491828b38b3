"""``ganforge export``: a run's generator to ONNX and TorchScript, verified against PyTorch."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ganforge.cli.common import load_registry, user_errors


def export(
    run: Path = typer.Argument(..., help="Run directory made by ganforge train (with --format web, also an "
                                         "exported generator.onnx)."),
    format: str = typer.Option("all", "--format", "-f", help="onnx, torchscript, all (both), or web (a page that "
                                                            "samples in the browser)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (one format), or folder (web); "
                                       "default: RUN/export/generator.onnx and generator.pt, or RUN/export/web."),
    checkpoint: Optional[str] = typer.Option(None, help="Checkpoint name, e.g. step-2000 (default: the latest)."),
    raw: bool = typer.Option(False, "--raw", help="Export the raw generator even when the run has an EMA one."),
    runtime: Optional[Path] = typer.Option(None, help="web: an npm install of onnxruntime-web (default: fetched "
                                                      "once from the npm registry into ganforge's cache)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="web: replace a non-empty --out folder."),
    backend: str = typer.Option("both", help="web: the runtime to ship: both (WebGPU where the browser has a GPU, "
                                             "else WebAssembly), wasm (a site 27 MB smaller) or webgpu."),
):
    """Export a run's generator (EMA when the run has one), verified against PyTorch: ONNX, TorchScript, or a
    web page."""
    with user_errors():
        from ganforge.api import export as run_export

        load_registry()
        for path, diff in run_export(run, format, out, checkpoint, raw, runtime, overwrite, backend):
            how = f"from {run}" if run.is_file() else f"verified against PyTorch: max abs difference {diff:.2g}"
            typer.echo(f"wrote {path} ({how})")
            if format == "web":
                typer.echo(f"serve it with: ganforge serve {path}")

"""``ganforge sample``: samples from an exported generator. Imports no torch for ONNX files."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ganforge.cli.common import user_errors
from ganforge.errors import UsageError

SUFFIX_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".npy": "npy", ".gif": "gif"}


def sample(
    model: Path = typer.Argument(..., help="generator.onnx (onnxruntime, no torch), generator.pt (TorchScript) or "
                                           "a run directory (its newest checkpoint's EMA generator)."),
    n: int = typer.Option(64, "-n", "--num", help="Number of samples (per frame with --interpolate)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the latent vectors (default: random)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: samples.png/.npy/.gif)."),
    format: Optional[str] = typer.Option(None, "--format", "-f", help="png, jpg, npy or gif (default: from --out)."),
    cls: Optional[int] = typer.Option(None, "--class", help="Class to generate (class-conditional models)."),
    interpolate: Optional[int] = typer.Option(None, help="Write a latent walk GIF with this many frames per segment."),
    truncation: float = typer.Option(1.0, "--truncation", help="Pull the latents toward the prior's mean: "
                                     "psi in [0, 1], 1 none (the web page's slider is the same)."),
    threads: Optional[int] = typer.Option(None, help="Inference threads (default: min(4, cores))."),
):
    """Draw samples from an exported generator: an image grid or scatter plot (png), arrays (npy) or a walk (gif)."""
    with user_errors():
        if interpolate is not None and interpolate < 1:
            raise UsageError(f"--interpolate takes the number of frames between key latents, at least 1; got "
                             f"{interpolate}")
        if format is None and out is not None and interpolate is None:
            format = SUFFIX_FORMATS.get(out.suffix.lower())
            if format is None:
                raise UsageError(f"cannot tell the format from {out.name}: name it .png, .jpg, .npy or .gif, "
                                 "or pass --format")
        format = format or ("gif" if interpolate else "png")
        if format not in ("png", "jpg", "npy", "gif"):
            raise UsageError(f"unknown format '{format}'; use png, jpg, npy or gif")
        if (format == "gif") != (interpolate is not None):
            raise UsageError("--interpolate writes a gif, and a gif needs --interpolate N")
        if n <= 0:
            raise UsageError(f"-n must be positive, got {n}")
        from ganforge.inference import Sampler, check_truncation, write_gif, write_samples

        check_truncation(truncation, "--truncation")
        out = out or Path(f"samples.{format}")
        sampler = Sampler(model, threads=threads)
        if interpolate is not None:
            write_gif(sampler.interpolate(n, interpolate, seed=seed, cls=cls, truncation=truncation), out)
        else:
            write_samples(sampler, sampler.sample(n, seed=seed, cls=cls, truncation=truncation), out, format,
                          title=model.name)
        typer.echo(f"wrote {out}")

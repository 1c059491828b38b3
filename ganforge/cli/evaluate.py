"""``ganforge evaluate``: metrics of a run's generator, or an exported one, against a dataset."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ganforge.cli.common import load_registry, parse_options, user_errors
from ganforge.config import DEVICES


def evaluate(
    source: Path = typer.Argument(..., help="Run directory, or an exported generator.onnx / generator.pt."),
    dataset: Optional[str] = typer.Option(None, help="Dataset to compare with (default: the one it was trained on)."),
    data_root: Optional[str] = typer.Option(None, help="Directory holding the dataset."),
    data_opt: List[str] = typer.Option([], help="Dataset option key=value, e.g. split=test."),
    download: Optional[bool] = typer.Option(None, "--download/--no-download", help="Allow downloading data."),
    metrics: Optional[str] = typer.Option(None, help="Comma-separated: toy, fid, kid, precision-recall, "
                                                     "density-coverage, intra-fid, is, class-kl, modes "
                                                     "(default: all that apply)."),
    extractor: Optional[str] = typer.Option(None, help="Feature extractor: inception (images, default), "
                                                       "classifier (trained on the dataset's labels, cached; "
                                                       "stacked-mnist's default), autoencoder (trained without "
                                                       "labels, cached), raw."),
    extractor_opt: List[str] = typer.Option([], help="Feature extractor option key=value."),
    samples: Optional[int] = typer.Option(None, "-n", "--samples", help="Generated and real samples "
                                          "(default: 2500 for toy data, 26000 for stacked-mnist, else up to 10000)."),
    seed: int = typer.Option(0, help="Seed of the latents and the real subset."),
    checkpoint: Optional[str] = typer.Option(None, help="A run's checkpoint: step-N or best (default: latest)."),
    raw: bool = typer.Option(False, "--raw", help="Evaluate the raw generator even when the run has an EMA one."),
    device: str = typer.Option("auto", help=f"{DEVICES}."),
    batch_size: int = typer.Option(500, help="Samples per batch (bounds memory)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    plot: Optional[Path] = typer.Option(None, help="Write the samples as a picture (scatter with the modes, or a grid)."),
):
    """Score a generator: toy metrics on Gaussian mixtures; FID, KID, precision/recall, density/coverage,
    and class metrics on images."""
    with user_errors():
        from ganforge.evaluation import evaluate as run_evaluation
        from ganforge.evaluation import format_results, plot as write_plot

        report = run_evaluation(source, dataset, data_root, parse_options(data_opt, "--data-opt"), download, metrics,
                                extractor, parse_options(extractor_opt, "--extractor-opt"), samples, seed, checkpoint,
                                raw, device, batch_size, load_registry())
        evaluator = report.evaluator
        typer.echo(f"{report.source} against {report.dataset}: {evaluator.samples} samples, seed {seed}")
        if evaluator.extractor is not None and evaluator.extractor.description:
            typer.echo(f"features: {evaluator.extractor.description}")
        typer.echo(format_results(report.metrics, evaluator.details))
        if json_out is not None:
            json_out.write_text(json.dumps({"source": str(source), "dataset": report.dataset, "seed": seed,
                                            "samples": evaluator.samples, "metrics": report.metrics,
                                            "per_class": evaluator.details}, indent=2) + "\n")
            typer.echo(f"wrote {json_out}")
        if plot is not None:
            write_plot(evaluator, plot, f"{source.name} vs {report.dataset}")
            typer.echo(f"wrote {plot}")

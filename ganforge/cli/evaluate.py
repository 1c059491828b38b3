"""``ganforge evaluate``: metrics of a run's generator, or an exported one, against a dataset."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ganforge.cli import app, load_registry, parse_options, user_errors
from ganforge.errors import UsageError


@app.command()
def evaluate(
    source: Path = typer.Argument(..., help="Run directory, or an exported generator.onnx / generator.pt."),
    dataset: Optional[str] = typer.Option(None, help="Dataset to compare with (default: the one it was trained on)."),
    data_root: Optional[str] = typer.Option(None, help="Directory holding the dataset."),
    data_opt: List[str] = typer.Option([], help="Dataset option key=value, e.g. split=test."),
    download: Optional[bool] = typer.Option(None, "--download/--no-download", help="Allow downloading data."),
    metrics: Optional[str] = typer.Option(None, help="Comma-separated: toy, fid, kid, precision-recall, "
                                                     "density-coverage, is, class-kl (default: all that apply)."),
    extractor: Optional[str] = typer.Option(None, help="Feature extractor: inception (images, default), "
                                                       "classifier (trained on the dataset, cached), raw."),
    extractor_opt: List[str] = typer.Option([], help="Feature extractor option key=value."),
    samples: Optional[int] = typer.Option(None, "-n", "--samples", help="Generated and real samples "
                                          "(default: 2500 for toy data, else up to 10000)."),
    seed: int = typer.Option(0, help="Seed of the latents and the real subset."),
    checkpoint: Optional[str] = typer.Option(None, help="A run's checkpoint: step-N or best (default: latest)."),
    raw: bool = typer.Option(False, "--raw", help="Evaluate the raw generator even when the run has an EMA one."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    batch_size: int = typer.Option(500, help="Samples per batch (bounds memory)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    plot: Optional[Path] = typer.Option(None, help="Write the samples as a picture (scatter with the modes, or a grid)."),
):
    """Score a generator: toy metrics on Gaussian mixtures; FID, KID, precision/recall, density/coverage,
    and class metrics on images."""
    with user_errors():
        if samples is not None and samples < 2:
            raise UsageError(f"--samples must be at least 2, got {samples}")
        if batch_size < 1:
            raise UsageError(f"--batch-size must be positive, got {batch_size}")
        from ganforge.config import TrainConfig, check_value, load_toml
        from ganforge.evaluate import Evaluator, format_results
        from ganforge.evaluate import plot as write_plot
        from ganforge.metrics import parse_metrics
        from ganforge.train import load_data, resolve_device

        groups = parse_metrics(metrics)
        registry = load_registry()
        dev = resolve_device(device)
        if source.is_dir():
            from ganforge.export import load_generator

            recorded = load_toml(source / "config.toml") if (source / "config.toml").is_file() else {}
            own_data = dataset is None or dataset == recorded.get("dataset")  # then its plugin must be there too
            G, meta = load_generator(source, checkpoint, raw, "evaluating",
                                     ("arch", "d_arch", "dataset") if own_data else ("arch", "d_arch"))
            G = G.to(dev)
            generate = lambda z, labels: G(z.to(dev), None if labels is None else labels.to(dev))  # noqa: E731
            what = f"{source} ({meta['generator']} generator, step {meta['step']})"
        elif source.is_file():
            if checkpoint is not None or raw:
                raise UsageError("--checkpoint and --raw pick from a run directory; an exported file has one generator")
            from ganforge.inference import Sampler

            sampler = Sampler(source)
            meta, recorded = sampler.metadata, {"dataset": sampler.metadata.get("dataset")}
            generate = lambda z, labels: sampler.generate(  # noqa: E731
                z.numpy(), None if labels is None else labels.numpy())
            what = str(source)
        else:
            raise UsageError(f"{source} does not exist; pass a run directory or an exported generator file")
        data = {k: recorded[k] for k in ("dataset", "data_root", "data_options", "download") if recorded.get(k)}
        if dataset is not None and dataset != data.get("dataset"):
            data = {"dataset": dataset}  # another dataset: none of the run's data settings apply
        if not data.get("dataset"):
            raise UsageError(f"{source} does not say which dataset it was trained on; pass --dataset")
        for key, value in (("data_root", data_root), ("download", download)):
            if value is not None:
                data[key] = value
        if data_opt:
            data["data_options"] = {**data.get("data_options", {}), **parse_options(data_opt, "--data-opt")}
        shape = meta["output_shape"]
        if len(shape) == 3:
            data["image_size"] = shape[-1]
        reference = load_data(TrainConfig(**{k: check_value(k, v, "the command line") for k, v in data.items()}),
                              registry)
        evaluator = Evaluator(reference, groups, extractor, samples, seed, dev, batch_size, registry,
                              parse_options(extractor_opt, "--extractor-opt"))
        results = evaluator(generate, meta["latent_dim"], meta.get("num_classes"))
        typer.echo(f"{what} against {data['dataset']}: {evaluator.samples} samples, seed {seed}")
        if evaluator.extractor is not None and evaluator.extractor.description:
            typer.echo(f"features: {evaluator.extractor.description}")
        typer.echo(format_results(results))
        if json_out is not None:
            json_out.write_text(json.dumps({"source": str(source), "dataset": data["dataset"], "seed": seed,
                                            "samples": evaluator.samples, "metrics": results}, indent=2) + "\n")
            typer.echo(f"wrote {json_out}")
        if plot is not None:
            write_plot(evaluator, plot, f"{source.name} vs {data['dataset']}")
            typer.echo(f"wrote {plot}")

"""The Python API, mirroring the CLI: the same config layers, checks and files.

>>> import ganforge
>>> run = ganforge.train(arch="dcgan", loss="lsgan", steps=1000)     # Path of the run directory
>>> G, cfg = ganforge.load(run)                                      # EMA generator (eval mode), its TrainConfig
>>> ganforge.export(run)                                             # [(path, max_abs_diff), ...]
>>> ganforge.evaluate(run, extractor="classifier")                   # {"fid": ..., ...}

Errors in what is asked for raise :class:`ganforge.UsageError` with the CLI's one-line message.
Heavy modules (torch) are imported inside the functions: ``import ganforge`` stays cheap.
"""
from __future__ import annotations

from pathlib import Path

from ganforge.errors import UsageError

FORMAT_CHOICES = ("onnx", "torchscript", "all", "web")


def train(config=None, *, resume=None, fast: bool = False, overwrite: bool = False, progress: bool = False,
          callbacks=(), source: str = "the arguments of ganforge.train()", announce=print, **settings) -> Path:
    """Train a new run, or continue one (``resume=RUN_DIR``); returns the run directory.

    ``settings`` are TrainConfig fields (``arch="dcgan"``, ``steps=1000``, ``arch_options={...}``);
    ``config`` a TOML file. As on the command line, the layers are ganforge's defaults < the recipes that
    apply < the loss's own settings < ``fast`` (measured on the device) < ``config`` < ``settings``.
    ``callbacks``: :class:`ganforge.Callback` objects run beside the built-in ones.
    """
    from ganforge import layering
    from ganforge.plugins import get_registry, in_use, require
    from ganforge.rundir import read_record
    from ganforge.training import train as run_training

    if resume is not None:
        _no_config_with_resume(config)
        if overwrite:
            raise UsageError("--overwrite starts a new run; it cannot go with --resume")
        run_dir = Path(resume)
        cfg = layering.for_resume(run_dir, settings, source)
        require(get_registry(), in_use(read_record(run_dir).get("providers", {}), cfg), f"resuming {run_dir}")
        return run_training(cfg, run_dir, resume=True, progress=progress, callbacks=callbacks)
    cfg = layering.build(settings, config, fast, source=source, announce=announce)
    return run_training(cfg, progress=progress, overwrite=overwrite, callbacks=callbacks)


def config_for(config=None, *, resume=None, fast: bool = False, source: str = "the arguments of "
               "ganforge.config_for()", announce=None, **settings) -> tuple:
    """What :func:`train` with the same arguments would train with, without training or writing
    anything: ``(TrainConfig, origins)``, where ``origins`` names the layer that set each setting above
    ganforge's defaults (``{"lr_g": "dataset 'mnist'", "arch_options.width": "the arguments ..."}``).
    ``ganforge.layering.explain(*config_for(...))`` is ``ganforge train --print-config``'s text."""
    from ganforge import layering

    if resume is not None:
        _no_config_with_resume(config)
        return layering.for_resume_explained(resume, settings, source)
    return layering.build_explained(settings, config, fast, source=source, announce=announce)


def _no_config_with_resume(config) -> None:
    if config is not None:
        raise UsageError("--resume continues a run with its own config; drop --config")


def load(run, checkpoint: str | None = None, raw: bool = False):
    """``(generator, config)`` of a run: its EMA generator unless ``raw`` (or the run has none), in eval
    mode on the CPU, from the latest checkpoint or ``checkpoint`` (``best``, ``step-N``)."""
    from ganforge.models import load_run

    G, _, cfg = load_run(run, checkpoint, raw)
    return G, cfg


def export(run, format: str = "all", out=None, checkpoint: str | None = None, raw: bool = False,
           runtime=None, overwrite: bool = False, backend: str = "both") -> list:
    """Export a run's generator as ONNX and/or TorchScript (``format``: onnx, torchscript or all), each
    verified against PyTorch, or as a web page folder (``web``: ``runtime`` is an npm install of
    onnxruntime-web, fetched once when None; ``backend`` both, wasm or webgpu; a non-empty ``out`` is
    replaced only with ``overwrite``; ``run`` may also be an exported .onnx file). ``[(path, max_abs_diff), ...]``."""
    if format not in FORMAT_CHOICES:
        raise UsageError(f"unknown format '{format}'; use one of: {', '.join(FORMAT_CHOICES)}")
    if format != "web" and (runtime is not None or overwrite or backend != "both"):
        raise UsageError("--runtime, --overwrite and --backend are for --format web; drop them or add --format web")
    if out is not None and format == "all":
        format = {".onnx": "onnx", ".pt": "torchscript"}.get(Path(out).suffix, "")
        if not format:
            raise UsageError(f"cannot tell the format from {Path(out).name}: use a .onnx or .pt name, or --format")
    from ganforge.exporting import export as run_export

    formats = ("onnx", "torchscript") if format == "all" else (format,)
    return run_export(run, formats, out, checkpoint, raw, runtime, overwrite, backend)


def evaluate(source, *, plot=None, **options) -> dict:
    """Metrics of a run's generator or an exported file (``ganforge evaluate``'s options as keywords:
    ``dataset``, ``metrics``, ``extractor``, ``samples``, ``seed``, ``checkpoint``, ``raw``, ...);
    ``plot`` writes the samples as a picture."""
    from ganforge.evaluation import evaluate as run_evaluation, plot as write_plot

    report = run_evaluation(source, **options)
    if plot is not None:
        write_plot(report.evaluator, Path(plot), f"{Path(source).name} vs {report.dataset}")
    return report.metrics

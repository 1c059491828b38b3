"""Evaluation: a generator's samples against a dataset, in batches, deterministic for a seed.

:class:`Evaluator` holds the reference side (real samples, or their features, computed
once) and scores any ``generate(z, labels) -> samples`` callable: a run's generator during
training, or an exported ONNX/TorchScript file. The formulas are in :mod:`ganforge.metrics`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ganforge import metrics, rundir
from ganforge.contracts import forked_rng
from ganforge.errors import UsageError
from ganforge.interfaces import StreamingData, to_float
from ganforge.metrics import FEATURE_GROUPS, GROUPS, parse_metrics
from ganforge.plugins import get_registry

TOY_SAMPLES = 2500      # VEEGAN and PacGAN score 2,500 samples
IMAGE_SAMPLES = 10_000  # at most this many real and generated images (fewer when the dataset is smaller)
MODE_SAMPLES = 26_000   # Stacked-MNIST's modes are counted on 26,000 samples (VEEGAN, PacGAN)
INTRA_SAMPLES = 100     # the default metrics include intra-class FID from this many samples of each class


class Evaluator:
    """Scores generators against ``reference`` data.

    ``groups``: names from GROUPS, or None for the data's defaults (toy metrics for Gaussian
    mixtures; modes, reverse KL and FID for stacked data; every feature metric the extractor
    supports for other data, and intra-class FID for a class-conditional generator where the samples
    give each class at least INTRA_SAMPLES). ``extractor``: a registered feature extractor (default: classifier
    for stacked data, inception for other images, raw for vectors), built with ``extractor_options``.
    ``samples``: how many generated (and real) samples; ``seed`` fixes latents and subsets.
    """

    def __init__(self, reference, groups: list | None = None, extractor: str | None = None,
                 samples: int | None = None, seed: int = 0, device="cpu", batch_size: int = 500,
                 registry=None, extractor_options: dict | None = None):
        self.reference, self.seed, self.device, self.batch_size = reference, seed, torch.device(device), batch_size
        toy_data = getattr(reference, "modes", None) is not None
        stacked = getattr(reference, "stacked_from", None) is not None
        defaults = groups is None  # then class metrics are reported only where the extractor can give them
        if defaults:
            groups = ["toy"] if toy_data else ["modes", "fid"] if stacked else [*FEATURE_GROUPS, "is", "class-kl"]
        if "toy" in groups and not toy_data:
            raise UsageError("the toy metrics need a Gaussian-mixture dataset (ring, grid); "
                             f"choose from {', '.join(g for g in GROUPS if g != 'toy')}")
        self.groups, self.defaults = groups, defaults
        self.samples = samples or (TOY_SAMPLES if "toy" in groups else MODE_SAMPLES if stacked
                                   else min(IMAGE_SAMPLES, len(reference)))
        if self.samples < 2:
            raise UsageError(f"evaluation needs at least 2 samples, got {self.samples}")
        labels = getattr(reference, "num_classes", None)
        if defaults and not toy_data and not stacked and labels and self.samples >= INTRA_SAMPLES * labels:
            groups.insert(len(FEATURE_GROUPS), "intra-fid")  # scored when the generator is class-conditional
        if "intra-fid" in groups and labels is None:
            raise UsageError("metric 'intra-fid' compares each class's samples: it needs a labelled dataset")
        self.details = {}  # per-class numbers of the last call: {"intra_fid": [class 0's, class 1's, ...]}
        self.extractor = self.real_features = self.extractor_name = None
        if any(g != "toy" for g in groups):
            name = extractor or ("classifier" if stacked else "inception" if reference.is_image else "raw")
            self.extractor_name = name
            with forked_rng(self.device):  # building it (weights drawn, or a network trained) leaves a run's draws
                self.extractor = (registry or get_registry()).create("feature_extractors", name, reference,
                                                                    self.device, **(extractor_options or {}))
            # real features for the feature metrics; without them one batch tells whether there are logits
            compared = any(g in (*FEATURE_GROUPS, "intra-fid") for g in self.groups)
            real, self.real_labels = self.real_samples(min(self.samples if compared else self.batch_size,
                                                           len(reference)))
            self.real_features, real_logits = self._features(lambda i: real[i], len(real))
            classes = self.extractor.data_classes is not None
            supported = {"is": real_logits is not None, "class-kl": classes, "modes": classes}
            for group, ok in supported.items():
                if group in self.groups and not ok:
                    if not defaults:
                        raise UsageError(f"metric '{group}' needs an extractor that predicts classes"
                                         f"{' of the dataset' if group != 'is' else ''}; "
                                         f"'{name}' does not (try --extractor classifier)")
                    self.groups = [g for g in self.groups if g != group]

    def real_samples(self, n: int) -> tuple:
        """``n`` real samples and their labels (or None), a seeded random subset (all of them when n is the
        dataset's size)."""
        index = torch.randperm(len(self.reference), generator=torch.Generator().manual_seed(self.seed))[:n]
        if isinstance(self.reference, StreamingData):
            items = [self.reference.dataset[int(i)] for i in index]
            labels = torch.tensor([int(y) for _, y in items]) if self.reference.num_classes else None
            return torch.stack([to_float(x) for x, _ in items]), labels
        x, labels = self.reference.batch(index.to(self.reference.x.device))
        return x.cpu(), None if labels is None else labels.cpu()

    @torch.no_grad()
    def _features(self, batch_of, n: int):
        """Features (and logits, or None) of samples ``batch_of(slice)``, extracted batch by batch."""
        features, logits = [], []
        for start in range(0, n, self.batch_size):
            f, lg = self.extractor(batch_of(slice(start, start + self.batch_size)).to(self.device))
            features.append(f.float().cpu())
            if lg is not None:
                logits.append(lg.float().cpu())
        return torch.cat(features), (torch.cat(logits) if logits else None)

    def latents(self, latent_dim: int, num_classes: int | None):
        """The fixed evaluation latents (and class labels in equal shares when conditional)."""
        z = torch.randn(self.samples, latent_dim, generator=torch.Generator().manual_seed(self.seed))
        labels = torch.arange(self.samples) % num_classes if num_classes else None
        return z, labels

    @torch.no_grad()
    def generate(self, generate, latent_dim: int, num_classes: int | None) -> torch.Tensor:
        """All evaluation samples from ``generate(z, labels)``, in batches, on the CPU."""
        z, labels = self.latents(latent_dim, num_classes)
        out = []
        for start in range(0, self.samples, self.batch_size):
            part = slice(start, start + self.batch_size)
            x = generate(z[part], None if labels is None else labels[part])
            out.append(torch.as_tensor(x).float().cpu())  # a tensor, or a NumPy array from onnxruntime
        return torch.cat(out)

    def __call__(self, generate, latent_dim: int, num_classes: int | None = None) -> dict:
        """The metrics of the samples ``generate(z, labels)`` makes from the evaluation latents."""
        if "intra-fid" in self.groups and num_classes not in (None, self.reference.num_classes):
            raise UsageError(f"metric 'intra-fid': the generator draws {num_classes} classes, the dataset has "
                             f"{self.reference.num_classes}; evaluate against the dataset it was trained on")
        x = self.generate(generate, latent_dim, num_classes)
        return self.score(x, self.latents(latent_dim, num_classes)[1])

    def score(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        """The metrics of the samples ``x`` (float32, on the CPU), of the classes ``labels`` when they were
        asked for a class (needed by intra-fid)."""
        if "intra-fid" in self.groups and labels is None and not self.defaults:
            raise UsageError("metric 'intra-fid' compares each class's samples: it needs a class-conditional "
                             "generator")
        if tuple(x.shape[1:]) != tuple(self.reference.shape):
            raise UsageError(f"the generator makes samples of shape {tuple(x.shape[1:])}, the dataset has "
                             f"{tuple(self.reference.shape)}; evaluate against the dataset it was trained on")
        if not torch.isfinite(x).all():
            raise UsageError("the generator produced non-finite values (NaN or inf); metrics are meaningless")
        self.last_samples, self.details = x, {}
        out = {}
        if "toy" in self.groups:
            out.update(metrics.toy_metrics(x.numpy(), np.asarray(self.reference.modes), self.reference.mode_std))
        if self.extractor is not None:
            features, logits = self._features(lambda i: x[i], len(x))
            out.update(metrics.feature_metrics(features, self.real_features, self.groups, seed=self.seed))
            if "is" in self.groups:
                out["inception_score"] = metrics.inception_score(logits, seed=self.seed)
            if "class-kl" in self.groups:
                out["class_kl"] = metrics.class_kl(logits.argmax(1).numpy(), self.extractor.data_classes)
            if "modes" in self.groups:
                out.update(metrics.mode_metrics(logits.argmax(1).numpy(), self.extractor.data_classes))
            if "intra-fid" in self.groups and labels is not None:
                per_class = metrics.intra_class_fid(features, labels, self.real_features, self.real_labels,
                                                    self.reference.num_classes)
                out["intra_fid"], self.details["intra_fid"] = float(np.mean(per_class)), per_class
        return out


def for_training(cfg, data, num_classes: int | None, device, registry) -> Evaluator:
    """The Evaluator of a run's ``--eval-every`` (``cfg``: its TrainConfig); UsageError when ``--keep-best``
    names a metric it does not compute, or intra-fid is asked of an unconditional run."""
    evaluator = Evaluator(data, parse_metrics(cfg.eval_metrics), cfg.eval_extractor, cfg.eval_samples, cfg.seed,
                          device, registry=registry)
    if not num_classes and "intra-fid" in evaluator.groups:
        if not evaluator.defaults:
            raise UsageError("--eval-metrics intra-fid compares each class's samples: it needs a class-conditional "
                             "run (drop --unconditional, or drop intra-fid)")
        evaluator.groups.remove("intra-fid")  # never scored here: --keep-best cannot name it
    if cfg.keep_best and not any(cfg.keep_best in GROUPS[g] for g in evaluator.groups):
        raise UsageError(f"--keep-best {cfg.keep_best} is not among the metrics evaluated "
                         f"({', '.join(evaluator.groups)}); add it to --eval-metrics")
    return evaluator


def plot(evaluator: Evaluator, path: Path, title: str) -> None:
    """The last evaluated samples: a scatter with the modes marked (2-D), a histogram (1-D), or a grid."""
    from ganforge import plotting

    x = evaluator.last_samples.numpy()
    real = modes = None
    if x.ndim != 4:
        real = evaluator.real_samples(min(2000, len(evaluator.reference)))[0].numpy()
        modes = None if evaluator.reference.modes is None else np.asarray(evaluator.reference.modes)
    plotting.samples_picture(x[:64] if x.ndim == 4 else x, real, modes, title=title).save(path)


@dataclass
class Report:
    """What :func:`evaluate` scored (``source``, described), against which ``dataset``, and the ``metrics``."""

    source: str
    dataset: str
    metrics: dict
    evaluator: Evaluator


def evaluate(source, dataset: str | None = None, data_root: str | None = None, data_options: dict | None = None,
             download: bool | None = None, metrics: str | None = None, extractor: str | None = None,
             extractor_options: dict | None = None, samples: int | None = None, seed: int = 0,
             checkpoint: str | None = None, raw: bool = False, device: str = "auto", batch_size: int = 500,
             registry=None) -> Report:
    """Score a run directory's generator (EMA unless ``raw``; ``checkpoint`` ``best`` or ``step-N``) or an
    exported ONNX/TorchScript file against ``dataset`` (default: the one it was trained on)."""
    from ganforge.config import COMMAND_LINE, TrainConfig, check_value, load_toml
    from ganforge.data import load_data
    from ganforge.device import resolve_device

    if samples is not None and samples < 2:
        raise UsageError(f"--samples must be at least 2, got {samples}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    groups = parse_metrics(metrics)
    registry = registry or get_registry()
    dev = resolve_device(device)
    source = Path(source)
    if source.is_dir():
        from ganforge.models import load_generator

        recorded = load_toml(source / rundir.CONFIG) if rundir.is_run(source) else {}
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
    if data_options:
        data["data_options"] = {**data.get("data_options", {}), **data_options}
    shape = meta["output_shape"]
    if len(shape) == 3:
        data["image_size"] = shape[-1]
    cfg = TrainConfig(**{k: check_value(k, v, COMMAND_LINE) for k, v in data.items()})
    reference = load_data(cfg.dataset, cfg.data_root, cfg.image_size, cfg.download, cfg.data_options,
                          registry=registry)
    evaluator = Evaluator(reference, groups, extractor, samples, seed, dev, batch_size, registry, extractor_options)
    results = evaluator(generate, meta["latent_dim"], meta.get("num_classes"))
    return Report(what, cfg.dataset, results, evaluator)


def format_results(results: dict, per_class: dict | None = None) -> str:
    """One metric per line; KID with its standard deviation and unit (x 1000); a metric with ``per_class``
    values (Evaluator.details) followed by them, class by class."""
    lines = []
    for k, v in results.items():
        if k == "kid":
            lines.append(f"{'kid x 1000':>16}  {v:.6g} ± {results.get('kid_std', math.nan):.2g}")
        elif k != "kid_std":
            lines.append(f"{k:>16}  {v:.6g}" if isinstance(v, float) else f"{k:>16}  {v}")
        if (per_class or {}).get(k):
            lines.append(f"{'per class':>16}  " + "  ".join(f"{c}: {x:.4g}" for c, x in enumerate(per_class[k])))
    return "\n".join(lines)

"""The formulas behind ``ganforge evaluate``, on samples and features; no models here.

- 2-D mixtures (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018): high-quality
  fraction, modes covered, reverse KL over modes.
- Features of images: FID, KID, precision/recall (through torch-fidelity, the field's
  reference implementation), density/coverage (Naeem et al. 2020).
- Features of a class-conditional generator's images: intra-class FID (the FID of each class's generated
  and real samples, and its mean over the classes, as StudioGAN reports it).
- Class predictions: Inception Score, the KL between predicted class frequencies and
  uniform, and the modes covered (Stacked-MNIST's measures: each of its 1,000 classes a mode).
"""
from __future__ import annotations

import math

import numpy as np

from ganforge.errors import UsageError

#: Metrics where larger is better; for every other metric smaller is better.
HIGHER_IS_BETTER = {"high_quality", "modes", "precision", "recall", "density", "coverage", "inception_score"}

#: Metric groups a user can ask for, and the numbers each one reports.
GROUPS = {
    "toy": ("modes", "high_quality", "reverse_kl"),
    "fid": ("fid",),
    "kid": ("kid",),  # x 1000, with its standard deviation over subsets as kid_std beside it
    "precision-recall": ("precision", "recall"),
    "density-coverage": ("density", "coverage"),
    "is": ("inception_score",),
    "class-kl": ("class_kl",),
    "modes": ("modes", "reverse_kl"),
    "intra-fid": ("intra_fid",),  # the mean over classes; each class's in Evaluator.details
}
FEATURE_GROUPS = ("fid", "kid", "precision-recall", "density-coverage")


def parse_metrics(text: str | None) -> list | None:
    """``"fid,kid"`` -> ["fid", "kid"]; None stays None (the defaults for the data)."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in GROUPS]
    if unknown or not names:
        raise UsageError(f"unknown metric {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(GROUPS)}")
    return names


def metric_direction(name: str, flag: str = "--keep-best") -> str:
    """"max" or "min" for a reported number (what ``flag`` improves); UsageError if unknown."""
    known = [m for group in GROUPS.values() for m in group]
    if name not in known:
        raise UsageError(f"unknown metric '{name}' for {flag}; choose from {', '.join(known)}")
    return "max" if name in HIGHER_IS_BETTER else "min"


def toy_metrics(samples: np.ndarray, modes: np.ndarray, std: float, batch: int = 4096) -> dict:
    """VEEGAN/PacGAN on a Gaussian mixture: a sample is high quality when within 3 std of its
    nearest mode; a mode is covered when it is the nearest mode of at least one high-quality
    sample; reverse KL is KL(generated || true) over modes, the generated mode distribution
    being where the high-quality samples fall and the true one uniform."""
    samples, modes = np.asarray(samples, dtype=np.float64), np.asarray(modes, dtype=np.float64)
    nearest, distance = [], []
    for i in range(0, len(samples), batch):  # bounded memory: batch x modes distances at a time
        d = np.linalg.norm(samples[i:i + batch, None, :] - modes[None], axis=2)
        nearest.append(d.argmin(1))
        distance.append(d.min(1))
    nearest, distance = np.concatenate(nearest), np.concatenate(distance)
    good = distance <= 3 * std
    counts = np.bincount(nearest[good], minlength=len(modes))
    return {"modes": int((counts > 0).sum()), "high_quality": float(good.mean()),
            "reverse_kl": kl_to_uniform(counts) if counts.sum() else math.inf}


def kl_to_uniform(counts) -> float:
    """KL(q || uniform) of the frequencies ``counts`` over len(counts) outcomes."""
    q = np.asarray(counts) / np.sum(counts)
    return float(sum(p * math.log(p * len(q)) for p in q if p > 0))


def feature_metrics(generated, real, names, seed: int = 0, batch: int = 2048) -> dict:
    """``names`` of fid, kid, precision-recall, density-coverage between two feature sets
    ``[N, F]`` (torch tensors). FID, KID and precision/recall are torch-fidelity's
    (``*_features_to_metric``), so numbers match the published tools; KID (and ``kid_std``, its standard
    deviation over subsets) is reported x 1000."""
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    generated, real = generated.detach().double().cpu(), real.detach().double().cpu()
    out = {}
    if "fid" in names:
        out["fid"] = fid(generated, real)
    if "kid" in names:
        kid = kid_features_to_metric(generated, real, kid_subsets=100, rng_seed=seed, verbose=False,
                                     kid_subset_size=min(1000, len(generated), len(real)))
        # x 1000, as the papers that use it report it (Karras et al. 2020: "KID x 10^3")
        out["kid"], out["kid_std"] = (1000 * kid["kernel_inception_distance_mean"],
                                      1000 * kid["kernel_inception_distance_std"])
    if "precision-recall" in names:
        prc = prc_features_to_metric(generated.float(), real.float(), prc_neighborhood=3, prc_batch_size=batch,
                                     save_cpu_ram=True, verbose=False)
        out["precision"], out["recall"] = prc["precision"], prc["recall"]
    if "density-coverage" in names:
        out.update(density_coverage(generated.float(), real.float(), batch=batch))
    return out


def fid(generated, real) -> float:
    """The Frechet distance of two feature sets ``[N, F]`` (torch tensors): torch-fidelity's, on their means and
    covariances (also for 1-D features)."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    stats = [{"mu": f.double().mean(0).numpy(), "sigma": np.atleast_2d(np.cov(f.double().numpy(), rowvar=False))}
             for f in (generated, real)]
    return fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]


def intra_class_fid(generated, generated_labels, real, real_labels, num_classes: int) -> list:
    """The FID of each class: class c's generated features against class c's real features (StudioGAN's
    intra-class FID; its mean over the classes is the reported number). UsageError when a class has fewer
    than 2 samples on either side."""
    import torch

    per_class = []
    for c in range(num_classes):
        g, r = generated[torch.as_tensor(generated_labels) == c], real[torch.as_tensor(real_labels) == c]
        if min(len(g), len(r)) < 2:
            raise UsageError(f"intra-class FID needs at least 2 generated and 2 real samples of every class; class {c} "
                             f"has {len(g)} and {len(r)}: raise --samples")
        per_class.append(fid(g, r))
    return per_class


def density_coverage(generated, real, k: int = 5, batch: int = 2048) -> dict:
    """Naeem et al. 2020. With r_i the distance from real sample i to its k-th nearest real
    neighbour: density = mean over generated samples of (number of real balls holding it) / k;
    coverage = fraction of real balls holding at least one generated sample."""
    import torch

    radii = torch.cat([torch.cdist(chunk, real).kthvalue(k + 1, dim=1).values for chunk in real.split(batch)])
    inside = torch.zeros(len(real), dtype=torch.bool)
    count = 0.0
    for chunk in generated.split(batch):  # bounded memory: batch x len(real) distances at a time
        within = torch.cdist(chunk, real) <= radii[None]
        count += within.sum().item()
        inside |= within.any(dim=0)
    return {"density": count / (k * len(generated)), "coverage": inside.float().mean().item()}


def inception_score(logits, splits: int = 10, seed: int = 0) -> float:
    """exp E[KL(p(y|x) || p(y))] of class logits, the mean over ``splits`` (torch-fidelity's)."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    return isc_features_to_metric(logits.detach().cpu(), splits=splits, rng_seed=seed)["inception_score_mean"]


def mode_metrics(predicted, num_classes: int) -> dict:
    """Stacked-MNIST (VEEGAN, PacGAN), each class a mode: ``modes``, the classes predicted for at least one
    sample, and ``reverse_kl``, KL(predicted class frequencies || uniform)."""
    counts = np.bincount(np.asarray(predicted), minlength=num_classes)
    return {"modes": int((counts > 0).sum()), "reverse_kl": kl_to_uniform(counts)}


def class_kl(predicted, num_classes: int) -> float:
    """KL(generated class frequencies || uniform): 0 when every class is generated equally often,
    log(num_classes) when only one is (VEEGAN/PacGAN's Stacked-MNIST measure)."""
    return kl_to_uniform(np.bincount(np.asarray(predicted), minlength=num_classes))

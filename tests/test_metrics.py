"""The metric formulas: toy metrics on exact mixtures, FID/KID/precision-recall/density-coverage
against direct implementations, Inception Score and class KL at their known extremes."""
import math

import numpy as np
import pytest
import torch

from ganforge.builtin.datasets import grid, grid_modes, ring, ring_modes
from ganforge.errors import UsageError
from ganforge.metrics import (class_kl, density_coverage, feature_metrics, inception_score, intra_class_fid,
                              metric_direction, mode_metrics, parse_metrics, toy_metrics)


@pytest.mark.parametrize("make, modes, std, count", [(ring, ring_modes(), 0.02, 8), (grid, grid_modes(), 0.05, 25)])
def test_real_mixture_samples_score_99_percent_and_every_mode(make, modes, std, count):
    result = toy_metrics(make(n=2500, seed=1).x.numpy(), modes.numpy(), std)
    assert result["modes"] == count
    assert 0.98 <= result["high_quality"] <= 1.0  # 1 - exp(-4.5) = 98.9% of a 2-D Gaussian lies within 3 std
    assert result["reverse_kl"] < 0.02


def test_a_collapsed_generator_scores_one_mode_and_reverse_kl_log_k():
    modes = ring_modes().numpy()
    samples = modes[3] + 0.01 * np.random.default_rng(0).standard_normal((2500, 2))
    result = toy_metrics(samples, modes, 0.02)
    assert result == {"modes": 1, "high_quality": 1.0, "reverse_kl": pytest.approx(math.log(8))}


def test_reverse_kl_and_high_quality_follow_their_definitions():
    modes = ring_modes().numpy()
    # 300 at mode 0, 100 at mode 1, 100 midway between modes 0 and 1 (low quality: ignored by the KL)
    samples = np.concatenate([np.repeat(modes[:1], 300, 0), np.repeat(modes[1:2], 100, 0),
                              np.repeat((modes[:1] + modes[1:2]) / 2, 100, 0)])
    result = toy_metrics(samples, modes, 0.02, batch=7)  # a batch that does not divide the samples
    p = np.array([0.75, 0.25])
    assert result["modes"] == 2
    assert result["high_quality"] == pytest.approx(0.8)
    assert result["reverse_kl"] == pytest.approx(float((p * np.log(p * 8)).sum()))


def test_samples_far_from_every_mode_cover_nothing():
    result = toy_metrics(np.full((10, 2), 50.0), ring_modes().numpy(), 0.02)
    assert result["modes"] == 0 and result["high_quality"] == 0.0 and result["reverse_kl"] == math.inf


def gaussian_features(n, dim=8, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g) + shift


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    a = gaussian_features(2000)
    assert abs(feature_metrics(a, a, ["fid"])["fid"]) < 1e-6
    near = feature_metrics(a, gaussian_features(2000, seed=1), ["fid"])["fid"]
    far = feature_metrics(a, gaussian_features(2000, shift=1.0, seed=1), ["fid"])["fid"]
    assert near < 0.1
    assert far == pytest.approx(8.0, rel=0.1)  # |mean difference|^2 = 8 x 1^2, same covariance
    assert far > 50 * near


def test_fid_matches_the_frechet_distance_formula():
    a, b = gaussian_features(500, 4), gaussian_features(500, 4, seed=3) * 2 + 0.5
    mu1, mu2 = a.double().mean(0).numpy(), b.double().mean(0).numpy()
    s1, s2 = np.cov(a.double().numpy(), rowvar=False), np.cov(b.double().numpy(), rowvar=False)
    # Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), the symmetric form, through eigh
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    tr_covmean = np.sqrt(np.linalg.eigvalsh(root1 @ s2 @ root1)).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    assert feature_metrics(a, b, ["fid"])["fid"] == pytest.approx(expected, rel=1e-6)


def test_intra_class_fid_is_each_class_fid_by_hand():
    """Two classes of 1-D features, three samples a side: FID = (mu1 - mu2)^2 + (s1 - s2)^2 in one dimension
    (sample variances, ddof 1); generated and real samples are matched by their own labels, whatever the order."""
    generated = torch.tensor([[0.0], [1.0], [2.0], [10.0], [12.0], [14.0]])
    gen_labels = torch.tensor([0, 0, 0, 1, 1, 1])
    real = torch.tensor([[11.0], [0.0], [11.0], [0.0], [4.0], [11.0]])
    real_labels = torch.tensor([1, 0, 1, 0, 0, 1])
    per_class = intra_class_fid(generated, gen_labels, real, real_labels, 2)
    # class 0: generated 0, 1, 2 (mean 1, sd 1), real 0, 0, 4 (mean 4/3, sd sqrt(16/3))
    # class 1: generated 10, 12, 14 (mean 12, sd 2), real 11, 11, 11 (mean 11, sd 0)
    expected = [(1 - 4 / 3) ** 2 + (1 - math.sqrt(16 / 3)) ** 2, 1 + 4]
    assert per_class == pytest.approx(expected, rel=1e-6)
    assert intra_class_fid(real, real_labels, real, real_labels, 2) == pytest.approx([0, 0], abs=1e-9)
    with pytest.raises(UsageError, match="intra-class FID needs at least 2 generated and 2 real samples of every "
                                         "class; class 2 has 0 and 0: raise --samples"):
        intra_class_fid(generated, gen_labels, real, real_labels, 3)


def unbiased_mmd2(x, y, biased=False):
    """MMD^2 with KID's kernel k(a, b) = (a.b / dim + 1)^3, straight from the definition."""
    x, y = x.double().numpy(), y.double().numpy()
    k = lambda a, b: (a @ b.T / x.shape[1] + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m = len(x)
    if biased:
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


def test_kid_is_the_unbiased_mmd_and_near_zero_on_equal_distributions():
    a, b = gaussian_features(300), gaussian_features(300, seed=1)
    # with subsets as large as the sets, every subset is the whole set: KID is the unbiased MMD^2
    assert feature_metrics(a, b, ["kid"])["kid"] == pytest.approx(1000 * unbiased_mmd2(a, b), rel=1e-6)  # x 1000
    pairs = [(gaussian_features(300, seed=2 * s), gaussian_features(300, seed=2 * s + 1)) for s in range(16)]
    same = np.array([feature_metrics(x, y, ["kid"])["kid"] for x, y in pairs])
    biased = np.array([1000 * unbiased_mmd2(x, y, biased=True) for x, y in pairs])
    standard_error = same.std(ddof=1) / np.sqrt(len(same))
    assert min(same) < 0 < max(same)                         # estimates of 0 fall on both sides
    assert abs(same.mean()) < 4 * standard_error             # consistent with an expectation of 0
    assert biased.mean() > same.mean() + 8 * standard_error  # the biased estimator is clearly above 0
    shifted = feature_metrics(a, gaussian_features(300, shift=0.5, seed=1), ["kid"])["kid"]
    assert shifted > 8 * same.std()


def test_precision_recall_density_coverage_at_their_extremes():
    a = gaussian_features(600)
    same = feature_metrics(a, a, ["precision-recall", "density-coverage"])
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = feature_metrics(a + 100, a, ["precision-recall", "density-coverage"])
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # most generated samples collapsed onto one real sample: precision stays, recall and coverage drop
    collapsed = torch.cat([a[:100], a[:1].repeat(500, 1)])
    partial = feature_metrics(collapsed, a, ["precision-recall", "density-coverage"])
    assert partial["precision"] == 1.0 and partial["recall"] < 0.95 and partial["coverage"] < 0.7


def test_density_counts_real_balls_per_generated_sample():
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    # k = 1: radii are the distances to the nearest other real sample: 1, 1, 1, 8
    out = density_coverage(torch.tensor([[0.5], [9.0]]), real, k=1, batch=1)
    # 0.5 lies in the balls of 0, 1 (and not 2: distance 1.5 > 1), and of 10 (9.5 > 8: no); 9.0 lies in 10's ball
    assert out == {"density": pytest.approx(3 / 2), "coverage": pytest.approx(3 / 4)}


def test_mode_metrics_count_modes_and_the_reverse_kl():
    assert mode_metrics(np.arange(26_000) % 1000, 1000) == {"modes": 1000, "reverse_kl": pytest.approx(0.0)}
    assert mode_metrics(np.full(26_000, 7), 1000) == {"modes": 1, "reverse_kl": pytest.approx(math.log(1000))}
    half = mode_metrics(np.arange(26_000) % 500, 1000)  # half the modes, evenly: KL = log 2
    assert half == {"modes": 500, "reverse_kl": pytest.approx(math.log(2))}


def test_inception_score_and_class_kl_at_their_extremes():
    confident = torch.eye(10).repeat(50, 1) * 50   # every class, each predicted with certainty
    assert inception_score(confident, splits=1) == pytest.approx(10, rel=1e-6)
    assert inception_score(confident[::10], splits=1) == pytest.approx(1.0)  # one class only
    assert inception_score(torch.zeros(500, 10)) == pytest.approx(1.0)      # no confidence
    assert class_kl(np.arange(500) % 10, 10) == pytest.approx(0.0)
    assert class_kl(np.zeros(500, dtype=int), 10) == pytest.approx(math.log(10))


def test_metric_names_are_checked_with_the_choices_listed():
    assert parse_metrics("fid, kid") == ["fid", "kid"]
    with pytest.raises(UsageError, match="unknown metric 'fdi'; choose from toy, fid, kid"):
        parse_metrics("fdi")
    assert metric_direction("fid") == "min" and metric_direction("high_quality") == "max"
    with pytest.raises(UsageError, match="unknown metric 'accuracy' for --keep-best; choose from modes"):
        metric_direction("accuracy")


def test_kid_is_printed_with_its_unit_and_its_standard_deviation_beside_it():
    from ganforge.evaluation import format_results
    from ganforge.metrics import GROUPS

    assert format_results({"fid": 1.5, "kid": 0.352, "kid_std": 0.0123, "modes": 8}).splitlines() == [
        "             fid  1.5", "      kid x 1000  0.352 ± 0.012", "           modes  8"]
    assert format_results({"intra_fid": 2.5}, {"intra_fid": [2.0, 3.0]}).splitlines() == [
        "       intra_fid  2.5", "       per class  0: 2  1: 3"]
    assert GROUPS["kid"] == ("kid",)  # kid_std is not a metric of its own (--keep-best, --eval-metrics)

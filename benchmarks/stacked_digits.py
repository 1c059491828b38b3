"""Where a Stacked-MNIST generator's reverse KL comes from: per channel, how often each digit is drawn
and how sure the digit classifier (the one `ganforge evaluate` uses) is of it, against real stacks.

    python benchmarks/stacked_digits.py ../shared/data runs/stacked-0 [RUN ...]

For each (26,000 samples, 3 channels each; real: 26,000 other stacks): the classifier's mean top-class
probability, the share of channels below 0.9 and 0.5, the KL of the digit frequencies to uniform, and
the frequencies x 10 (1.000: a tenth of the channels).
"""
import sys

import numpy as np
import torch

import ganforge
from ganforge.data import load_data
from ganforge.evaluation import Evaluator
from ganforge.interfaces import to_float
from ganforge.metrics import kl_to_uniform

SAMPLES, BATCH = 26_000, 500


def digits(classify, batches) -> tuple:
    """The digit and its probability of every channel of every batch."""
    found = []
    for x in batches:
        _, logits = classify(x.reshape(-1, 1, *x.shape[2:]))  # the Classifier runs without grad, in float
        found.append(logits.float().softmax(1).max(1))
    return (np.concatenate([d.numpy() for _, d in found]), np.concatenate([p.numpy() for p, _ in found]))


def report(name: str, digit, sure) -> None:
    counts = np.bincount(digit, minlength=10)
    freq, kl = counts / len(digit), kl_to_uniform(counts)
    print(f"{name:28} sure {sure.mean():.3f}  <0.9 {(sure < 0.9).mean():.3f}  <0.5 {(sure < 0.5).mean():.3f}  "
          f"digit KL {kl:.4f}  freq x10 " + " ".join(f"{f * 10:.2f}" for f in freq))


def main(root: str, runs: list) -> None:
    classify = Evaluator(load_data("stacked-mnist", root, options={"split": "test"})).extractor.inner
    real = load_data("stacked-mnist", root, options={"split": "test", "n": SAMPLES, "seed": 1})
    report("real stacks", *digits(classify, (to_float(x) for x in real.x.split(BATCH))))
    for run in runs:
        G = ganforge.load(run)[0]
        g = torch.Generator().manual_seed(0)
        fakes = (G(torch.randn(BATCH, G.latent_dim, generator=g)) for _ in range(SAMPLES // BATCH))
        with torch.no_grad():  # G runs as digits() draws from fakes
            report(run[-28:], *digits(classify, fakes))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])

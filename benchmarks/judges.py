"""MNIST generators under every judge: two classifiers trained on the digit labels (another architecture,
seed and split each) and an autoencoder trained without labels, each reporting every metric it can
(FID, intra-class FID, precision/recall, density/coverage; the classifiers also IS and class KL),
beside the real-vs-real floor: other real t10k images, with their labels, against the same real images.

    python benchmarks/judges.py ../shared/data runs/mnist-0 runs/mnist-1:step-3000 [--raw] [--per-class]
    python benchmarks/judges.py ../shared/data runs/mnist-0 --grid rows.png   # a real and a generated row per class
    python benchmarks/judges.py ../shared/data runs/mnist-u --unsure unsure.png   # how often the classifier is unsure

RUN[:CHECKPOINT] scores that checkpoint (default: the latest), its EMA generator unless --raw (--raw and
the EMA: --both). The judges and the floor are also what `benchmarks/quality.py --mnist` reports.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

#: The judges: (extractor, options). The classifiers share one training signal, the labels; the
#: autoencoder shares none with them.
JUDGES = {"small CNN": ("classifier", {}), "strided CNN, seed 1": ("classifier", {"net": "strided", "seed": 1}),
          "autoencoder": ("autoencoder", {})}
#: What each table shows, in order (a judge without class predictions leaves IS and class KL blank). Not KID:
#: its cubic kernel assumes Inception's feature scale, and in the classifiers' it swings by thousands (x 1000)
#: between real-vs-real and generated sets, either sign.
COLUMNS = [("fid", "{:.2f}"), ("intra_fid", "{:.2f}"), ("precision", "{:.3f}"),
           ("recall", "{:.3f}"), ("density", "{:.3f}"), ("coverage", "{:.3f}"), ("inception_score", "{:.2f}"),
           ("class_kl", "{:.4f}")]


def make_judges(root: str, samples: int, seed: int = 0) -> tuple:
    """``(evaluators, floor)``: an Evaluator per judge (``samples`` generated against as many real t10k
    images, the default metrics: intra-FID for class-conditional generators, IS and class KL where the judge
    predicts classes), and each judge's scores of ``samples`` other real images, with their labels
    (disjoint from the evaluators' real ones), with the per-class intra-FIDs under ``"per_class"``."""
    from ganforge.data import load_data
    from ganforge.evaluation import Evaluator

    data = load_data("mnist", root, options={"split": "test"})
    evaluators = {name: Evaluator(data, None, extractor, samples, seed=seed, extractor_options=options)
                  for name, (extractor, options) in JUDGES.items()}
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    other, labels = data.batch(order[samples:2 * samples])
    floor = {name: {**ev.score(other, labels), "per_class": ev.details.get("intra_fid")}
             for name, ev in evaluators.items()}
    return evaluators, floor


def judge(evaluators: dict, G) -> dict:
    """Each judge's scores of the generator ``G`` (class-conditional: classes in equal shares)."""
    out = {}
    for name, ev in evaluators.items():
        out[name] = {**ev(G, G.latent_dim, G.num_classes), "per_class": ev.details.get("intra_fid")}
    return out


def print_tables(evaluators: dict, rows: list, per_class: bool = False) -> None:
    """One table per judge: a row per ``{"name", "scores": {judge: metrics}}``, the floor first."""
    for name, ev in evaluators.items():
        print(f"\n{name}: {ev.extractor.description}")
        print(f"{'':34}" + "".join(f"{key[:9]:>10}" for key, _ in COLUMNS))
        for row in rows:
            score = row["scores"][name]
            print(f"{row['name'][:34]:34}" + "".join(
                f"{fmt.format(score[key]) if key in score else '':>10}" for key, fmt in COLUMNS))
            if per_class and score.get("per_class"):
                print(f"{'  intra-FID per class':34}" + " ".join(f"{v:.1f}" for v in score["per_class"]))


def class_rows(G, data, picture: str, per_class: int = 12, seed: int = 0) -> None:
    """For each class, a row of real digits above a row of G's (``per_class`` each, fixed latents)."""
    from ganforge.plotting import image_grid

    g = torch.Generator().manual_seed(seed)
    rows = []
    for c in range(G.num_classes):
        real = data.x[data.labels == c][torch.randperm(int((data.labels == c).sum()), generator=g)[:per_class]]
        z = torch.randn(per_class, G.latent_dim, generator=g)
        with torch.no_grad():
            fake = G(z, torch.full((per_class,), c))
        rows += [real.float() / 127.5 - 1, fake.float()]
    image_grid(torch.cat(rows).numpy(), nrow=per_class).save(picture)


def unsure(G, evaluator, picture: str, per_row: int = 16) -> None:
    """How often the judge's classifier is unsure of real digits and of G's (largest class probability below
    0.5, 0.9, 0.99), and rows of random real, random generated, least sure real and least sure generated."""
    from ganforge.plotting import image_grid

    real = evaluator.real_samples(evaluator.samples)[0]
    fake = evaluator.generate(G, G.latent_dim, G.num_classes)
    sure = {name: evaluator._features(lambda i: x[i], len(x))[1].softmax(1).max(1).values
            for name, x in (("real", real), ("generated", fake))}
    for t in (0.5, 0.9, 0.99):
        shares = ", ".join(f"{n} {(p < t).float().mean():.3f}" for n, p in sure.items())
        print(f"largest class probability < {t}: {shares}")
    rows = [real[:per_row], fake[:per_row], real[sure["real"].argsort()[:per_row]],
            fake[sure["generated"].argsort()[:per_row]]]
    image_grid(torch.cat(rows).numpy(), nrow=per_row).save(picture)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="the directory holding MNIST/raw")
    parser.add_argument("runs", nargs="+", metavar="RUN[:CHECKPOINT]")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--raw", action="store_true", help="the raw generator instead of the EMA one")
    parser.add_argument("--both", action="store_true", help="the EMA and the raw generator")
    parser.add_argument("--per-class", action="store_true", help="also each class's intra-FID")
    parser.add_argument("--grid", metavar="PNG", help="real and generated rows per class of the first run")
    parser.add_argument("--unsure", metavar="PNG", help="how often the small CNN is unsure of the first run's "
                        "digits and of real ones, with rows of each")
    parser.add_argument("--json", help="write every row's numbers to this file")
    args = parser.parse_args()
    import ganforge
    from ganforge.data import load_data

    evaluators, floor = make_judges(args.root, args.samples)
    rows = [{"name": "real vs real (floor)", "scores": floor}]
    for spec in args.runs:
        run, _, checkpoint = spec.partition(":")
        for raw in ([False, True] if args.both else [args.raw]):
            G = ganforge.load(run, checkpoint or None, raw=raw)[0]
            rows.append({"name": f"{spec}{' raw' if raw else ''}", "scores": judge(evaluators, G)})
            if args.grid and len(rows) == 2:
                class_rows(G, load_data("mnist", args.root, options={"split": "test"}), args.grid)
            if args.unsure and len(rows) == 2:
                unsure(G, evaluators["small CNN"], args.unsure)
    print(f"MNIST t10k: {args.samples} samples against {args.samples} real")
    print_tables(evaluators, rows, args.per_class)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()

"""Mode coverage and sample quality on the toy mixtures, beside the published tables.

Trains each built-in loss on `ring` and `grid` with ganforge's defaults (what `ganforge train
--dataset ring --loss L` does: the dataset's and the loss's recommended settings) for several
seeds, scores the EMA generator on 2,500 samples (VEEGAN/PacGAN's protocol) and prints the mean
modes covered, high-quality %, reverse KL and wall time per run. Optionally MNIST rows: ganforge's
defaults on the MNIST t10k images for several seeds, scored by every judge of benchmarks/judges.py (two
independently trained MNIST classifiers and an autoencoder trained without labels: FID, intra-class FID,
precision/recall, density/coverage, IS, class KL) beside the real-vs-real floor; and Stacked-MNIST rows:
modes of 1,000 and reverse KL on 26,000 samples, each channel classified by the default classifier,
FID and precision/recall and density/coverage in its features, beside the real-data floor and the
published rows.

    python benchmarks/quality.py                          # every loss, ring and grid, 5 seeds
    python benchmarks/quality.py --losses bce --seeds 5 --jobs 2
    python benchmarks/quality.py --datasets "" --mnist ../shared/data            # the recipe's steps, 3 seeds
    python benchmarks/quality.py --datasets "" --mnist ../shared/data --mnist-seeds 1 --mnist-set '{"r1": 0}'
    python benchmarks/quality.py --datasets "" --stacked ../shared/data       # 10,000 steps, 3 seeds
    python benchmarks/quality.py --datasets "" --stacked ../shared/data --stacked-set '{"arch": "resnet"}'
    python benchmarks/quality.py --datasets "" --stacked ../shared/data --stacked-seeds 1 --stacked-first-seed 2 \
        --ema 0.2,0.5      # seed 2 alone, also scoring EMAs over the last 20% and 50% of the steps
    python benchmarks/quality.py --datasets "" --mnist ../shared/data --ema 0,0.05   # also the raw G, a shorter EMA
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # judges.py beside this file

from ganforge.interfaces import Callback
from ganforge.state import ema_decay_at, update_ema

# Published rows: (modes, high-quality %, reverse KL or None)
PUBLISHED = {
    "ring": [("GAN (VEEGAN T1)", 1, 99.3, None), ("Unrolled GAN (VEEGAN T1)", 7.6, 35.6, None),
             ("VEEGAN (VEEGAN T1)", 8, 52.9, None), ("WGAN-GP (GDPP T1)", 6.8, 59.6, None),
             ("GDPP (GDPP T1)", 8.0, 71.7, None), ("PacGAN2 (PacGAN T1)", 7.9, 95.6, 0.07)],
    "grid": [("GAN (VEEGAN T1)", 3.3, 0.5, None), ("VEEGAN (VEEGAN T1)", 24.6, 40.0, None),
             ("WGAN-GP (GDPP T1)", 24.2, 28.7, None), ("GDPP (GDPP T1)", 24.8, 68.5, None),
             ("PacGAN4 (PacGAN T1)", 24.8, 93.6, 0.04)],
}
TARGETS = {"ring": (8, 97.0, 0.02), "grid": (25, 95.0, 0.03)}

RUN_ONE = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
import ganforge
from ganforge.data import load_data
from ganforge.evaluation import Evaluator
loss, dataset, seed, _, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
settings = {"loss": loss, "dataset": dataset, "seed": seed, "out_dir": out, "name": f"{dataset}-{loss}-{seed}",
            "device": "cpu", "sample_every": 10**9, "checkpoint_every": 10**9, "log_every": 1000}
start = time.perf_counter()
run = ganforge.train(overwrite=True, **settings)  # the CLI's layers: the dataset's and loss's settings apply
seconds = time.perf_counter() - start
G, cfg = ganforge.load(run)
result = Evaluator(load_data(dataset, options=cfg.data_options), ["toy"], seed=1234)(G, G.latent_dim)
print(json.dumps({"loss": loss, "dataset": dataset, "seed": seed, "seconds": seconds, **result}))
"""


def run_one(loss: str, dataset: str, seed: int, threads: int, out: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", RUN_ONE, loss, dataset, str(seed), str(threads), out],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"loss": loss, "dataset": dataset, "seed": seed, "error": proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


RECIPE_STEPS = "the recipe's"
MNIST_GOAL = ("goal (conditional): fid <= 1.5x the floor and intra_fid <= 2x in every judge, recall >= 0.9x the "
              "floor's; (unconditional) inception_score >= the floor's - 0.3, fid <= 1.5x")


def mnist_rows(root: str, steps: int | None, seeds: int, settings: dict, samples: int, out: str,
               ema_fractions: list = ()) -> list:
    """``ganforge train --dataset mnist --data-opt split=test [--steps STEPS]`` (ganforge's defaults, plus
    ``settings``) for each seed, each generator (and each EMA shadow ``ema_fractions`` asks for) scored by
    every judge of ``benchmarks/judges.py`` on ``samples`` samples against as many real t10k images; and the
    floor: as many other real images."""
    import ganforge
    from judges import judge, make_judges, print_tables

    evaluators, floor = make_judges(root, samples)
    rows = [{"name": "real vs real (floor)", "scores": floor}]
    length = {} if steps is None else {"steps": steps}
    for seed in range(seeds):
        shadows = EMAShadows(ema_fractions)
        start = time.perf_counter()
        run = ganforge.train(dataset="mnist", data_root=root, data_options={"split": "test"}, seed=seed, out_dir=out,
                             name=f"mnist-{seed}", device="cpu", overwrite=True, callbacks=[shadows], **length,
                             **settings)
        seconds = time.perf_counter() - start
        for ema, G in [(None, ganforge.load(run)[0]), *shadows.generators(run)]:
            rows.append({"name": f"seed {seed}" + shadows.label(ema) + f" ({seconds:.0f} s)", "ema": ema,
                         "seconds": seconds, "run": str(run), "scores": judge(evaluators, G)})
    print(f"\nMNIST t10k, {steps or RECIPE_STEPS} steps, ganforge's defaults"
          f"{' + ' + json.dumps(settings) if settings else ''}; {samples} samples against {samples} real")
    print(MNIST_GOAL)
    runs = [row for row in rows[1:] if row["ema"] is None]
    if len(runs) > 1:
        rows.append({"name": "mean of the seeds", "scores": {
            name: {key: statistics.mean(row["scores"][name][key] for row in runs)
                   for key in runs[0]["scores"][name] if key != "per_class"} for name in evaluators}})
    print_tables(evaluators, rows)
    if seeds:
        print(f"grids: {rows[1]['run']}/samples, {rows[1]['run']}/progress.gif")
    return rows


STACKED_PUBLISHED = [("DCGAN (PacGAN T3)", 99, 3.40), ("VEEGAN (PacGAN T3)", 150, 2.95),
                     ("Unrolled GAN (PacGAN T3)", 48.7, 4.32), ("PacDCGAN2 (PacGAN T3)", 1000, 0.06),
                     ("R3GAN (Huang et al. 2024, T2)", 1000, 0.078)]
STACKED_GOAL = "goal: 1000 modes and reverse KL <= 0.05 (real stacks: about 0.025)"


class EMAShadows(Callback):
    """Other EMA generators kept beside a run's own, from the same G after every step: for each ramp-up
    fraction f, the EMA ``--ema-rampup f`` keeps without ema_decay's cap, an average over about the last
    f of the steps so far (f = 0: the raw G; the run's own EMA is a ramp-up of 1/9 capped at 0.999).
    One training run then scores several averaging windows on the same random draws."""

    def __init__(self, fractions: list):
        self.fractions, self.shadows = fractions, {}

    def on_start(self, run):
        import copy

        self.shadows = {f: copy.deepcopy(run.state.G).requires_grad_(False) for f in self.fractions}

    def on_step(self, run, record):
        for f, shadow in self.shadows.items():
            update_ema(shadow, run.state.G, ema_decay_at(1.0, run.step - 1, f))

    @torch.no_grad()
    def generators(self, run) -> list:
        """``(f, generator)`` of each shadow, in eval mode; each one's grid of 64 samples (fixed noise)
        is saved in the run directory as ``ema-F.png``."""
        from ganforge.plotting import samples_picture

        for f, G in self.shadows.items():
            G.eval()
            classes = getattr(G, "num_classes", None)
            z = torch.randn(64, G.latent_dim, generator=torch.Generator().manual_seed(0))
            x = G(z, torch.arange(64) % classes if classes else None)
            samples_picture(x.float().numpy(), nrow=classes).save(Path(run) / f"ema-{f:g}.png")
        return list(self.shadows.items())

    @staticmethod
    def label(f) -> str:
        return "" if f is None else ", raw G" if f == 0 else f", EMA last {f:g}"


def stacked_rows(root: str, steps: int | None, seeds: list, settings: dict, out: str, ema_fractions: list = ()) -> list:
    """``ganforge train --dataset stacked-mnist --data-opt split=test [--steps STEPS]`` (ganforge's defaults,
    plus ``settings``) for each seed, each EMA generator scored as ``ganforge evaluate`` scores it (26,000
    samples, each channel classified by the cached MNIST classifier), with precision/recall and
    density/coverage in the classifier's features, and each of the EMA shadows
    ``ema_fractions`` asks for (:class:`EMAShadows`); and the floor: 26,000 other real stacks."""
    import ganforge
    from ganforge.data import load_data
    from ganforge.evaluation import Evaluator
    from ganforge.interfaces import to_float

    evaluator = Evaluator(load_data("stacked-mnist", root, options={"split": "test"}),
                          ["modes", "fid", "precision-recall", "density-coverage"])
    other = load_data("stacked-mnist", root, options={"split": "test", "n": evaluator.samples, "seed": 1})
    chunks = iter(other.x.split(evaluator.batch_size))
    rows = [{"name": "real vs real (floor)", **evaluator(lambda z, labels: to_float(next(chunks)), 1)}]
    for seed in seeds:
        shadows = EMAShadows(ema_fractions)
        start = time.perf_counter()
        run = ganforge.train(dataset="stacked-mnist", data_root=root, data_options={"split": "test"}, seed=seed,
                             out_dir=out, name=f"stacked-{seed}", device="cpu", overwrite=True, callbacks=[shadows],
                             **({} if steps is None else {"steps": steps}), **settings)
        seconds = time.perf_counter() - start
        for ema, G in [(None, ganforge.load(run)[0]), *shadows.generators(run)]:
            rows.append({"name": f"seed {seed}" + shadows.label(ema), "ema": ema, "seconds": seconds, "run": str(run),
                         **evaluator(G, G.latent_dim)})
    print(f"\nStacked-MNIST (t10k digits), {steps or RECIPE_STEPS} steps, ganforge's defaults"
          f"{' + ' + json.dumps(settings) if settings else ''}; {evaluator.samples} samples; "
          f"features: {evaluator.extractor.description}")
    print(STACKED_GOAL)
    print(f"{'':32}{'modes':>8}{'reverse KL':>12}{'fid':>10}{'precision':>10}{'recall':>8}{'density':>9}"
          f"{'coverage':>9}{'s/run':>8}")
    for row in rows:
        print(f"{row['name']:32}{row['modes']:>8}{row['reverse_kl']:>12.3f}{row['fid']:>10.2f}"
              f"{row['precision']:>10.3f}{row['recall']:>8.3f}{row['density']:>9.3f}{row['coverage']:>9.3f}"
              f"{row.get('seconds', float('nan')):>8.0f}")
    for name, modes, kl in STACKED_PUBLISHED:
        print(f"{name:32}{modes:>8}{kl:>12.3f}")
    if seeds:
        print(f"grids: {rows[-1]['run']}/samples")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", default="bce,minimax,lsgan,wgan,wgan-gp,hinge")
    parser.add_argument("--datasets", default="ring,grid", help="'' for none (with --mnist: its row alone)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (each gets cores/jobs threads)")
    parser.add_argument("--mnist", metavar="ROOT", help="also the MNIST rows, from ROOT/MNIST/raw")
    parser.add_argument("--mnist-steps", type=int, help="default: the mnist recipe's")
    parser.add_argument("--mnist-seeds", type=int, default=3)
    parser.add_argument("--mnist-samples", type=int, default=2000)
    parser.add_argument("--mnist-set", metavar="JSON", default="{}",
                        help='settings over the defaults, for ablations, e.g. \'{"r1": 0, "augment": null}\'')
    parser.add_argument("--stacked", metavar="ROOT", help="also the Stacked-MNIST rows, from ROOT/MNIST/raw")
    parser.add_argument("--stacked-steps", type=int, help="default: the stacked-mnist recipe's")
    parser.add_argument("--stacked-seeds", type=int, default=3)
    parser.add_argument("--stacked-first-seed", type=int, default=0, help="seeds FIRST to FIRST + SEEDS - 1")
    parser.add_argument("--stacked-set", metavar="JSON", default="{}", help="settings over the defaults")
    parser.add_argument("--ema", metavar="F,F", default="", help="MNIST and Stacked-MNIST: also score EMA "
                        "generators averaged over about the last fraction F of the steps (0: the raw G)")
    parser.add_argument("--json", help="write every run's numbers to this file")
    args = parser.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    out = tempfile.mkdtemp(prefix="ganforge-quality-")
    datasets, losses = [d for d in args.datasets.split(",") if d], [n for n in args.losses.split(",") if n]
    tasks = [(loss, dataset, seed) for dataset in datasets for loss in losses for seed in range(args.seeds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda t: run_one(*t, threads, out), tasks))
    if tasks:
        print(f"{len(tasks)} runs, {args.jobs} at a time with {threads} thread(s) each; EMA generator, "
              "2,500 samples, mean (min-max) over seeds")
    for dataset in datasets:
        target = TARGETS.get(dataset)
        print(f"\n{dataset}: {'target ' + f'{target[0]} modes, >= {target[1]}% HQ, reverse KL <= {target[2]}' if target else ''}")
        print(f"{'':28}{'modes':>14}{'high quality %':>22}{'reverse KL':>22}{'s/run':>8}")
        for loss in losses:
            rows = [r for r in results if r["loss"] == loss and r["dataset"] == dataset]
            failed = [r["error"] for r in rows if "error" in r]
            rows = [r for r in rows if "error" not in r]
            if failed:
                print(f"ganforge {loss:19}failed: {failed[0]}")
                continue

            def cell(key, scale=1.0, fmt="{:.1f}"):
                values = [r[key] * scale for r in rows]
                return f"{fmt.format(statistics.mean(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"

            print(f"ganforge {loss:19}{cell('modes'):>14}{cell('high_quality', 100):>22}"
                  f"{cell('reverse_kl', fmt='{:.3f}'):>22}{statistics.mean(r['seconds'] for r in rows):>8.0f}")
        for name, modes, hq, kl in PUBLISHED.get(dataset, []):
            print(f"{name:28}{modes:>14}{hq:>22}{'' if kl is None else kl:>22}")
    ema = [float(f) for f in args.ema.split(",") if f]
    if args.mnist:
        results += mnist_rows(args.mnist, args.mnist_steps, args.mnist_seeds, json.loads(args.mnist_set),
                              args.mnist_samples, out, ema)
    if args.stacked:
        seeds = range(args.stacked_first_seed, args.stacked_first_seed + args.stacked_seeds)
        results += stacked_rows(args.stacked, args.stacked_steps, list(seeds), json.loads(args.stacked_set), out,
                                ema)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

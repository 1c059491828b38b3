"""How a toy run's quality moves during training: trains one loss on ring or grid with ganforge's
defaults (plus SETTINGS, as JSON) and, every EVERY steps, scores the raw G, the run's EMA generator
and EMAs at other decays on the toy metrics (the protocol of benchmarks/quality.py).

    python benchmarks/toy_trajectory.py wgan-gp grid --seed 0
    python benchmarks/toy_trajectory.py wgan-gp grid --set '{"d_steps": 3, "steps": 45000}' --every 7500
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile

import torch

import ganforge
from ganforge.data import load_data
from ganforge.evaluation import Evaluator
from ganforge.state import ema_decay_at, update_ema


class Trajectory(ganforge.Callback):
    def __init__(self, every: int, decays: list):
        self.every, self.decays = every, decays

    def on_start(self, run):
        self.emas = [copy.deepcopy(run.state.G).requires_grad_(False) for _ in self.decays]
        self.evaluator = Evaluator(load_data(run.cfg.dataset, options=run.cfg.data_options), ["toy"], seed=1234)

    @torch.no_grad()
    def on_step(self, run, record):
        G = run.state.G
        for decay, ema in zip(self.decays, self.emas):
            update_ema(ema, G, ema_decay_at(decay, run.step - 1))  # as the run's own: after update run.step - 1
        if run.due(self.every):
            models = {"raw G": G, f"EMA {run.cfg.ema_decay}": run.state.ema,
                      **{f"EMA {d}": e for d, e in zip(self.decays, self.emas)}}
            line = f"step {run.step:6d}"
            for name, model in models.items():
                if model is not None:
                    result = self.evaluator(copy.deepcopy(model).eval(), model.latent_dim)
                    line += f"  {name} {result['high_quality'] * 100:.1f}"
                    if model is run.state.ema:  # the generator benchmarks/quality.py scores
                        line += f" ({result['modes']} modes, reverse KL {result['reverse_kl']:.3f})"
            print(line, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("loss")
    parser.add_argument("dataset", choices=["ring", "grid"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", metavar="JSON", default="{}", help="settings over the defaults")
    parser.add_argument("--every", type=int, default=5000)
    parser.add_argument("--ema-decays", default="0.9995,0.9999", help="EMAs kept beside the run's own")
    args = parser.parse_args()
    print("high-quality % of each generator (2,500 samples, seed 1234)")
    with tempfile.TemporaryDirectory() as out:
        ganforge.train(loss=args.loss, dataset=args.dataset, seed=args.seed, out_dir=out, device="cpu",
                       sample_every=10**9, checkpoint_every=10**9, announce=lambda *a: None,
                       callbacks=[Trajectory(args.every, [float(d) for d in args.ema_decays.split(",") if d])],
                       **json.loads(args.set))


if __name__ == "__main__":
    main()

"""Time per step of the image recipe against the settings it replaced, side by side in one run.

Trains `ganforge train --dataset digits` as it is now (the image recipe: D without normalisation,
lazy R1, EMA, class-conditional G and D) and with the settings before it (BatchNorm in D, no R1,
no EMA, unconditional, lr 2e-4, betas 0.5, 0.999), alternating over rounds, each in its own
process, and prints the median images/s of each and their ratio.

    python benchmarks/recipe_speed.py --steps 400 --rounds 3

`--before JSON` compares against other settings, e.g. one pair's R1 on a toy:

    python benchmarks/recipe_speed.py --dataset grid --set '{"loss": "wgan"}' --before '{"r1": 0}' --steps 2000
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

BEFORE = {"arch_options": {"d_norm": "batch"}, "r1": 0.0, "ema": False, "conditional": False, "lr_g": 2e-4,
          "lr_d": 2e-4, "betas": [0.5, 0.999]}

RUN_ONE = r"""
import json, sys, time
import ganforge
settings = json.loads(sys.argv[1])
run = ganforge.train(overwrite=True, progress=False, announce=lambda m: None, **settings)
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
print(json.dumps([r["images_per_s"] for r in rows[1:]]))  # the first window includes warm-up
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", default="{}", help="extra settings for both, as JSON (e.g. data_root)")
    parser.add_argument("--before", default=json.dumps(BEFORE), help="the settings to compare with, as JSON")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="ganforge-recipe-speed-")
    common = {"dataset": args.dataset, "steps": args.steps, "log_every": max(1, args.steps // 8), "device": "cpu",
              "sample_every": 10**9, "checkpoint_every": 10**9, "out_dir": out, **json.loads(args.set)}
    speeds, before = {"before": [], "recipe": []}, json.loads(args.before)
    for round_ in range(args.rounds):
        for name, extra in (("before", before), ("recipe", {})):
            settings = {**common, **extra, "name": name}
            proc = subprocess.run([sys.executable, "-c", RUN_ONE, json.dumps(settings)], capture_output=True,
                                  text=True, check=True)
            speeds[name] += json.loads(proc.stdout.strip().splitlines()[-1])
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    for name, median in medians.items():
        print(f"{name:8} {median:8.0f} images/s  (median of {len(speeds[name])} windows)")
    print(f"recipe / before: {medians['recipe'] / medians['before']:.3f}")


if __name__ == "__main__":
    main()

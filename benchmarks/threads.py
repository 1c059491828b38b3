"""Training throughput against PyTorch's CPU thread settings, with the cores free and with another
process keeping one core busy, side by side in one run.

Each configuration trains `ganforge train --dataset digits` (the default recipe) in its own process
(OpenMP reads its wait policy when it starts), alternating over rounds; a competitor, when on, is a
Python busy loop, unpinned, as another user's job would be. Prints the median images/s of the windows
after the first (warm-up) for each.

    python benchmarks/threads.py --steps 60 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CONFIGS = {  # name: (--threads, extra environment)
    "all cores, spin-wait (OpenMP's default)": (None, {}),
    "all cores, passive wait": (None, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "all cores, spin 10k (GOMP_SPINCOUNT)": (None, {"GOMP_SPINCOUNT": "10000"}),
    "all cores, spin 100k (GOMP_SPINCOUNT)": (None, {"GOMP_SPINCOUNT": "100000"}),
    "1 thread": (1, {}),
}
RUN_ONE = r"""
import json, sys
import ganforge
settings = json.loads(sys.argv[1])
run = ganforge.train(overwrite=True, progress=False, announce=lambda m: None, **settings)
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
print(json.dumps([r["images_per_s"] for r in rows[1:]]))  # the first window includes warm-up
"""


def measure(settings: dict, env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", RUN_ONE, json.dumps(settings)], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True).stdout
    return statistics.median(json.loads(out.splitlines()[-1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    os.environ.clear()
    os.environ.update(env)
    results = {(name, busy): [] for name in CONFIGS for busy in (False, True)}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.rounds):
            for busy in (False, True):
                competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
                try:
                    for name, (threads, extra) in CONFIGS.items():
                        settings = {"steps": args.steps, "log_every": max(1, args.steps // 6), "out_dir": out,
                                    "name": "r", "threads": threads, "sample_every": 10 ** 6}
                        results[name, busy].append(measure(settings, extra))
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"digits, default recipe, {args.steps} steps, {cores} usable cores, {args.rounds} rounds; images/s (median)")
    print(f"{'configuration':<42} {'cores free':>11} {'1 core busy':>12} {'busy/free':>10}")
    for name in CONFIGS:
        free, busy = statistics.median(results[name, False]), statistics.median(results[name, True])
        print(f"{name:<42} {free:>11.0f} {busy:>12.0f} {busy / free:>10.2f}")
    print("runs:", json.dumps({f"{name} | {'busy' if busy else 'free'}": [round(v) for v in values]
                               for (name, busy), values in results.items()}))


if __name__ == "__main__":
    main()

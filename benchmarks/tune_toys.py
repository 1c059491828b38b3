"""Can ``ganforge tune`` find what a hand search found? Tunes a loss on a toy mixture starting from
ganforge's generic toy settings with nothing loss-specific (the built-in recipes disabled, the toy
recipe's settings given as a config file, its learning rates left to the search), then trains the
best settings for several seeds at the full length and scores them as benchmarks/quality.py does
(EMA generator, 2,500 samples: modes, high quality %, reverse KL). Prints the tune's wall and CPU
time and the seeds' scores.

    python benchmarks/tune_toys.py --dataset ring --loss wgan --trials 16 --steps 5000 --final-steps 15000
    python benchmarks/tune_toys.py --dataset grid --loss relativistic:rsgan --trials 16 --steps 10000 \\
        --final-steps 30000

Run it pinned to one core (``taskset -c 1 ... --threads 1``) beside other work.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ganforge.builtin.recipes import TOY
from ganforge.config import to_toml

CLI = [sys.executable, "-m", "ganforge", "--disable-plugin", "ganforge.builtin.recipes"]
RING = {"batch_size": 512}  # what the ring's recipe changes of the grid's


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ring")
    parser.add_argument("--loss", default="wgan")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5000, help="Steps of each trial.")
    parser.add_argument("--final-steps", type=int, default=15000, help="Steps of the best settings' seeds.")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="tune-bench")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    generic = {k: v for k, v in {**TOY, **(RING if args.dataset == "ring" else {})}.items()
               if k not in ("lr_g", "lr_d", "steps")}
    generic["threads"] = args.threads
    (out / "generic.toml").write_text(to_toml(generic))
    study = f"{args.loss.replace(':', '_')}-{args.dataset}"
    start, cpu = time.perf_counter(), cpu_seconds()
    subprocess.run([*CLI, "tune", "--dataset", args.dataset, "--loss", args.loss, "--trials", str(args.trials),
                    "--steps", str(args.steps), "--metric", "high_quality", "--config", str(out / "generic.toml"),
                    "--study", study, "--storage", f"sqlite:///{out}/tune.db", "--out-dir", str(out)], check=True)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    print(f"tune: {args.trials} trials of {args.steps} steps, {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU",
          flush=True)
    rows = []
    for seed in range(args.seeds):
        name = f"best-seed{seed}"
        subprocess.run([*CLI, "train", "--config", str(out / study / "best.toml"), "--steps", str(args.final_steps),
                        "--seed", str(seed), "--eval-every", str(args.final_steps), "--out-dir", str(out),
                        "--name", name, "--overwrite", "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        last = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()
                if "high_quality" in line][-1]
        rows.append(last)
        print(f"seed {seed}: modes {last['modes']:.0f}, high quality {100 * last['high_quality']:.1f}%, "
              f"reverse KL {last['reverse_kl']:.3f}", flush=True)
    mean = {k: statistics.mean(r[k] for r in rows) for k in ("modes", "high_quality", "reverse_kl")}
    print(f"mean of {args.seeds} seeds at {args.final_steps} steps: modes {mean['modes']:.1f}, high quality "
          f"{100 * mean['high_quality']:.1f}%, reverse KL {mean['reverse_kl']:.3f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

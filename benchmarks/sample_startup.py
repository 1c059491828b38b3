"""Startup cost of `ganforge sample g.onnx -n 64` against a process that only imports torch.

    python benchmarks/sample_startup.py [--repeat 10]

Trains nothing: it builds an untrained DCGAN (32x32, 1 channel) run, exports it,
then times whole processes side by side, interleaved, reporting the median wall
time and the peak resident memory (ru_maxrss of the child) of each.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall_time(cmd, cwd) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "ganforge", "train", "--steps", "1", "--out-dir", tmp, "--no-progress",
                        "--checkpoint-every", "1"], check=True, capture_output=True)
        run = next(Path(tmp).iterdir())
        subprocess.run([sys.executable, "-m", "ganforge", "export", str(run), "--format", "onnx",
                        "--out", f"{tmp}/g.onnx"], check=True, capture_output=True)
        commands = {
            "ganforge sample g.onnx -n 64": [sys.executable, "-m", "ganforge", "sample", "g.onnx", "-n", "64",
                                             "--seed", "0", "--out", "grid.png"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        }
        walls = {name: [] for name in commands}
        for _ in range(args.repeat):  # interleaved, so machine noise hits both alike
            for name, cmd in commands.items():
                walls[name].append(wall_time(cmd, tmp))
        # peak memory of each command alone: ru_maxrss of a wrapper's only child
        peaks = {}
        for name, cmd in commands.items():
            code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
                    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
            out = subprocess.run([sys.executable, "-c", code, *cmd], cwd=tmp, check=True, capture_output=True,
                                 text=True).stdout
            peaks[name] = int(out) / 1024
    print(f"machine: {os.cpu_count()} cores, {sys.platform}, python {sys.version.split()[0]}")
    print(f"| command | median wall (s) over {args.repeat} | peak RSS (MiB) |")
    print("| --- | --- | --- |")
    for name in commands:
        print(f"| `{name}` | {statistics.median(walls[name]):.2f} | {peaks[name]:.0f} |")
    a, b = commands
    print(f"ratio (sample / import torch): wall {statistics.median(walls[a]) / statistics.median(walls[b]):.2f}, "
          f"memory {peaks[a] / peaks[b]:.2f}")


if __name__ == "__main__":
    main()

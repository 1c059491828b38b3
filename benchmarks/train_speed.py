"""Training throughput, side by side in one run: a tutorial-style reference loop, ganforge eager fp32,
and ganforge --fast; GFLOP/s against a measured GEMM peak; peak memory; and generator sampling
latency/throughput in PyTorch eager, TorchScript and onnxruntime.

    python benchmarks/train_speed.py                    # a few minutes on a 2-core CPU
    python benchmarks/train_speed.py --steps 300 --out benchmarks/results.md
    python benchmarks/train_speed.py --device cuda      # the same on a GPU

Setup (the issue's): DCGAN 100->256->128->64->1 with a 4-conv discriminator, LSGAN, 32x32 MNIST
(the t10k images in ../shared/data), batch 64. Each training configuration runs in its own process
(for a clean peak-memory reading), one after the other, interleaved over --rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


# ----------------------------------------------------------------------------- the reference loop
def reference_loop(steps: int, warmup: int, device: str) -> dict:
    """DCGAN + LSGAN as tutorials write it: a Dataset of PIL images with torchvision transforms,
    a DataLoader with workers, fp32, eager, fresh fake batches for each update."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from ganforge.builtin.architectures import dcgan
    from ganforge.builtin.datasets import read_idx
    from ganforge.interfaces import DataSpec

    images = read_idx(next((DATA / "MNIST" / "raw").glob("t10k-images-idx3-ubyte*"))).numpy()

    class MNIST(torch.utils.data.Dataset):
        tf = transforms.Compose([transforms.Resize(32), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])

        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return self.tf(Image.fromarray(images[i], mode="L")), 0

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(MNIST(), batch_size=64, shuffle=True, num_workers=2, drop_last=True)
    G, D = dcgan(DataSpec((1, 32, 32)), 100)
    G, D = G.to(device), D.to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    done, t0 = 0, None
    while done < steps + warmup:
        for real, _ in loader:
            if done == warmup:
                sync(device)
                t0 = time.perf_counter()
            real = real.to(device)
            z = torch.randn(real.size(0), 100, device=device)
            fake = G(z)
            opt_d.zero_grad()
            d_loss = 0.5 * ((D(real) - 1) ** 2).mean() + 0.5 * (D(fake.detach()) ** 2).mean()
            d_loss.backward()
            opt_d.step()
            opt_g.zero_grad()
            g_loss = 0.5 * ((D(fake) - 1) ** 2).mean()
            g_loss.backward()
            opt_g.step()
            done += 1
            if done == steps + warmup:
                break
    sync(device)
    return {"images_per_s": steps * 64 / (time.perf_counter() - t0)}


def sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- ganforge itself
def ganforge_loop(steps: int, warmup: int, device: str, fast: bool) -> dict:
    """The real `ganforge train` loop on the same model and data; images/s from its own metrics
    (the first `warmup` steps, which include compilation, are left out)."""
    from ganforge.layering import build
    from ganforge.training import train

    with tempfile.TemporaryDirectory() as tmp:
        settings = dict(arch="dcgan", loss="lsgan", dataset="mnist", data_root=str(DATA),
                        data_options={"split": "test"}, steps=steps + warmup, batch_size=64, device=device,
                        log_every=warmup, sample_every=10**9, checkpoint_every=10**9, out_dir=tmp)
        cfg = build(settings, fast=fast)
        run = train(cfg, progress=False)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = [(r["step"] - prev["step"], r["images_per_s"]) for prev, r in zip(records, records[1:])]
    seconds = sum(n * 64 / ips for n, ips in timed)  # every record after the warm-up one
    return {"images_per_s": sum(n for n, _ in timed) * 64 / seconds,
            "settings": {k: getattr(cfg, k) for k in ("precision", "compile", "channels_last")}}


def flops_per_image(device: str) -> float:
    """FLOPs of one training step (D and G updates) divided by the batch, counted by PyTorch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ganforge.builtin.architectures import dcgan
    from ganforge.interfaces import DataSpec

    G, D = dcgan(DataSpec((1, 32, 32)), 100)
    G, D = G.to(device), D.to(device)
    real = torch.rand(64, 1, 32, 32, device=device) * 2 - 1
    with FlopCounterMode(display=False) as counter:
        fake = G(torch.randn(64, 100, device=device))
        (D(real).square().mean() + D(fake.detach()).square().mean()).backward()
        D(fake).square().mean().backward()
    return counter.get_total_flops() / 64


def gemm_peak(device: str, dtype_name: str, budget_s: float = 2.0) -> float:
    """GFLOP/s of a large square matmul in the dtype: the arithmetic ceiling of this machine.
    The size adapts, so an emulated dtype (bf16 without hardware support) stays within the budget."""
    import torch

    dtype = getattr(torch, dtype_name)

    def rate(n, repeats):
        a = torch.randn(n, n, device=device, dtype=dtype)
        a @ a
        sync(device)
        t = time.perf_counter()
        for _ in range(repeats):
            a @ a
        sync(device)
        return 2 * n ** 3 * repeats / (time.perf_counter() - t)

    n, probe = 256, rate(256, 1)
    while n < 2048 and 2 * (2 * n) ** 3 / probe < budget_s / 10:
        n *= 2
    return rate(n, max(1, int(budget_s * probe / (2 * n ** 3)))) / 1e9


# ----------------------------------------------------------------------------- sampling
def sampling(device: str) -> list:
    """Batch-1 latency and batch-256 throughput of the (untrained) DCGAN generator in PyTorch eager,
    TorchScript and onnxruntime, each exported and verified by ganforge."""
    import numpy as np
    import torch

    from ganforge.builtin.architectures import dcgan
    from ganforge.exporting import to_onnx, to_torchscript, verify
    from ganforge.inference import Sampler
    from ganforge.interfaces import DataSpec

    torch.manual_seed(0)
    G = dcgan(DataSpec((1, 32, 32)), 100)[0].eval()
    meta = {"latent_dim": 100, "output_shape": [1, 32, 32], "num_classes": None, "inputs": ["z"]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, ts_path = Path(tmp) / "g.onnx", Path(tmp) / "g.pt"
        to_onnx(G, meta, onnx_path)
        to_torchscript(G, meta, ts_path)
        for path in (onnx_path, ts_path):
            verify(G, path, meta)
        runners = {"PyTorch eager": lambda z: G(torch.from_numpy(z)).numpy(),
                   "TorchScript": Sampler(ts_path).generate,
                   "onnxruntime (ganforge sample: spinning off)": Sampler(onnx_path).generate,
                   "onnxruntime, spinning on": Sampler(onnx_path, spin=True).generate}
        with torch.no_grad():
            for name, run in runners.items():
                z1 = np.random.default_rng(0).standard_normal((1, 100), dtype=np.float32)
                z256 = np.random.default_rng(0).standard_normal((256, 100), dtype=np.float32)
                for _ in range(5):
                    run(z1), run(z256)
                latency = timeit(lambda: run(z1), 200)
                throughput = 256 / timeit(lambda: run(z256), 10)
                rows.append({"runtime": name, "batch1_ms": latency * 1000, "batch256_per_s": throughput})
    return rows


def timeit(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ----------------------------------------------------------------------------- driver
def child(kind: str, steps: int, warmup: int, device: str) -> None:
    """Run one training configuration and print its result and peak memory as JSON."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    if kind == "reference":
        result = reference_loop(steps, warmup, device)
    else:
        result = ganforge_loop(steps, warmup, device, fast=kind == "fast")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_mib"] = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else rss)
    print("RESULT " + json.dumps(result))


def run_child(kind, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, python {platform.python_version()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per configuration")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first (compilation included)")
    parser.add_argument("--rounds", type=int, default=2, help="repeat the three configurations, interleaved")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps, args.warmup, args.device)


    kinds = {"reference": "reference loop (tutorial style)", "eager": "ganforge eager fp32",
             "fast": "ganforge --fast"}
    results = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            results[kind].append(run_child(kind, args))
    flops = flops_per_image(args.device)
    peaks = {dtype: gemm_peak(args.device, dtype) for dtype in ("float32", "bfloat16")}
    ref = statistics.median(r["images_per_s"] for r in results["reference"])
    lines = [f"Machine: {machine(args.device)}", "",
             f"DCGAN/LSGAN, 32x32 MNIST, batch 64, {args.steps} timed steps after {args.warmup}, "
             f"median of {args.rounds} rounds; {flops / 1e9:.3f} GFLOP per image per training step; "
             f"GEMM peak {peaks['float32']:.0f} GFLOP/s fp32, {peaks['bfloat16']:.0f} bf16.", "",
             "| configuration | images/s | vs reference | GFLOP/s | % of GEMM peak | peak memory (MiB) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for kind, label in kinds.items():
        ips = statistics.median(r["images_per_s"] for r in results[kind])
        settings = results[kind][0].get("settings")
        if settings:
            label += f" ({settings['precision']}{', compile' if settings['compile'] else ''}" \
                     f"{', channels_last' if settings['channels_last'] else ''})"
        dtype = "bfloat16" if settings and settings["precision"] == "bf16" else "float32"
        gflops = ips * flops / 1e9
        peak_mem = max(r["peak_mib"] for r in results[kind])
        lines.append(f"| {label} | {ips:.0f} | {ips / ref:.2f}x | {gflops:.0f} | {100 * gflops / peaks[dtype]:.0f}% "
                     f"| {peak_mem:.0f} |")
    rows = sampling(args.device if args.device == "cpu" else "cpu")
    eager = rows[0]
    lines += ["", "Generator sampling (CPU):", "",
              "| runtime | batch-1 latency (ms) | vs eager | batch-256 images/s | vs eager |",
              "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['runtime']} | {r['batch1_ms']:.2f} | {r['batch1_ms'] / eager['batch1_ms']:.2f}x | "
                     f"{r['batch256_per_s']:.0f} | {r['batch256_per_s'] / eager['batch256_per_s']:.2f}x |")
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()

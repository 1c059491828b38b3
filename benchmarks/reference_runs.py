"""Three short reference runs and a hash of everything their last checkpoint holds (weights, EMA,
optimizer moments, the augmentation's state, step, data position, RNG): run it before and after a
change to the training core on the same machine; equal hashes mean the change left training
bit-identical. (Hashes differ between CPUs and PyTorch builds, so they are compared, never stored.)

    python benchmarks/reference_runs.py [--out /tmp/refruns]

The runs: the ring with its toy recipe (MLP, PacGAN2, standardized, EMA); the digits with the image
recipe (conditional DCGAN, lazy R1, EMA) and ADA; the grid with WGAN (its recipe: spectral critic,
5 critic steps, R1, linear lr decay) under bf16 autocast, two generator steps and a resume halfway.
"""
import argparse
import hashlib
import tempfile
from pathlib import Path

RUNS = {
    "ring": dict(dataset="ring", steps=300),
    "digits-ada": dict(dataset="digits", steps=40, augment="ada", augment_options={"interval": 2}),
    "grid-wgan-bf16": dict(dataset="grid", loss="wgan", steps=60, precision="bf16", g_steps=2),
}


def digest(run_dir: Path) -> str:
    from ganforge import checkpoint, rundir

    state = checkpoint.load(rundir.checkpoints(run_dir)[-1])
    h = hashlib.sha256()

    def walk(key, value):
        if hasattr(value, "numpy"):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().view(-1).view(__import__("torch").uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for k in sorted(value, key=str):
                walk(f"{key}.{k}", value[k])
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{key}.{i}", v)
        elif key.split(".")[1] not in ("config", "ganforge_version", "providers"):
            h.update(f"{key}={value!r}".encode())

    walk("", {k: v for k, v in state.items()})
    return h.hexdigest()[:16]


def main():
    import ganforge

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="Parent directory of the runs (default: a temporary one).")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="refruns-"))
    for name, settings in RUNS.items():
        settings = {**settings, "threads": 1, "out_dir": str(out), "name": name, "sample_every": 10_000,
                    "log_every": 10, "checkpoint_every": settings["steps"] // 2}
        if name == "grid-wgan-bf16":
            half = {**settings, "steps": settings["steps"] // 2}
            run = ganforge.train(**half, announce=None, overwrite=True)
            run = ganforge.train(resume=run, steps=settings["steps"])
        else:
            run = ganforge.train(**settings, announce=None, overwrite=True)
        print(f"{name:16s} {digest(run)}", flush=True)


if __name__ == "__main__":
    main()

"""ganforge from Python: train, continue, export, evaluate and sample, as the CLI does.

    python examples/python_api.py                 # the 8-Gaussian ring, 3000 steps (about a minute on 2 cores)
    python examples/python_api.py --steps 200 --out-dir /tmp/runs
"""
import argparse

import torch

import ganforge


class PrintHighQuality(ganforge.Callback):
    """A callback: print the evaluation's high-quality fraction as training goes."""

    def on_evaluate(self, run, metrics):
        print(f"  step {run.step}: {metrics['high_quality']:.1%} of samples near a mode")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out-dir", default="runs")
    args = parser.parse_args()

    # The ring's recommended settings (mlp, PacGAN2, EMA, ...) apply, as with `ganforge train --dataset ring`;
    # what is given here wins over them.
    half = args.steps // 2
    run = ganforge.train(dataset="ring", steps=half, eval_every=max(1, half // 2), eval_samples=1000,
                         out_dir=args.out_dir, name="example", overwrite=True, callbacks=[PrintHighQuality()])
    run = ganforge.train(resume=run, steps=args.steps)  # continue where it stopped, exactly

    G, cfg = ganforge.load(run)  # the EMA generator in eval mode, and the run's resolved config
    print(f"trained {cfg.arch}/{cfg.loss} on {cfg.dataset}: pack {cfg.pack}, batch {cfg.batch_size}, lr {cfg.lr_g}")
    with torch.no_grad():
        points = G(torch.randn(5, G.latent_dim))
    print("five samples:", [tuple(round(v, 2) for v in p.tolist()) for p in points])

    for path, diff in ganforge.export(run):  # ONNX and TorchScript, each verified against PyTorch
        print(f"wrote {path} (max abs difference {diff:.2g})")
    print(ganforge.evaluate(run / "export" / "generator.onnx"))  # toy metrics: modes, high_quality, reverse_kl


if __name__ == "__main__":
    main()

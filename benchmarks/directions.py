"""Do the principal directions stored at export (GANSpace) mean more than any direction? For an
exported image generator, each direction's effect on the output against random latent directions
of the same length, and a picture of each direction to look at.

    python benchmarks/directions.py RUN/export/generator.onnx [--samples 256] [--picture out.png]

For ``--samples`` latents (seed 0; classes cycling when conditional) and each stored direction k, the
mean absolute pixel change |G(z + s d_k) - G(z)| at s = 2 (two standard deviations along it), beside
the same for 16 random directions scaled to |d_k|, on the same latents. The picture has one row per
direction: for each of 3 samples, the sample moved by -2, -1, 0, +1, +2 standard deviations.
"""
import argparse

import numpy as np

from ganforge.inference import Sampler


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--picture", default="directions.png")
    args = parser.parse_args()
    sampler = Sampler(args.model)
    if sampler.directions is None:
        raise SystemExit(f"{args.model} has no stored directions: export it with this version")
    z, labels = sampler.latents(args.samples, seed=0), sampler.labels(args.samples)
    base = sampler.generate(z, labels)
    rng = np.random.default_rng(0)
    k, d = sampler.directions.shape
    random = rng.standard_normal((16, d))
    random /= np.linalg.norm(random, axis=1, keepdims=True)

    def change(step):
        return float(np.abs(sampler.generate((z + step).astype(np.float32), labels) - base).mean())

    explained = sampler.metadata["directions"]["explained"]
    print(f"{args.model}: {k} directions from layer {sampler.metadata['directions']['layer']}, {args.samples} "
          "latents; mean |pixel change| at 2 standard deviations (pixels in [-1, 1])")
    print(f"{'direction':>9} {'explained':>9} {'|d|':>6} {'change':>8} {'random, same |d|':>22} {'ratio':>6}")
    ratios = []
    for i, v in enumerate(sampler.directions):
        length = float(np.linalg.norm(v))
        ours = change(2 * v)
        theirs = [change(2 * length * r) for r in random]
        ratios.append(ours / np.mean(theirs))
        print(f"{'PC' + str(i + 1):>9} {explained[i]:>9.3f} {length:>6.2f} {ours:>8.4f} "
              f"{np.mean(theirs):>10.4f} (max {max(theirs):.4f}) {ratios[-1]:>6.2f}")
    print(f"every direction above the random mean: {all(r > 1 for r in ratios)}; ratios {min(ratios):.2f}-{max(ratios):.2f}")

    from ganforge import plotting

    steps = np.array([-2, -1, 0, 1, 2], np.float32)
    picks = [0, 1, 2] if labels is None else [int(np.flatnonzero(labels == c)[0]) for c in (2, 4, 7)]
    rows = []
    for v in sampler.directions:
        zs = np.concatenate([z[p] + steps[:, None] * v for p in picks]).astype(np.float32)
        ls = None if labels is None else np.repeat(labels[picks], len(steps))
        rows.append(sampler.generate(zs, ls))
    plotting.image_grid(np.concatenate(rows), nrow=len(picks) * len(steps)).save(args.picture)
    print(f"wrote {args.picture}: a row per direction; per sample, -2, -1, 0, +1, +2 standard deviations")


if __name__ == "__main__":
    main()

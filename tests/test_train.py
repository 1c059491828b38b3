"""Training end to end: it learns, it resumes exactly, it writes a run directory."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ganforge import checkpoint, contracts, rundir
from ganforge.builtin.datasets import ring_modes
from ganforge.config import TrainConfig
from ganforge.errors import UsageError
from ganforge.models import load_generator
from ganforge.training import train

SHARED_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data")

def run(tmp_path, **settings):
    cfg = TrainConfig(out_dir=str(tmp_path / "runs"), **settings)
    return train(cfg, progress=False)


def sample(G, n=5000):
    with torch.no_grad():
        return G(torch.randn(n, G.latent_dim, generator=torch.Generator().manual_seed(1)))


def test_gaussian1d_generator_matches_target_mean_and_std(tmp_path):
    run_dir = run(tmp_path, arch="mlp", loss="bce", dataset="gaussian1d", latent_dim=4, steps=600,
                  batch_size=256, lr_g=1e-3, lr_d=1e-3, arch_options={"hidden": 32, "layers": 2},
                  checkpoint_every=10_000, sample_every=10_000)
    x = sample(load_generator(run_dir)[0])
    assert x.mean().item() == pytest.approx(4.0, abs=0.25)  # the target is N(4, 1.25^2)
    assert x.std().item() == pytest.approx(1.25, rel=0.25)


def test_ring_run_covers_several_modes(tmp_path):
    run_dir = run(tmp_path, arch="mlp", loss="lsgan", dataset="ring", latent_dim=2, steps=1500, batch_size=256,
                  lr_g=1e-4, lr_d=1e-4, arch_options={"hidden": 128, "layers": 2}, checkpoint_every=10_000,
                  sample_every=10_000)
    x = sample(load_generator(run_dir)[0], 2500)
    dist, nearest = torch.cdist(x, ring_modes()).min(dim=1)
    high_quality = dist < 3 * 0.02  # within 3 standard deviations of its nearest mode (VEEGAN)
    covered = nearest[high_quality].unique().numel()
    assert covered >= 5, f"only {covered} of 8 modes covered"
    assert (dist < 0.25).float().mean() > 0.2  # and a good part of the mass is near the ring's modes


RESUME_CASES = {
    "mlp-ring-wgan-gp": dict(arch="mlp", loss="wgan-gp", dataset="ring", latent_dim=8, batch_size=64,
                             arch_options={"hidden": 32}, data_options={"n": 2000}, d_steps=2),
    "dcgan-digits-ema-conditional": dict(arch="dcgan", loss="lsgan", dataset="digits", image_size=16,
                                         latent_dim=8, batch_size=16, ema=True, conditional=True,
                                         arch_options={"width": 8}),
    "dcgan-digits-ada-lazy-r1-spectral": dict(arch="dcgan", loss="hinge", dataset="digits", image_size=16,
                                              latent_dim=8, batch_size=16, augment="ada", r1=1.0, reg_every=3,
                                              augment_options={"kimg": 0.2, "interval": 1},
                                              arch_options={"width": 8, "d_norm": "spectral"}),
    "resnet-stacked-mnist-rpgan-r1-r2": dict(arch="resnet", loss="rpgan", dataset="stacked-mnist", image_size=16,
                                             data_root=SHARED_DATA, latent_dim=8, batch_size=16, ema=True,
                                             r1=1.0, r2=1.0, reg_every=1, arch_options={"width": 8},
                                             data_options={"split": "test", "n": 256}),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, case):
    settings = dict(RESUME_CASES[case], log_every=3, sample_every=5, checkpoint_every=4)
    straight = run(tmp_path / "a", steps=10, **settings)
    interrupted = run(tmp_path / "b", steps=6, **settings)  # checkpoints at 4 and 6
    (interrupted / "checkpoints" / "step-6.safetensors").unlink()  # as if killed between 4 and 6
    from ganforge.config import load_toml
    from ganforge.layering import resolve

    cfg = resolve(load_toml(interrupted / "config.toml"), {"steps": 10})
    train(cfg, interrupted, resume=True, progress=False)
    a = checkpoint.load(straight / "checkpoints" / "step-10.safetensors")
    b = checkpoint.load(interrupted / "checkpoints" / "step-10.safetensors")
    for part in ("G", "D", "ema"):
        if a[part] is not None:
            assert a[part].keys() == b[part].keys()
            for key in a[part]:
                assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(a["opt_d"]["state"][0][key], b["opt_d"]["state"][0][key])
    assert a["augment"].keys() == b["augment"].keys()
    for key, value in a["augment"].items():  # ADA's p and its running statistics
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["augment"][key])), f"augment.{key} differs"
    if case.startswith("dcgan-digits-ada"):
        assert 0 < a["augment"]["p"] < 1
    steps_logged = [json.loads(line)["step"] for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == [3, 6, 9, 10]  # what was logged after the checkpoint was replaced, not doubled
    pictures = sorted(p.name for p in (interrupted / "samples").iterdir())
    assert pictures == ["step-0.png", "step-10.png", "step-5.png"]  # step-6.png, of weights since replaced, is gone
    assert Image.open(interrupted / "progress.gif").n_frames == 7  # step-0.png of the first part, then 5..10


def test_run_directory_contents(tmp_path):
    run_dir = run(tmp_path, arch="dcgan", loss="hinge", image_size=16, latent_dim=8, batch_size=16, steps=6,
                  log_every=2, sample_every=3, checkpoint_every=2, keep_checkpoints=2, ema=True,
                  arch_options={"width": 8})
    assert run_dir.name == "dcgan-hinge-digits-001"  # arch, loss, dataset
    names = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")}
    assert {"config.toml", "run.json", "metrics.jsonl", "loss.png", "samples/step-0.png", "samples/step-3.png",
            "samples/step-6.png",
            "checkpoints/step-4.safetensors", "checkpoints/step-6.safetensors"} <= names
    assert "checkpoints/step-2.safetensors" not in names  # only the last 2 kept
    with Image.open(run_dir / "progress.gif") as gif:  # about 24 pictures of the run in order, the last held longest
        assert gif.n_frames == 7 and gif.size == Image.open(run_dir / "samples" / "step-3.png").size
        gif.seek(6)
        assert gif.info["duration"] == 2000
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(r["images_per_s"] > 0 and set(r) == {"step", "d_loss", "g_loss", "images_per_s"} for r in records)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["providers"]["loss"] == {"kind": "losses", "name": "hinge", "plugin": "ganforge.builtin.losses",
                                         "package": "ganforge", "version": meta["ganforge_version"]}
    state = checkpoint.load(run_dir / "checkpoints" / "step-6.safetensors")
    assert state["config"]["loss"] == "hinge" and state["step"] == 6
    assert state["ema"].keys() == state["G"].keys()
    assert run(tmp_path, arch="dcgan", loss="hinge", image_size=16, batch_size=16, steps=1,
               arch_options={"width": 8}).name == "dcgan-hinge-digits-002"  # never an existing directory


def test_epochs_set_the_number_of_steps(tmp_path):
    run_dir = run(tmp_path, arch="mlp", dataset="ring", data_options={"n": 1000}, batch_size=100, epochs=2,
                  d_steps=2, arch_options={"hidden": 8})
    assert rundir.find(run_dir).name == "step-10.safetensors"  # 2 epochs x 10 batches / 2 D steps


@pytest.mark.parametrize("settings,graphs", [
    (dict(arch="mlp", loss="wgan-gp", dataset="ring", arch_options={"hidden": 16, "layers": 1},
          data_options={"n": 256}), 3),  # G, D for the G step (wgan-gp's penalty needs the plain D)
    (dict(arch="resnet", loss="rpgan", dataset="digits", image_size=16, r1=1.0, r2=1.0, reg_every=1,
          arch_options={"width": 8}), 4),  # R3GAN's recipe, the double backward of R1 and R2 on every D step;
], ids=["mlp-wgan-gp", "resnet-rpgan-r1-r2"])  # G, and D for its loss, and frozen on real and on fake samples
def test_bf16_and_compile_on_cpu_leave_clean_checkpoints(tmp_path, settings, graphs):
    from torch._dynamo.utils import counters

    counters.clear()
    run_dir = run(tmp_path, latent_dim=4, batch_size=32, steps=8, precision="bf16", compile=True, **settings)
    assert 0 < counters["stats"]["unique_graphs"] <= graphs  # compiled once, not per step
    state = checkpoint.load(rundir.find(run_dir))
    assert not any("_orig_mod" in key for key in [*state["G"], *state["D"]])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor([r["d_loss"], r["g_loss"]])).all() for r in records)


@pytest.mark.parametrize("settings,message", [
    (dict(precision="fp16", device="cpu"), "--precision fp16 needs a CUDA GPU (device is cpu); use --precision bf16"),
    (dict(conditional=True, dataset="gaussian1d", arch="mlp"),
     "--conditional needs class labels, and dataset 'gaussian1d' has none"),
    (dict(batch_size=5000), "batch size 5000 is larger than the dataset (1797 samples); lower --batch-size"),
    (dict(image_size=24), "dcgan needs square power-of-two images of at least 16x16, got 24x24"),
])
def test_bad_settings_fail_before_anything_is_written(tmp_path, settings, message):
    with pytest.raises(UsageError) as err:
        run(tmp_path, steps=1, **settings)
    assert str(err.value).startswith(message)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_cuda_without_gpu_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="--device cuda but no CUDA GPU is available; use --device cpu"):
        run(tmp_path, device="cuda", steps=1)


def test_wall_clock_checkpoints(tmp_path):
    run_dir = run(tmp_path, arch="mlp", dataset="ring", data_options={"n": 256}, batch_size=32, steps=4,
                  checkpoint_every=1000, checkpoint_minutes=1e-9, keep_checkpoints=10, arch_options={"hidden": 8})
    assert [p.name for p in rundir.checkpoints(run_dir)] == [f"step-{i}.safetensors" for i in range(1, 5)]


def test_resume_is_exact_with_lr_decay_packing_and_evaluation(tmp_path):
    """Linear decay is a function of the step; evaluation must not draw from the run's random stream."""
    settings = dict(arch="mlp", loss="bce", dataset="ring", latent_dim=2, batch_size=32, pack=2, ema=True,
                    lr_decay="linear", arch_options={"hidden": 16}, data_options={"n": 1000}, steps=10,
                    checkpoint_every=4, eval_every=3, eval_samples=200, keep_best="high_quality", sample_every=5)
    straight = run(tmp_path / "a", **settings)
    killed = run(tmp_path / "b", **settings)
    for name in ("step-8", "step-10"):  # as if killed between steps 4 and 8
        (killed / "checkpoints" / f"{name}.safetensors").unlink()
    from ganforge.config import load_toml
    from ganforge.layering import resolve

    train(resolve(load_toml(killed / "config.toml")), killed, resume=True, progress=False)
    a = checkpoint.load(straight / "checkpoints" / "step-10.safetensors")
    b = checkpoint.load(killed / "checkpoints" / "step-10.safetensors")
    for part in ("G", "D", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    # the learning rate of the last step: 2e-4 x (1 - 9/10)
    assert a["opt_g"]["param_groups"][0]["lr"] == pytest.approx(2e-4 * 0.1)
    evals = lambda d: [r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "modes" in r]  # noqa: E731
    assert evals(straight) == evals(killed) and [r["step"] for r in evals(killed)] == [3, 6, 9, 10]


@pytest.mark.parametrize("settings", [
    dict(arch="mlp", dataset="ring", loss="wgan-gp", arch_options={"hidden": 16, "d_norm": "batch"}, pack=2),
    dict(arch="dcgan", dataset="digits", arch_options={"width": 8, "d_norm": "spectral"}, augment="ada",
         conditional=True, ema=True),
])
def test_the_dry_step_leaves_training_bit_identical(tmp_path, monkeypatch, settings):
    """The loss is checked on copies of G and D with a forked random stream: BatchNorm statistics, spectral
    norm's vectors, ADA's state and the run's random draws are as if it had not run."""
    common = dict(batch_size=16, steps=3, data_options={"n": 256} if settings["dataset"] == "ring" else {},
                  checkpoint_every=3, sample_every=1000, seed=3, **settings)
    checked = checkpoint.load(rundir.find(run(tmp_path / "a", **common)))
    monkeypatch.setattr(contracts, "check_loss", lambda *args: None)
    unchecked = checkpoint.load(rundir.find(run(tmp_path / "b", **common)))
    for part in ("G", "D", "opt_d", "augment", "rng"):
        assert json.dumps(checked[part], default=lambda t: t.tolist()) == \
            json.dumps(unchecked[part], default=lambda t: t.tolist()), part

"""The Python API mirrors the CLI: the same config layers and checks, the same files; and the
examples/python_api.py script runs."""
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import ganforge
from ganforge import config, layering
from ganforge.cli import app
from ganforge.errors import UsageError

ROOT = Path(__file__).parents[1]
TINY = dict(arch="mlp", dataset="ring", latent_dim=2, batch_size=32, arch_options={"hidden": 16},
            data_options={"n": 256})


def recorded(run_dir) -> dict:
    values = tomllib.loads((Path(run_dir) / "config.toml").read_text())
    return {k: v for k, v in values.items() if k not in ("out_dir", "name")}


def test_the_api_and_the_cli_build_the_same_config(tmp_path):
    """wgan-gp on the ring: defaults < dataset (ring) < loss (wgan-gp) < the ring's for wgan-gp < what was
    given, either way."""
    run = ganforge.train(loss="wgan-gp", dataset="ring", steps=1, batch_size=32, data_options={"n": 256},
                         arch_options={"hidden": 16}, lr_g=3e-4, out_dir=str(tmp_path), name="api")
    result = CliRunner().invoke(app, ["train", "--loss", "wgan-gp", "--dataset", "ring", "--steps", "1",
                                      "--batch-size", "32", "--data-opt", "n=256", "--arch-opt", "hidden=16",
                                      "--lr-g", "3e-4", "--out-dir", str(tmp_path), "--name", "cli",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    values = recorded(run)
    assert values == recorded(tmp_path / "cli")
    assert values["d_steps"] == 5 and values["betas"] == [0.0, 0.9]  # the loss's
    assert values["lr_d"] == 1e-3 and values["lr_decay"] == "linear"  # the ring's for wgan-gp, over the loss's 1e-4
    assert values["arch"] == "mlp" and values["pack"] == 2 and values["standardize"]  # the dataset's
    assert values["arch_options"] == {"hidden": 16, "layers": 3} and values["lr_g"] == 3e-4  # given, merged


def test_build_layers_each_win_over_the_one_below(tmp_path, monkeypatch):
    import ganforge.device

    monkeypatch.setattr(ganforge.device, "fast_settings", lambda device: {"channels_last": True, "precision": "bf16"})
    (tmp_path / "c.toml").write_text('dataset = "gaussian1d"\nloss = "wgan"\nd_steps = 3\nprecision = "fp32"\n')
    said = []
    cfg = layering.build({"lr_d": 1e-3, "steps": None}, tmp_path / "c.toml", fast=True, announce=said.append)
    assert (cfg.arch, cfg.pack) == ("mlp", 2)               # dataset over the defaults
    assert (cfg.lr_g, cfg.betas) == (5e-5, [0.0, 0.9])      # loss over the dataset (which recommends 5e-4)
    assert cfg.channels_last and cfg.precision == "fp32"    # --fast over the loss; the file over --fast
    assert cfg.d_steps == 3 and cfg.lr_d == 1e-3            # the file over the loss; given over everything
    assert cfg.steps == 3000                                # None is "not given"
    assert said == ["--fast picked: channels_last=True"]


def test_the_toys_settings_for_the_wasserstein_losses_are_for_that_pair_alone(builtins_only):
    ring = layering.build({"dataset": "ring", "loss": "wgan-gp"})
    assert (ring.lr_g, ring.lr_d, ring.lr_decay) == (1e-3, 1e-3, "linear")  # the pair's
    assert (ring.d_steps, ring.betas, ring.batch_size) == (5, [0.0, 0.9], 512)  # the loss's, the ring's
    grid = layering.build({"dataset": "grid", "loss": "wgan-gp"})
    assert (grid.lr_g, grid.lr_d, grid.lr_decay, grid.d_steps) == (3e-4, 3e-4, "linear", 5)  # the pair's, the loss's
    for dataset, deeper_g, wgan_lr, wgan_r1 in (("ring", {}, 1e-3, 0.0), ("grid", {"g_layers": 4}, 6e-4, 1.0)):
        wgan, wgan_gp = (layering.build({"dataset": dataset, "loss": loss}) for loss in ("wgan", "wgan-gp"))
        assert (wgan.lr_g, wgan.lr_d, wgan.lr_decay, wgan.d_steps) == (wgan_lr, wgan_lr, "linear", 5)  # the pair's
        assert (wgan.r1, wgan_gp.r1) == (wgan_r1, 0.0)  # the pair's over the loss's 0
        assert (wgan.arch_options, wgan.loss_options) == (
            {"hidden": 128, "layers": 3, **deeper_g, "d_norm": "spectral"}, {"clip": 1.0})  # the toy's, the pair's
        assert wgan_gp.arch_options == {"hidden": 128, "layers": 3, **deeper_g} and wgan_gp.loss_options == {}
    assert layering.build({"dataset": "ring", "loss": "wgan-gp", "lr_decay": "none"}).lr_decay == "none"


def test_the_image_recipe_gives_way_to_losses_with_their_own_constraint_and_to_other_archs(builtins_only):
    from ganforge.builtin.recipes import IMAGE as IMAGE_SETTINGS

    assert layering.build({"dataset": "mnist"}).r1 == IMAGE_SETTINGS["r1"] > 0
    for loss in ("wgan", "wgan-gp"):  # clipping or a gradient penalty already holds D
        assert layering.build({"dataset": "digits", "loss": loss}).r1 == 0
    assert layering.build({"dataset": "digits", "arch": "mlp"}).arch_options == {}  # dcgan's d_norm is not mlp's


def test_labelled_image_datasets_train_class_conditional_unless_told_otherwise(builtins_only):
    for dataset in ("digits", "mnist", "fashion-mnist", "cifar10"):
        assert layering.build({"dataset": dataset}).conditional
    assert not layering.build({"dataset": "folder"}).conditional  # its images may have no classes
    assert not layering.build({"dataset": "ring"}).conditional
    assert not layering.build({"dataset": "digits", "conditional": False}).conditional
    told = []
    packed = layering.build({"dataset": "digits", "pack": 2}, announce=told.append)
    assert (packed.pack, packed.conditional) == (2, False)  # a pack mixes classes: the recommendation gives way
    assert told == ["recommended settings left out (they conflict with yours): conditional=True"]


@pytest.mark.parametrize("settings,message", [
    (dict(bogus=1), "unknown config key 'bogus' in the arguments of ganforge.train(); known keys: arch, "),
    (dict(precision="fp8"), "precision must be fp32, bf16 or fp16, got 'fp8' (in the arguments of ganforge.train())"),
    (dict(steps=3, epochs=1), "--steps and --epochs both set the length of training; give one"),
    (dict(loss="lsgn"), "unknown loss 'lsgn'; did you mean 'lsgan'?"),
])
def test_the_api_raises_the_clis_usage_errors(tmp_path, settings, message):
    with pytest.raises(ganforge.UsageError) as err:
        ganforge.train(out_dir=str(tmp_path), **settings)
    assert str(err.value).startswith(message)
    assert not any(tmp_path.iterdir())


def test_train_resume_load_export_evaluate(tmp_path):
    run = ganforge.train(**TINY, steps=4, ema=True, out_dir=str(tmp_path), name="r")
    assert ganforge.train(resume=run, steps=6) == run
    G, cfg = ganforge.load(run)
    assert isinstance(cfg, config.TrainConfig) and cfg.steps == 6 and not G.training
    assert G(torch.zeros(3, 2)).shape == (3, 2)
    with pytest.raises(ganforge.UsageError, match="--arch cannot change when resuming"):
        ganforge.train(resume=run, arch="dcgan")
    (path, diff), = ganforge.export(run, format="onnx", out=tmp_path / "g.onnx")
    assert path == tmp_path / "g.onnx" and diff < 1e-4
    from_run = ganforge.evaluate(run, samples=500, plot=tmp_path / "p.png")
    assert set(from_run) == {"modes", "high_quality", "reverse_kl"} and (tmp_path / "p.png").is_file()
    assert ganforge.evaluate(tmp_path / "g.onnx", samples=500) == pytest.approx(from_run, abs=1e-3)


def test_the_python_api_example_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "python_api.py"), "--steps", "40",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "example" / "export" / "generator.onnx").is_file()
    assert "high_quality" in proc.stdout and "wrote" in proc.stdout


def test_betas_take_any_sequence_and_usage_errors_are_value_errors(tmp_path):
    run = ganforge.train(**TINY, steps=1, betas=(0.5, 0.9), out_dir=str(tmp_path), name="r")
    assert "betas = [0.5, 0.9]" in (run / "config.toml").read_text()
    with pytest.raises(ValueError, match=r"config key 'betas' in the arguments of ganforge.train\(\) must be two "
                                         r"numbers in \[0, 1\), got \(0.5, 1.5\)"):
        ganforge.train(**TINY, steps=1, betas=(0.5, 1.5), out_dir=str(tmp_path), name="r2")
    assert issubclass(ganforge.UsageError, ValueError)

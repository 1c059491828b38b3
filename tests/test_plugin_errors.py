"""Plugin errors end to end: a misbehaving plugin stops `ganforge train` with exit code 2 and one line naming
the plugin, the part and the contract, never a traceback, and leaves no run directory behind; a missing or
disabled plugin names the package or how to re-enable it; recommendations give way instead of failing."""
import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from ganforge import checkpoint, contracts, hookimpl, rundir
from ganforge.builtin.losses import NonSaturating
from ganforge.cli import app
from ganforge.config import TrainConfig
from ganforge.plugins import get_registry, plugin_registered, set_registry
from ganforge.training import train

runner = CliRunner()
TINY = ["--arch", "mlp", "--dataset", "ring", "--data-opt", "n=256", "--arch-opt", "hidden=16", "--batch-size", "32",
        "--steps", "2", "--no-progress"]
BAD = '''
import torch
from torch import nn

from ganforge import Augmentation, GANLoss, hookimpl
from ganforge.builtin.architectures import mlp
from ganforge.builtin.losses import NonSaturating
from ganforge.interfaces import Data


class Misnamed:
    def d_loss(self, D, real, fake, labels=None):
        return D(fake, labels).mean()

    def g_loss(self, D, real, fake, labels=None):
        return -D(fake, labels).mean()


class Unwritten(GANLoss):
    pass


class Shrink(Augmentation):
    def __init__(self, spec):
        pass

    def __call__(self, x):
        return x[:, :1]


class Detaching(Augmentation):
    def __init__(self, spec):
        pass

    def __call__(self, x):
        return x.detach() + 0.1


class FloatLoss(NonSaturating):
    def discriminator_loss(self, D, real, fake, labels=None):
        return super().discriminator_loss(D, real, fake, labels).item()


class DetachedLoss(NonSaturating):
    def generator_loss(self, D, real, fake, labels=None):
        return super().generator_loss(D, real, fake, labels).detach()


class PerSampleLoss(NonSaturating):
    def discriminator_loss(self, D, real, fake, labels=None):
        return torch.nn.functional.softplus(D(fake, labels))


class Column(nn.Module):
    def __init__(self, D):
        super().__init__()
        self.D = D

    def forward(self, x, labels=None):
        return self.D(x, labels)[:, None]


def column(spec, latent_dim, **options):
    G, D = mlp(spec, latent_dim, **options)
    return G, Column(D)


class Half(nn.Module):
    def __init__(self, G):
        super().__init__()
        self.G, self.latent_dim, self.output_shape = G, G.latent_dim, G.output_shape

    def forward(self, z, labels=None):
        return self.G(z, labels)[:, :1]


def half(spec, latent_dim, **options):
    G, D = mlp(spec, latent_dim, **options)
    return Half(G), D


def byte_floats(root, image_size, download, **options):
    return Data(torch.full((8, 1, 4, 4), 255.0))


def short_labels(root, image_size, download, **options):
    return Data(torch.zeros(8, 2), labels=torch.zeros(7))


def a_list(root, image_size, download, **options):
    return [torch.zeros(2)]


@hookimpl
def register_losses(register):
    register("float-loss", FloatLoss)
    register("detached-loss", DetachedLoss)
    register("per-sample-loss", PerSampleLoss)
    register("misnamed", Misnamed)
    register("unwritten", Unwritten)


@hookimpl
def register_augmentations(register):
    register("shrink", Shrink)
    register("detaching", Detaching)
    register("noise-class", lambda spec: Shrink)


@hookimpl
def register_architectures(register):
    register("column", column)
    register("half", half)


@hookimpl
def register_datasets(register):
    register("byte-floats", byte_floats)
    register("short-labels", short_labels)
    register("a-list", a_list)
'''
WHO = "(plugin 'bad', package ganforge-bad)"
CASES = {
    "loss returns a float": (["--loss", "float-loss"], f"loss 'float-loss' {WHO}: discriminator_loss returned a float, "
                             "not a scalar tensor; return a torch tensor (e.g. F.softplus(-D(real, labels).float())"
                             ".mean()), not a Python number"),
    "loss detached": (["--loss", "detached-loss"], f"loss 'detached-loss' {WHO}: generator_loss returned a tensor that "
                      "does not depend on G's output through autograd (requires_grad is False); compute it from D(...) "
                      "with torch ops: did you call .item() or detach()?"),
    "loss per sample": (["--loss", "per-sample-loss"], f"loss 'per-sample-loss' {WHO}: discriminator_loss returned a "
                        "tensor of shape [16], not a scalar; reduce it to one number (e.g. .mean())"),
    "logits [B, 1], packed": (["--arch", "column"], f"architecture 'column' {WHO}: the discriminator returned shape "
                              "[2, 1] for 4 samples packed by 2; it must return raw logits of shape [2] ([B/pack]): "
                              "flatten the trailing singleton dimension (.flatten() or .squeeze(1))"),
    "logits [B, 1]": (["--arch", "column", "--pack", "1"], f"architecture 'column' {WHO}: the discriminator returned "
                      "shape [2, 1] for 2 samples; it must return raw logits of shape [2] ([B]): flatten the trailing "
                      "singleton dimension (.flatten() or .squeeze(1))"),
    "generator shape": (["--d-arch", "mlp", "--arch", "half"], f"architecture 'half' {WHO}: the generator returned "
                        "shape [4, 1] for 4 latents; it must return [4, 2] ([B, *spec.shape])"),
    "float images out of range": (["--dataset", "byte-floats"], f"dataset 'byte-floats' {WHO}: float images must be "
                                  "in [-1, 1], got values in [255, 255]; scale them (x / 127.5 - 1 for 0..255) or "
                                  "pass uint8"),
    "Data refuses labels": (["--dataset", "short-labels"], f"dataset 'short-labels' {WHO}: Data(...) refused what the "
                            "factory passed: labels must have shape [8], got (7,)"),
    "loss not a GANLoss": (["--loss", "misnamed"], f"loss 'misnamed' {WHO}: a Misnamed has no discriminator_loss, "
                           "generator_loss, after_discriminator_step, recommended, double_backward, grad_scale; subclass "
                           "ganforge.GANLoss and implement discriminator_loss and generator_loss"),
    "loss methods not written": (["--loss", "unwritten"], f"loss 'unwritten' {WHO}: Unwritten does not implement "
                                 "discriminator_loss and generator_loss, which a ganforge.GANLoss must; define them "
                                 "in its class"),
    "augmentation changes the shape": (["--augment", "shrink"], f"augmentation 'shrink' {WHO} changed the batch's "
                                       "shape from [2, 2] to [2, 1]; an augmentation must return a batch of the same "
                                       "shape (D sees it in place of the batch)"),
    "augmentation detaches": (["--augment", "detaching"], f"augmentation 'detaching' {WHO} returned a batch that does "
                              "not depend on its input through autograd, so no gradient reaches the generator; "
                              "transform it with differentiable torch ops (no detach(), .numpy() or torch.no_grad())"),
    "augmentation factory returns a class": (["--augment", "noise-class"], f"augmentation 'noise-class' {WHO}: got "
                                             "the class Shrink, not an object; use an instance, Shrink()"),
    "augmentation policy in the name": (["--augment", "diffaugment:color"], "--augment diffaugment:color: the policy "
                                        "has its own option now; use --augment diffaugment --augment-opt policy=color"),
    "not Data": (["--dataset", "a-list"], f"dataset 'a-list' {WHO} returned a list, not ganforge.interfaces.Data or "
                 "StreamingData; return Data(x, labels, num_classes)"),
}


@pytest.mark.parametrize("case", CASES)
def test_misbehaving_plugin_is_one_line_exit_2_and_writes_nothing(case, site, tmp_path):
    site("ganforge-bad", "bad", "bad_parts", BAD)
    args, message = CASES[case]
    result = runner.invoke(app, ["train", *TINY, *args, "--out-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"Error: {message}\n"
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # checked on a dry step: not even the parent is made


def test_in_a_subprocess_through_the_entry_point(site, tmp_path):
    site("ganforge-bad", "bad", "bad_parts", BAD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site.root), *sys.path])}
    result = subprocess.run([sys.executable, "-m", "ganforge", "train", *TINY, "--loss", "float-loss",
                             "--out-dir", str(tmp_path / "runs")], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"Error: {CASES['loss returns a float'][1]}\n"
    assert "Traceback" not in result.stdout and not (tmp_path / "runs").exists()  # not even the parent


@pytest.mark.parametrize("settings", [
    dict(arch="mlp", dataset="ring", data_options={"n": 256}, arch_options={"hidden": 16}, batch_size=32),
    dict(arch="dcgan", dataset="digits", image_size=16, arch_options={"width": 8}, batch_size=16, conditional=True),
])
def test_the_build_time_checks_leave_training_bit_identical(tmp_path, monkeypatch, settings):
    """The dummy batch changes no weight, buffer (BatchNorm statistics) or RNG state: a run is the same
    with and without the checks."""
    def final_state(name):
        cfg = TrainConfig(out_dir=str(tmp_path), name=name, steps=3, **settings)
        return checkpoint.load(rundir.find(train(cfg, progress=False)))

    checked = final_state("checked")
    monkeypatch.setattr(contracts, "check_models", lambda *args: None)
    unchecked = final_state("unchecked")
    for part in ("G", "D", "ema"):
        assert (checked[part] is None) == (unchecked[part] is None)
        for key, value in (checked[part] or {}).items():
            assert torch.equal(value, unchecked[part][key]), (part, key)
    assert torch.equal(checked["rng"]["cpu"], unchecked["rng"]["cpu"])


XARCH = ("from ganforge import hookimpl\nfrom ganforge.builtin.architectures import mlp\n\n"
         "@hookimpl\ndef register_architectures(register):\n    register('mlp', mlp)\n")
XDATA = ("from ganforge import hookimpl\nfrom ganforge.builtin.datasets import ring\n"
         "from ganforge.builtin.losses import LeastSquares\n\n"
         "@hookimpl\ndef register_datasets(register):\n    register('ring2', ring)\n\n"
         "@hookimpl\ndef register_losses(register):\n    register('lsgan', LeastSquares)\n")


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_line_error(result, message):
    assert result.exit_code == 2, result.output
    assert result.stderr == f"Error: {message}\n"
    assert "Traceback" not in result.output


def test_missing_or_disabled_plugins_name_the_package_and_the_fix(site, tmp_path):
    """A run whose parts came (by qualified names, beside built-ins of the same names) from two plugins:
    resuming, exporting and evaluating it without them say which package to install or how to re-enable it."""
    site("ganforge-extra-arch", "xarch", "xarch", XARCH)
    site("ganforge-extra-data", "xdata", "xdata", XDATA)
    result = invoke("train", "--arch", "ganforge:mlp", "--d-arch", "xarch:mlp", "--loss", "ganforge-extra-data:lsgan",
                    "--dataset", "ring2", "--data-opt", "n=256", "--arch-opt", "hidden=16", "--batch-size", 32,
                    "--steps", 2, "--no-progress", "--out-dir", tmp_path, "--name", "run")
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    # a plugin gone: the package to install, even though a built-in has the same (bare) name
    (site.root / "xdata.py").unlink()
    (site.root / "ganforge_extra_data-1.0.dist-info" / "entry_points.txt").write_text("")
    set_registry(None)
    data = "from package ganforge-extra-data 1.0 (plugin 'xdata'), which is not installed: pip install ganforge-extra-data"
    one_line_error(invoke("train", "--resume", run, "--no-progress"), f"resuming {run} needs loss 'lsgan' {data}")
    one_line_error(invoke("evaluate", run), f"evaluating {run} needs dataset 'ring2' {data}")
    result = invoke("evaluate", run, "--dataset", "ring", "-n", 64)  # another dataset: the run's is not needed
    assert result.exit_code == 0, result.output
    # a plugin disabled, by its entry-point name or its package name: how to enable it again
    arch = "needs architecture 'mlp' from package ganforge-extra-arch 1.0 (plugin 'xarch'), which is disabled:"
    one_line_error(invoke("--disable-plugin", "xarch", "export", run),
                   f"exporting {run} {arch} drop --disable-plugin xarch")
    one_line_error(invoke("train", "--resume", run, "--no-progress",
                          env={"GANFORGE_DISABLE_PLUGINS": "ganforge-extra-arch"}),
                   f"resuming {run} {arch} remove ganforge-extra-arch from GANFORGE_DISABLE_PLUGINS")
    one_line_error(invoke("--disable-plugin", "ganforge-extra-arch", "evaluate", run),
                   f"evaluating {run} {arch} drop --disable-plugin ganforge-extra-arch")


def test_disabling_a_name_no_plugin_has_warns_and_carries_on(site, tmp_path):
    site("ganforge-extra-arch", "xarch", "xarch", XARCH)
    result = invoke("--disable-plugin", "nope", "--disable-plugin", "ganforge-extra-arch", "plugins")
    assert result.exit_code == 0, result.output
    names = ", ".join(p.name for p in get_registry().plugins)
    assert "xarch" in names
    assert result.stderr == f"Warning: no plugin named 'nope' to disable; plugins: {names}\n"
    assert "xarch  (ganforge-extra-arch 1.0)  disabled\n" in result.stdout  # disabled by its package name
    result = invoke("train", *TINY, "--out-dir", tmp_path, env={"GANFORGE_DISABLE_PLUGINS": "nope,xarch"})
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("Warning: no plugin named 'nope' to disable; plugins: ganforge.builtin.")


POINTS = ("import torch\nfrom ganforge import hookimpl\nfrom ganforge.interfaces import Data\n\n"
          "def points(root, image_size, download, n=64):\n"
          "    return Data(torch.randn(n, 2), torch.arange(n) % 2)\n\n"
          "points.recommended = {'arch': 'mlp', 'standardize': True, 'pack': 2, 'batch_size': 16}\n\n"
          "@hookimpl\ndef register_datasets(register):\n    register('tiny-points', points)\n")
LEFT_OUT = "recommended settings left out (they conflict with yours): "


@pytest.mark.parametrize("args,dropped,recorded", [
    (["--dataset", "ring", "--conditional"], "pack=2", "pack = 1\n"),
    (["--dataset", "ring", "--batch-size", "33"], "pack=2", "pack = 1\n"),
    (["--dataset", "tiny-points", "--conditional"], "pack=2", "pack = 1\n"),
    (["--dataset", "tiny-points", "--data-path", "stream"], "standardize=True", "standardize = false\n"),
])
def test_a_recommended_setting_gives_way_to_what_the_user_set(site, tmp_path, args, dropped, recorded):
    site("ganforge-tiny-points", "tiny", "tiny_points", POINTS)
    result = invoke("train", *TINY, *args, "--out-dir", tmp_path, "--name", "run")
    assert result.exit_code == 0, result.output
    assert f"{LEFT_OUT}{dropped}\n" in result.stdout
    assert recorded in (tmp_path / "run" / "config.toml").read_text()


def test_what_the_user_set_still_conflicts(tmp_path):
    one_line_error(invoke("train", *TINY, "--conditional", "--pack", 2, "--out-dir", tmp_path),
                   "--pack cannot go with --conditional (a pack mixes classes); drop one of them")


class Registers:
    """An in-process plugin registering one loss class under the name "misspelt"."""

    def __init__(self, loss):
        self.loss = loss

    @hookimpl
    def register_losses(self, register):
        register("misspelt", self.loss)


class Misspelt(NonSaturating):
    recommended = {"d_step": 5}


def test_an_unknown_recommended_key_is_an_error_naming_the_loss(tmp_path):
    with plugin_registered(Registers(Misspelt), name="misspelt"):
        one_line_error(invoke("train", *TINY, "--loss", "misspelt", "--out-dir", tmp_path),
                       "unknown config key 'd_step' in the recommended settings of loss 'misspelt'; "
                       "did you mean 'd_steps'?")


JITTER = ("import torch\nfrom ganforge import Augmentation, hookimpl\n\n"
          "class Jitter(Augmentation):\n"
          "    def __init__(self, spec, std=0.01):\n"
          "        self.std = std\n"
          "    def __call__(self, x):\n"
          "        return x + self.std * torch.randn_like(x)\n\n"
          "@hookimpl\ndef register_augmentations(register):\n    register('jitter', Jitter)\n")


def test_every_part_records_its_provider_and_resuming_with_another_is_refused(site, tmp_path):
    """Two plugins provide `jitter`: a run made with one of them does not silently continue with the other's."""
    site("ganforge-jitter-a", "ja", "jitter_a", JITTER)
    site("ganforge-jitter-b", "jb", "jitter_b", JITTER)
    run = tmp_path / "run"
    result = invoke("--disable-plugin", "jb", "train", *TINY, "--augment", "jitter", "--eval-every", 2,
                    "--eval-metrics", "fid", "--eval-extractor", "raw", "--eval-samples", 64, "--out-dir", tmp_path,
                    "--name", "run")
    assert result.exit_code == 0, result.output
    providers = json.loads((run / "run.json").read_text())["providers"]
    assert providers["augmentation"] == {"kind": "augmentations", "name": "jitter", "plugin": "ja",
                                         "package": "ganforge-jitter-a", "version": "1.0"}
    assert providers["extractor"]["name"] == "raw" and providers["extractor"]["plugin"] == "ganforge.builtin.extractors"
    one_line_error(invoke("--disable-plugin", "ja", "train", "--resume", run, "--steps", 3, "--no-progress"),
                   f"resuming {run} needs augmentation 'jitter' from package ganforge-jitter-a 1.0 (plugin 'ja'), "
                   "which is disabled: drop --disable-plugin ja")
    result = invoke("--disable-plugin", "jb", "train", "--resume", run, "--steps", 3, "--no-progress")
    assert result.exit_code == 0, result.output

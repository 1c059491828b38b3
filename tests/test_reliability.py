"""Runs survive SIGTERM, SIGINT and SIGKILL; corrupt checkpoints and non-finite losses are handled;
no pickle is ever loaded; two gloo processes train with DistributedDataParallel."""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from typer.testing import CliRunner

from ganforge import checkpoint, hookimpl, rundir
from ganforge.builtin.losses import LeastSquares
from ganforge.cli import app
from ganforge.plugins import plugin_registered

TINY = ["--arch", "mlp", "--dataset", "ring", "--data-opt", "n=4096", "--arch-opt", "hidden=64",
        "--batch-size", "64", "--latent-dim", "4", "--no-ema", "--no-progress", "--log-every", "5",
        "--sample-every", "100000"]


def ganforge(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "ganforge", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def wait_for_training(run_parent: Path, proc, timeout=60):
    """Block until the child has logged metrics (it is in the training loop)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        logs = list(run_parent.glob("*/metrics.jsonl"))
        if logs and logs[0].read_text().strip():
            return logs[0].parent
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError("training did not start")


def final_weights(run_dir):
    state = checkpoint.load(rundir.find(run_dir))
    return state["step"], {f"{part}.{k}": v for part in ("G", "D") for k, v in state[part].items()}


def assert_same_weights(a, b):
    (step_a, wa), (step_b, wb) = a, b
    assert step_a == step_b and wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"


def reference_run(tmp_path, steps):
    proc = ganforge("train", *TINY, "--steps", steps, "--out-dir", tmp_path / "reference", "--name", "ref")
    assert proc.wait(120) == 0, proc.stdout.read()
    return tmp_path / "reference" / "ref"


def test_sigterm_checkpoints_then_resume_equals_an_uninterrupted_run(tmp_path):
    proc = ganforge("train", *TINY, "--steps", 100_000, "--checkpoint-every", 100_000, "--out-dir", tmp_path / "r")
    run_dir = wait_for_training(tmp_path / "r", proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert f"Continue with: ganforge train --resume {run_dir}" in out
    stopped_at = checkpoint.load(rundir.find(run_dir))["step"]
    assert 0 < stopped_at < 100_000
    target = stopped_at + 7
    proc = ganforge("train", "--resume", run_dir, "--steps", target, "--no-progress")
    assert proc.wait(120) == 0, proc.stdout.read()
    assert_same_weights(final_weights(run_dir), final_weights(reference_run(tmp_path, target)))


def test_second_ctrl_c_quits_at_once_without_corrupting_anything(tmp_path):
    proc = ganforge("train", *TINY, "--steps", 100_000, "--checkpoint-every", 1, "--out-dir", tmp_path)
    run_dir = wait_for_training(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    found = rundir.checkpoints(run_dir)
    assert found and all(checkpoint.load(p)["step"] > 0 for p in found)


def test_sigkill_at_random_moments_loses_nothing_but_the_last_steps(tmp_path):
    steps = 300
    reference = final_weights(reference_run(tmp_path, steps))
    rng = random.Random(1)
    for attempt in range(2):  # each kill lands at another moment (the suite's time allows two)
        parent = tmp_path / f"k{attempt}"
        # checkpoint at every step, so the kill often lands in the middle of a write
        proc = ganforge("train", *TINY, "--steps", steps, "--checkpoint-every", 1, "--out-dir", parent)
        run_dir = wait_for_training(parent, proc)
        time.sleep(rng.uniform(0, 0.5))
        proc.kill()
        proc.wait(30)
        assert int(rundir.checkpoints(run_dir)[-1].stem.split("-")[1]) < steps  # killed mid-run
        resumed = ganforge("train", "--resume", run_dir, "--no-progress")
        assert resumed.wait(300) == 0, resumed.stdout.read()
        assert not list((run_dir / "checkpoints").glob(".tmp-*"))
        assert_same_weights(final_weights(run_dir), reference)


def test_corrupt_checkpoint_is_reported_and_the_previous_one_used(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", *TINY, "--steps", 6, "--checkpoint-every", 2, "--out-dir", str(tmp_path),
                                 "--name", "run"])
    assert result.exit_code == 0, result.output
    latest = tmp_path / "run" / "checkpoints" / "step-6.safetensors"
    data = bytearray(latest.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the tensor data: safetensors alone would not notice
    latest.write_bytes(bytes(data))
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "run"), "--steps", 8])
    assert result.exit_code == 0, result.output
    assert f"Warning: {latest} is corrupt" in result.output
    assert "; trying the checkpoint before it" in result.output
    assert "steps 4->8" in result.output


class NaNAtCall(LeastSquares):
    """lsgan, except that the discriminator loss is NaN on its `at`-th call."""

    def __init__(self, at: int = 3):
        self.at, self.calls = at, 0

    def discriminator_loss(self, D, real, fake, labels=None):
        self.calls += 1
        value = super().discriminator_loss(D, real, fake, labels)
        return value * float("nan") if self.calls == self.at else value


class NaNPlugin:
    @hookimpl
    def register_losses(self, register):
        register("nan-at", NaNAtCall)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with plugin_registered(NaNPlugin(), name="nan"):
        result = CliRunner().invoke(app, ["train", *TINY, "--loss", "nan-at", "--steps", 10, "--checkpoint-every",
                                          2, "--out-dir", str(tmp_path), "--name", "run"])
    assert result.exit_code == 1
    assert (f"Error: non-finite loss at step 3 (d_loss=nan, g_loss=nan); stopped, the last good checkpoint is "
            f"kept in {tmp_path / 'run' / 'checkpoints'}. Lower the learning rates, or pass --on-nonfinite skip\n"
            ) in result.output
    assert [p.name for p in rundir.checkpoints(tmp_path / "run")] == ["step-2.safetensors"]


def test_nonfinite_loss_can_be_skipped_and_counted(tmp_path):
    with plugin_registered(NaNPlugin(), name="nan"):
        result = CliRunner().invoke(app, ["train", *TINY, "--loss", "nan-at", "--loss-opt", "at=2", "--steps", 5,
                                          "--on-nonfinite", "skip", "--log-every", 1, "--out-dir", str(tmp_path),
                                          "--name", "run"])
    assert result.exit_code == 0, result.output
    assert "1 updates skipped" in result.output
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped"] == 1
    assert math.isnan(records[1]["d_loss"])  # logged as it was, and plotted with a gap
    assert (tmp_path / "run" / "loss.png").is_file() and (tmp_path / "run" / "progress.gif").is_file()
    state = checkpoint.load(rundir.find(tmp_path / "run"))
    assert state["skipped"] == 1 and all(torch.isfinite(v).all() for v in state["D"].values())


def test_planted_pickles_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    runner = CliRunner()
    assert runner.invoke(app, ["train", *TINY, "--steps", 2, "--name", "run"]).exit_code == 0
    ckpt = tmp_path / "runs" / "run" / "checkpoints"
    for p in ckpt.iterdir():
        p.write_bytes(pickle.dumps(Exploit()))
    torch.save(Exploit(), tmp_path / "evil.pt")  # a pickle posing as TorchScript
    result = runner.invoke(app, ["train", "--resume", "runs/run"])
    assert result.exit_code == 2
    assert "Warning: runs/run/checkpoints/step-2.safetensors is not a readable ganforge checkpoint" \
        in result.output
    assert "Error: no readable checkpoint in runs/run: every one is corrupt; start a new run" in result.output
    for args in (["export", "runs/run"], ["sample", "evil.pt"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
    assert not marker.exists()


def test_run_directories_are_never_clobbered(tmp_path):
    runner = CliRunner()
    common = [*TINY, "--steps", 2, "--out-dir", str(tmp_path), "--name", "mine"]
    assert runner.invoke(app, ["train", *common]).exit_code == 0
    before = (tmp_path / "mine" / "checkpoints" / "step-2.safetensors").read_bytes()
    result = runner.invoke(app, ["train", *common])
    assert result.exit_code == 2
    assert result.output == (f"Error: run directory {tmp_path / 'mine'} already exists; pick another --name, "
                             "continue it with --resume, or replace it with --overwrite\n")
    assert (tmp_path / "mine" / "checkpoints" / "step-2.safetensors").read_bytes() == before
    result = runner.invoke(app, ["train", *common, "--overwrite", "--seed", 5])
    assert result.exit_code == 0
    assert (tmp_path / "mine" / "checkpoints" / "step-2.safetensors").read_bytes() != before


def test_two_gloo_processes_train_write_once_and_resume(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = ganforge("train", *TINY, "--loss", "wgan-gp", "--devices", 2, "--steps", 6, "--checkpoint-every", 3,
                    "--out-dir", tmp_path, env=env)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    runs = list(tmp_path.iterdir())
    assert [r.name for r in runs] == ["mlp-wgan-gp-ring-001"]  # one run directory, written by rank 0 only
    run_dir = runs[0]
    assert out.count("done: ") == 1 and "2 processes" in out
    state = checkpoint.load(rundir.find(run_dir))
    assert state["step"] == 6 and state["world_size"] == 2
    assert not any(k.startswith("module.") for k in state["G"])
    records = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records == [5, 6]  # logged once, not once per process
    # resume with a different number of processes
    proc = ganforge("train", "--resume", run_dir, "--steps", 9, "--no-progress", env=env)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert "steps 6->9" in out and checkpoint.load(rundir.find(run_dir))["step"] == 9

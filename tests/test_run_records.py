"""Runs you can see and audit: the resolved config and what set each value, log lines without a
terminal, the resume history, `ganforge runs`, sampling a run directory, early sample pictures."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import ganforge
from ganforge.cli import app

runner = CliRunner()
RING = ["--arch", "mlp", "--dataset", "ring", "--data-opt", "n=512", "--arch-opt", "hidden=16", "--batch-size", "32"]


def invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def test_print_config_names_the_layer_of_every_value_and_writes_nothing(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('steps = 300\n[arch_options]\nhidden = 32\n')
    result = invoke("train", "--config", config, "--dataset", "ring", "--lr-d", "1e-3", "--arch-opt", "layers=2",
                    "--out-dir", tmp_path / "runs", "--print-config")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# the resolved config")
    assert 'arch = "mlp"  # recipe \'ring\'' in lines                  # the dataset's recipe
    assert 'dataset = "ring"  # the command line' in lines
    assert f"steps = 300  # config file {config}" in lines
    assert "lr_d = 0.001  # the command line" in lines
    assert 'loss = "bce"' in lines                                   # ganforge's default: no comment
    assert "seed = 0" in lines and "# name: not set" in lines
    assert ('arch_options = {"hidden" = 32, "layers" = 2}  # hidden: config file '
            f"{config}; layers: the command line") in lines
    assert not (tmp_path / "runs").exists()
    # the text is a config file that trains exactly that
    (tmp_path / "printed.toml").write_text(result.stdout)
    again = invoke("train", "--config", tmp_path / "printed.toml", "--print-config")
    assert [line.split("  #")[0] for line in again.stdout.splitlines()[1:]] == \
        [line.split("  #")[0] for line in lines[1:]]


def test_config_for_is_the_python_print_config(tmp_path):
    cfg, origins = ganforge.config_for(dataset="ring", arch_options={"hidden": 8})
    assert cfg.arch == "mlp" and cfg.arch_options == {"hidden": 8, "layers": 3}
    assert origins["arch"] == origins["arch_options.layers"] == "recipe 'ring'"
    assert origins["arch_options.hidden"] == "the arguments of ganforge.config_for()"
    assert "seed" not in origins and "loss" not in origins
    run = ganforge.train(**dict(arch="mlp", dataset="ring", data_options={"n": 256}, batch_size=32), steps=2,
                         out_dir=str(tmp_path), name="r")
    cfg, origins = ganforge.config_for(resume=run, steps=5)
    assert cfg.steps == 5 and origins["steps"] == "the arguments of ganforge.config_for()"
    assert origins["arch"] == "the run's config.toml"


def test_train_help_shows_the_defaults():
    result = invoke("train", "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = re.sub(r"\s+", " ", result.stdout)
    assert "Random seed: the same seed, settings and device give the same run. [default: (0)]" in text
    assert "Generator learning rate. [default: (0.0002)]" in text
    assert "[default: (no-ema)]" in text
    assert "--print-config" in text


def test_without_a_terminal_a_run_prints_one_line_per_log_step(tmp_path):
    result = invoke("train", *RING, "--steps", 6, "--log-every", 2, "--out-dir", tmp_path)  # CliRunner: no TTY
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/6", "4/6", "6/6"]
    assert all(re.fullmatch(r"step \d/6  d_loss \d+\.\d{4}  g_loss \d+\.\d{4}  \d+ img/s  eta \d+s", line)
               for line in lines), lines
    quiet = invoke("train", *RING, "--steps", 2, "--out-dir", tmp_path, "--no-progress")
    assert not [line for line in quiet.stdout.splitlines() if line.startswith("step ")]


def test_a_resume_records_what_changed_and_says_so(tmp_path):
    run = tmp_path / "r"
    assert invoke("train", *RING, "--steps", 4, "--lr-decay", "linear", "--out-dir", tmp_path, "--name", "r",
                  "--no-progress").exit_code == 0
    result = invoke("train", "--resume", run, "--steps", 8, "--lr-g", "1e-4", "--no-progress")
    assert result.exit_code == 0, result.output
    assert (f"resuming {run} at step 4: steps 4 -> 8, lr_g 0.0005 -> 0.0001 (the linear lr decay now ends at step "
            "8 instead of 4: lr_g goes from 0 to 5e-05 here)\n") in result.stdout
    record = json.loads((run / "run.json").read_text())
    history = record["history"]
    assert [(h["step"], h["total"]) for h in history] == [(0, 4), (4, 8)]
    assert history[1]["changed"] == {"steps": [4, 8], "lr_g": [0.0005, 0.0001]}
    assert history[0]["ganforge_version"] == ganforge.__version__ and "changed" not in history[0]
    assert record["status"] == "finished"
    result = invoke("train", "--resume", run, "--steps", 8, "--no-progress")
    assert f"resuming {run} at step 8: no setting changed\n" in result.stdout
    assert len(json.loads((run / "run.json").read_text())["history"]) == 3


def test_runs_lists_each_run_with_its_progress_and_status(tmp_path):
    assert invoke("train", *RING, "--steps", 4, "--eval-every", 4, "--eval-samples", 64, "--out-dir", tmp_path,
                  "--no-progress").exit_code == 0
    assert invoke("train", "--arch", "mlp", "--dataset", "grid", "--data-opt", "n=512", "--batch-size", 32,
                  "--steps", 3, "--out-dir", tmp_path, "--no-progress").exit_code == 0
    gone = tmp_path / "mlp-bce-grid-001"
    record = json.loads((gone / "run.json").read_text())
    (gone / "run.json").write_text(json.dumps({**record, "status": "running", "pid": 2 ** 22 + 17}))  # no such process
    (tmp_path / "not-a-run").mkdir()
    result = invoke("runs", tmp_path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "dataset", "arch/loss", "steps", "status", "last", "metrics"]
    assert lines[1].split()[:5] == ["mlp-bce-grid-001", "grid", "mlp/bce", "3/3", "ended"]
    assert lines[2].split()[:5] == ["mlp-bce-ring-001", "ring", "mlp/bce", "4/4", "finished"]
    assert "high_quality" in lines[2] and "d_loss" in lines[2]
    rows = json.loads(invoke("runs", tmp_path, "--json").stdout)
    assert [(r["name"], r["step"], r["total"], r["status"]) for r in rows] == [
        ("mlp-bce-grid-001", 3, 3, "ended"), ("mlp-bce-ring-001", 4, 4, "finished")]
    assert 0 <= rows[1]["metrics"]["high_quality"] <= 100
    result = invoke("runs", tmp_path / "nope")
    assert result.exit_code == 2
    assert result.stderr == f"Error: {tmp_path / 'nope'} is not a directory; ganforge train writes runs under ./runs " \
                            "(--out-dir)\n"


def test_sample_takes_a_run_directory(tmp_path):
    run = ganforge.train(arch="dcgan", dataset="digits", image_size=16, batch_size=16, steps=2, ema=True,
                         arch_options={"width": 8}, out_dir=str(tmp_path), name="r")
    result = invoke("sample", run, "-n", 8, "--seed", 3, "--out", tmp_path / "run.npy")
    assert result.exit_code == 0, result.output
    (path, _), = ganforge.export(run, format="torchscript", out=tmp_path / "g.pt")
    assert invoke("sample", path, "-n", 8, "--seed", 3, "--out", tmp_path / "pt.npy").exit_code == 0
    np.testing.assert_allclose(np.load(tmp_path / "run.npy"), np.load(tmp_path / "pt.npy"), atol=1e-5)
    result = invoke("sample", tmp_path, "--out", tmp_path / "x.png")
    assert result.exit_code == 2
    assert result.stderr == (f"Error: {tmp_path} is a directory but not a ganforge run (no config.toml); pass a run "
                             "directory, or a generator.onnx or generator.pt from ganforge export\n")


def test_a_short_run_draws_step_0_and_a_gif_of_about_24_frames(tmp_path):
    assert invoke("train", *RING, "--steps", 48, "--out-dir", tmp_path, "--name", "r", "--no-progress").exit_code == 0
    samples = sorted(p.name for p in (tmp_path / "r" / "samples").iterdir())
    assert samples == ["step-0.png", "step-48.png"]  # --sample-every 500: the first and the last
    with Image.open(tmp_path / "r" / "progress.gif") as gif:
        assert gif.n_frames == 25  # steps 0, 2, ..., 48


@pytest.mark.parametrize("decay", [0.5, 0.99, 0.999, 0.9999])
@pytest.mark.parametrize("rampup", [None, 0.05, 1.0])
def test_the_ema_warm_up_is_stated_where_it_ends(decay, rampup, tmp_path):
    from ganforge.state import ema_decay_at, ema_warmup_steps

    n = ema_warmup_steps(decay, rampup)
    assert ema_decay_at(decay, n - 1, rampup) < decay and ema_decay_at(decay, n, rampup) == decay
    if decay == 0.999 and rampup != 1.0:
        flags = ["--ema-rampup", rampup] if rampup else []
        result = invoke("train", *RING, "--steps", 1, "--ema", *flags, "--out-dir", tmp_path, "--no-progress")
        assert f", EMA 0.999 (until step {n} over about the last {rampup or '1/9'} of the steps)\n" in result.stdout
        assert n == (19979 if rampup else 8990)


def test_the_ema_ramp_up_averages_over_the_last_fraction_of_the_steps():
    """After update t the EMA's weight on update s <= t is (1 - d_s) * prod(d_r, s < r <= t): mostly on
    the last rampup * t updates, as StyleGAN2-ADA's ema_rampup; the default is a ramp-up of 1/9."""
    from ganforge.state import ema_decay_at

    def weights(t, rampup):  # on the initial G, then on updates 0..t
        w, keep = [], 1.0
        for s in range(t, -1, -1):
            d = ema_decay_at(1.0, s, rampup)
            w.append(keep * (1 - d))
            keep *= d
        return [keep] + w[::-1]

    assert weights(9, 1.0) == pytest.approx([1 / 11] * 11)  # 1: the mean of G at start and after every update
    last = weights(999, 0.05)  # 0.64 on the last 50 of 1,000 updates, 0.012 on the first 800
    assert sum(last) == pytest.approx(1) and 0.55 < sum(last[-50:]) < 0.75 and sum(last[:801]) < 0.02
    assert weights(500, None) == pytest.approx(weights(500, 1 / 9), abs=1e-12)


def test_threads_default_to_the_usable_cores_shared_by_local_processes(tmp_path, monkeypatch):
    import torch

    from ganforge.device import default_threads, usable_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads() == usable_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * usable_cores()))
    assert default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    before = torch.get_num_threads()
    try:
        ganforge.train(arch="mlp", dataset="ring", data_options={"n": 256}, batch_size=32, steps=1, threads=1,
                       out_dir=str(tmp_path), name="r")
        assert torch.get_num_threads() == 1
        assert "threads = 1\n" in (tmp_path / "r" / "config.toml").read_text()
    finally:
        torch.set_num_threads(before)


def test_the_command_line_makes_idle_openmp_threads_sleep(tmp_path, monkeypatch):
    """Set before torch loads in a fresh process (benchmarks/threads.py: proportional throughput when another
    process keeps a core busy); a user's own OMP_WAIT_POLICY wins."""
    import subprocess
    import sys

    code = ("import os, sys; from ganforge.cli import main; sys.argv = ['ganforge', 'train', '--print-config']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "import torch; print('POLICY', os.environ['OMP_WAIT_POLICY'])")
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if given:
            env["OMP_WAIT_POLICY"] = given
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path).stdout
        assert f"POLICY {expected}\n" in out


def test_the_first_line_says_how_long_the_run_takes_here(tmp_path):
    """Timed over the steps after the first (at most 20, or 2 s), printed before anything else the loop prints."""
    result = invoke("train", *RING, "--steps", 200, "--log-every", 100, "--out-dir", tmp_path, "--name", "r",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    match = re.search(r", steps 0->200 \(about (\d+)s here, (\d+) images/s\), EMA", first)
    assert first.startswith(f"run {tmp_path / 'r'}: G mlp") and match, first
    assert int(match[1]) == pytest.approx(200 * 32 / int(match[2]), abs=1)  # 200 steps of 32 images
    # where the run would print something first (a log line at step 1), the line comes then, untimed
    result = invoke("train", *RING, "--steps", 3, "--log-every", 1, "--out-dir", tmp_path, "--name", "s")
    lines = result.stdout.splitlines()
    assert ", steps 0->3, EMA 0.999" in lines[0] and lines[1].startswith("step 1/3  d_loss")

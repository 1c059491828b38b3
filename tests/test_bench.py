"""ganforge bench: intervals and comparisons against hand computations, cells as run directories whose
commands reproduce them, a report rebuilt identically from the storage, bad input as one recorded line,
and workers that share the cells: two at once run no cell twice, a killed one's cell is redone once."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from typer.testing import CliRunner

from ganforge import bench_report, config, hookimpl
from ganforge.bench import Definition, protocol
from ganforge.builtin.losses import LeastSquares
from ganforge.cli import app
from ganforge.evaluation import evaluate
from ganforge.interfaces import Data
from ganforge.plugins import plugin_registered
from ganforge.rundir import read_record

TINY = ["--set", "batch_size=32", "--set", "data_options={n=256}", "--set", "arch_options={hidden=16}",
        "--set", "checkpoint_every=1000", "--set", "sample_every=1000"]
T_975 = {1: 12.706204736174707, 2: 4.302652729911275, 4: 2.7764451051977987}  # Student's t, 97.5% quantile,
# as printed in its tables


def bench_args(tmp_path, losses="bce,lsgan", datasets="ring", seeds=2, steps=60, study="b", *extra):
    return ["bench", "--loss", losses, "--dataset", datasets, "--seeds", str(seeds),
            *(["--steps", str(steps)] if steps else []), "--study", study, "--storage", f"sqlite:///{tmp_path}/b.db", "--out-dir", str(tmp_path / "bench"),
            *TINY, *extra]


def study_of(tmp_path, name="b"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/b.db")


def report_of(tmp_path, name="b"):
    return json.loads((tmp_path / "bench" / name / "report.json").read_text())


def test_the_interval_is_the_mean_plus_or_minus_t_times_the_standard_error():
    values = [1.0, 2.0, 4.0]
    s = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    got = bench_report.interval(values)
    assert got["mean"] == pytest.approx(7 / 3) and got["n"] == 3
    assert got["high"] - got["mean"] == pytest.approx(T_975[2] * s / math.sqrt(3), rel=1e-9)
    assert got["mean"] - got["low"] == pytest.approx(T_975[2] * s / math.sqrt(3), rel=1e-9)
    assert bench_report.interval([5.0]) == {"mean": 5.0, "low": None, "high": None, "n": 1}
    # a reverse KL is infinite when no sample is near a mode: the mean says so, there is no interval
    assert bench_report.interval([1.0, math.inf]) == {"mean": math.inf, "low": None, "high": None, "n": 2}
    assert bench_report.difference([1.0, math.inf], [1.0, 2.0]) is None


def test_a_difference_is_beyond_the_seed_spread_when_welchs_interval_excludes_zero():
    # equal variances and sizes: Welch's degrees of freedom are n1 + n2 - 2 = 4
    far = bench_report.difference([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    half = T_975[4] * math.sqrt(1 / 3 + 1 / 3)
    assert far["difference"] == pytest.approx(-3.0)
    assert (far["low"], far["high"]) == (pytest.approx(-3 - half), pytest.approx(-3 + half))
    assert far["beyond"] is True
    assert bench_report.difference([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])["beyond"] is False  # |-1| < 2.27
    assert bench_report.difference([8.0, 8.0], [8.0, 8.0])["beyond"] is False  # no spread, no difference
    assert bench_report.difference([8.0, 8.0], [7.0, 7.0])["beyond"] is True
    assert bench_report.difference([8.0], [7.0, 7.0]) is None


def test_each_cell_is_a_run_its_command_reproduces_and_the_report_rebuilds_identically(tmp_path):
    result = CliRunner().invoke(app, bench_args(tmp_path))
    assert result.exit_code == 0, result.output
    report = report_of(tmp_path)
    assert [(c["loss"], c["seed"], c["tries"], c["outcome"]) for c in report["cells"]] == [
        ("bce", 0, 1, "ok"), ("bce", 1, 1, "ok"), ("lsgan", 0, 1, "ok"), ("lsgan", 1, 1, "ok")]
    table = report["datasets"]["ring"]
    assert table["metrics"] == ["modes", "high_quality", "reverse_kl"]
    for loss in ("bce", "lsgan"):
        values = [c["metrics"]["high_quality"] for c in report["cells"] if c["loss"] == loss]
        row = table["losses"][loss]["metrics"]["high_quality"]
        s = abs(values[0] - values[1]) / math.sqrt(2)  # the standard deviation of two values
        assert row["values"] == values and row["mean"] == pytest.approx(sum(values) / 2)
        assert row["high"] - row["mean"] == pytest.approx(T_975[1] * s / math.sqrt(2), rel=1e-9)
    md = (tmp_path / "bench" / "b" / "report.md").read_text()
    assert "| loss | modes ↑ | high_quality ↑ | reverse_kl ↓ | train time | seeds |" in md
    assert (f"excludes 0): {sum(p['beyond'] for p in table['pairs'])} of {len(table['pairs'])} compared; about "
            f"{len(table['pairs']) * 0.05:.1f} would be by chance alone.") in md

    # the cell's command, run again, trains the same generator
    cell = report["cells"][2]
    assert cell["command"] == (f"ganforge train --dataset ring --loss lsgan --seed 0 --steps 60 --batch-size 32 "
                               f"--data-opt n=256 --arch-opt hidden=16 --checkpoint-every 1000 --sample-every 1000 "
                               f"--out-dir {tmp_path}/bench/b/runs --name ring-lsgan-seed0")
    again = CliRunner().invoke(app, [*cell["command"].split()[1:-4], "--out-dir", str(tmp_path / "again"),
                                     "--name", "x", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert bench_report.strict(evaluate(tmp_path / "again" / "x").metrics) == cell["metrics"]  # inf as "inf"

    files = {name: (tmp_path / "bench" / "b" / name).read_bytes() for name in ("report.json", "report.md", "report.png")}
    shutil.rmtree(tmp_path / "bench" / "b" / "runs")  # the report needs only the storage
    for name in files:
        (tmp_path / "bench" / "b" / name).unlink()
    rebuilt = CliRunner().invoke(app, ["bench", "--report", "b", "--storage", f"sqlite:///{tmp_path}/b.db",
                                       "--out-dir", str(tmp_path / "bench")])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert {name: (tmp_path / "bench" / "b" / name).read_bytes() for name in files} == files

    # the same command finds every cell done and trains nothing
    rerun = CliRunner().invoke(app, bench_args(tmp_path))
    assert rerun.exit_code == 0 and " seed " not in rerun.output.replace("seeds", "")
    assert len(study_of(tmp_path).trials) == 4


class NaNLoss(LeastSquares):
    """lsgan, except that the discriminator loss is NaN from its third call on."""

    calls = 0

    def discriminator_loss(self, D, real, fake, labels=None):
        self.calls += 1
        return super().discriminator_loss(D, real, fake, labels) * (float("nan") if self.calls >= 3 else 1.0)


class NaNPlugin:
    @hookimpl
    def register_losses(self, register):
        register("always-nan", NaNLoss)


def test_bad_input_is_one_line_recorded_in_the_report_and_the_good_cells_run(tmp_path):
    with plugin_registered(NaNPlugin(), name="nan"):
        result = CliRunner().invoke(app, bench_args(tmp_path, "bce,nosuch,always-nan", "ring,gaussian1d", 1))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert errors[0].startswith("Error: unknown loss 'nosuch'")
    assert errors[1] == ("Error: dataset 'gaussian1d' has no bench protocol: a bench scores Gaussian mixtures "
                         "(ring, grid: modes, high-quality samples, reverse KL), stacked data (Stacked-MNIST: modes, "
                         "reverse KL) and images (FID and the rest under the offline judges); drop it from --dataset")
    assert len(errors) == 2
    report = report_of(tmp_path)
    assert [line.split(";")[0] for line in report["refused"]] == [errors[0][7:].split(";")[0], errors[1][7:].split(";")[0]]
    cells = {c["loss"]: c for c in report["cells"]}
    assert cells["bce"]["outcome"] == "ok"
    assert cells["always-nan"]["outcome"] == "diverged"
    assert cells["always-nan"]["line"].startswith("non-finite loss at step 3")
    md = (tmp_path / "bench" / "b" / "report.md").read_text()
    assert "- not run: unknown loss 'nosuch'" in md and "- always-nan, seed 0: diverged: non-finite loss" in md


def test_each_kind_of_data_has_its_protocol_and_plain_vectors_have_none():
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    digits = Data(images, torch.tensor([0, 1, 2, 3]), 10)
    assert protocol(Data(torch.zeros(4, 2), modes=torch.zeros(8, 2), mode_std=0.02)) == [None]  # ring, grid
    assert protocol(Data(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), stacked_from=digits)) == [None]
    assert protocol(digits) == ["classifier", "autoencoder"]
    assert protocol(Data(images)) == ["autoencoder"]  # no labels: the label-free judge only
    assert protocol(Data(torch.zeros(4, 1))) is None  # gaussian1d


def test_the_same_options_name_the_same_bench_and_others_another():
    ring = Definition(("bce", "lsgan"), ("ring", "grid"), 3, settings={"threads": 1})
    assert ring.default_name == Definition(("bce", "lsgan"), ("ring", "grid"), 3, settings={"threads": 1}).default_name
    assert ring.default_name.startswith("ring-grid-") and len(ring.default_name) == len("ring-grid-") + 8
    assert ring.default_name != Definition(("bce", "lsgan"), ("ring", "grid"), 2, settings={"threads": 1}).default_name
    assert ring.command("n", "sqlite:///b.db") == ("ganforge bench --loss bce,lsgan --dataset ring,grid --seeds 3 "
                                                  "--set threads=1 --study n --storage sqlite:///b.db")


def test_a_budget_in_minutes_stops_each_cell(tmp_path):
    result = CliRunner().invoke(app, bench_args(tmp_path, "bce", "ring", 1, None, "b", "--budget-minutes", "0.003"))
    assert result.exit_code == 0, result.output
    cell = report_of(tmp_path)["cells"][0]
    assert cell["outcome"] == "ok" and 0 < cell["steps"] < 15000  # the ring recipe's steps
    assert read_record(cell["run_dir"])["stop_reason"] == "the bench's budget of 0.003 minutes"


@pytest.mark.parametrize("args, error", [
    (["--loss", "bce"], "Error: give --loss and --dataset (comma-separated names), or --report NAME"),
    (["--loss", "bce", "--dataset", "ring", "--steps", "5", "--budget-minutes", "1"],
     "Error: --steps and --budget-minutes both set the budget of a cell; give one"),
    (["--loss", "bce", "--dataset", "ring", "--set", "seed=3"], "Error: --set seed: the bench sets it; use "
                                                                 "--seeds"),
    (["--loss", "bce", "--dataset", "ring", "--set", "lr_g=-1"], "Error: lr_g must be positive, got -1 (in --set)"),
    (["--report", "nothing"], "Error: no bench named 'nothing' in sqlite:///"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path, args, error):
    result = CliRunner().invoke(app, ["bench", *args, "--storage", f"sqlite:///{tmp_path}/b.db"])
    assert result.exit_code == 2 and result.output.startswith(error), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_bench_joined_with_other_options_or_over_a_tune_study_is_refused(tmp_path):
    assert CliRunner().invoke(app, bench_args(tmp_path, seeds=1, steps=5)).exit_code == 0
    other = CliRunner().invoke(app, bench_args(tmp_path, seeds=1, steps=6))
    assert other.exit_code == 2
    assert other.output.startswith("Error: bench 'b' in sqlite:///") and "was started with other options (ganforge " \
        "bench --loss bce,lsgan --dataset ring --seeds 1 --steps 5 " in other.output
    study = optuna.create_study(study_name="t", storage=f"sqlite:///{tmp_path}/b.db")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    tune = CliRunner().invoke(app, bench_args(tmp_path, seeds=1, steps=5, study="t"))
    assert tune.exit_code == 2 and "is not a bench (a ganforge tune study?); pick another --study" in tune.output


def test_same_settings_gives_every_loss_the_datasets_config_and_keeps_each_methods_own(tmp_path):
    result = CliRunner().invoke(app, bench_args(tmp_path, "bce,wgan", "grid", 1, 4, "s", "--same-settings"))
    assert result.exit_code == 0, result.output
    shared = config.load_toml(tmp_path / "bench" / "s" / "shared-grid.toml")
    runs = tmp_path / "bench" / "s" / "runs"
    bce, wgan = (config.load_toml(runs / f"grid-{loss}-seed0" / "config.toml") for loss in ("bce", "wgan"))
    assert shared["batch_size"] == bce["batch_size"] == wgan["batch_size"] == 32  # --set, in the shared file
    assert bce["lr_g"] == wgan["lr_g"] == shared["lr_g"]  # the wgan recipe's 5e-5 does not apply
    assert "d_steps" not in shared and wgan["d_steps"] == 5 and bce["d_steps"] == 1  # WGAN's critic steps stay
    assert report_of(tmp_path, "s")["cells"][1]["command"].startswith(
        f"ganforge train --config {tmp_path}/bench/s/shared-grid.toml --dataset grid --loss wgan --seed 0 --steps 4 ")


def worker(tmp_path, core, losses="bce,lsgan", datasets="ring,grid", steps=20):
    pin = ["taskset", "-c", str(core % os.cpu_count())] if shutil.which("taskset") else []
    return subprocess.Popen([*pin, sys.executable, "-m", "ganforge", *bench_args(tmp_path, losses, datasets, 2, steps)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_pinned_workers_share_the_cells_and_run_none_twice(tmp_path):
    a, b = worker(tmp_path, 0), worker(tmp_path, 1)
    outputs = [proc.communicate(timeout=300)[0] for proc in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outputs
    trained = [line.split(":")[0] for out in outputs for line in out.splitlines() if ", seed " in line]
    assert sorted(trained) == sorted(set(trained)) and len(trained) == 8, outputs  # each cell once, in all
    report = report_of(tmp_path)
    assert len(report["cells"]) == 8 and all(c["tries"] == 1 for c in report["cells"]) and not report["missing"]
    done = [t for t in study_of(tmp_path).trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 8


def test_a_killed_workers_cell_is_redone_and_counted_once(tmp_path):
    first = worker(tmp_path, 0, "bce", "ring", steps=3000)
    deadline, running = time.monotonic() + 120, None
    while running is None and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            running = next((t for t in study_of(tmp_path).trials if t.state == optuna.trial.TrialState.RUNNING
                            and "pid" in t.user_attrs), None)
        except KeyError:  # no study yet
            pass
    assert running is not None, first.communicate()[0]
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = worker(tmp_path, 1, "bce", "ring", steps=3000)
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output
    loss, dataset, seed = (running.params[k] for k in ("loss", "dataset", "seed"))
    assert f"{loss} on {dataset}, seed {seed}: its worker (pid {running.user_attrs['pid']}) is gone; queued again" \
        in output
    report = report_of(tmp_path)
    assert [(c["seed"], c["outcome"], c["tries"]) for c in report["cells"]] == [
        (s, "ok", 2 if s == seed else 1) for s in range(2)]
    assert Path(report["cells"][seed]["run_dir"], "run.json").is_file()

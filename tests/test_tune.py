"""ganforge tune: the search space, trials as run directories, the best settings as a config and a recipe,
pruning through Run.stop, a killed tune that resumes, and two workers on one SQLite study."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from typer.testing import CliRunner

import ganforge
from ganforge import config, layering
from ganforge.cli import app
from ganforge.errors import UsageError
from ganforge.plugins import get_registry, plugin_registered
from ganforge.rundir import read_record
from ganforge.tuning import Tune, space

TINY = ["--set", "batch_size=32", "--set", "data_options={n=256}", "--set", "arch_options={hidden=16}",
        "--set", "eval_samples=200", "--set", "checkpoint_every=1000", "--set", "sample_every=1000"]
SPACE = 'defaults = false\nlr_g = {low = 1e-4, high = 1e-2, log = true}\nbetas = {choices = [[0.0, 0.9], [0.5, 0.999]]}\n'
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def tune_args(tmp_path, trials=3, study="s", loss="bce"):
    (tmp_path / "space.toml").write_text(SPACE)
    return ["tune", "--dataset", "ring", "--loss", loss, "--trials", str(trials), "--steps", "6",
            "--eval-every", "3", "--metric", "high_quality", "--space", str(tmp_path / "space.toml"), "--study", study,
            "--storage", f"sqlite:///{tmp_path}/t.db", "--out-dir", str(tmp_path / "tune"), *TINY]


def trials(tmp_path, study="s"):
    return optuna.load_study(study_name=study, storage=f"sqlite:///{tmp_path}/t.db").get_trials()


def test_the_space_is_declared_with_the_settings_and_the_parts_and_what_is_fixed_is_not_searched(tmp_path):
    registry = get_registry()
    default = space(registry, "mlp", "wgan")
    assert default["lr_g"] == {"low": 1e-5, "high": 1e-2, "log": True}  # TrainConfig's declaration
    assert default["arch_options.hidden"] == {"choices": [64, 128, 256]}  # mlp's
    assert default["loss_options.clip"]["log"] and "loss_options.gp" not in default  # wgan's
    assert "seed" not in default and "steps" not in default
    file = tmp_path / "space.toml"
    file.write_text('lr_g = {low = 1e-3, high = 1e-1, log = true}\nr2 = false\n[arch_options]\nlayers = false\n')
    mine = space(registry, "mlp", "wgan", file, fixed={"lr_d", "arch_options.hidden"})
    assert mine["lr_g"]["low"] == 1e-3 and "r2" not in mine and "arch_options.layers" not in mine
    assert "lr_d" not in mine and "arch_options.hidden" not in mine and "arch_options.d_norm" in mine
    file.write_text("defaults = false\nd_steps = {low = 1, high = 3}\n")
    assert space(registry, "mlp", "bce", file) == {"d_steps": {"low": 1, "high": 3, "log": False}}


@pytest.mark.parametrize("text, error", [
    ("lr_gg = {low = 1, high = 2}", "unknown config key 'lr_gg' in search space file {f}; did you mean 'lr_g'?"),
    ("lr_g = {low = 2, high = 1}", "search space of lr_g: needs low < high (both > 0 on a log scale), got "
                                   "{'low': 2, 'high': 1}"),
    ("lr_g = 0.1", "search space of lr_g must be {low = A, high = B[, log = true]} or {choices = [...]}, got 0.1"),
    ("lr_decay = {choices = ['cosine']}", "lr_decay must be none or linear, got 'cosine' (in search space file {f})"),
])
def test_a_bad_space_file_is_one_line(tmp_path, text, error):
    file = tmp_path / "space.toml"
    file.write_text(text + "\n")
    with pytest.raises(UsageError) as exc:
        space(get_registry(), "mlp", "bce", file)
    assert str(exc.value) == error.replace("{f}", str(file))


def test_tune_cli_leaves_the_methods_own_settings_and_the_users_alone(tmp_path):
    (tmp_path / "space.toml").write_text("defaults = false\nd_steps = {low = 1, high = 3}\n")
    result = CliRunner().invoke(app, ["tune", "--dataset", "ring", "--loss", "wgan", "--steps", "2", "--metric",
                                      "high_quality", "--space", str(tmp_path / "space.toml")])
    assert result.exit_code == 2
    assert "nothing to search: every setting of the space is fixed; see --space" in result.output  # d_steps: wgan's
    result = CliRunner().invoke(app, ["tune", "--dataset", "ring", "--loss", "bce", "--steps", "2", "--metric",
                                      "acc"])
    assert result.exit_code == 2 and result.output.startswith("Error: unknown metric 'acc' for --metric; choose")


def test_each_trial_is_a_run_and_the_best_settings_round_trip_through_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, tune_args(tmp_path, loss="ganforge.builtin.losses:bce"))  # qualified
    assert result.exit_code == 0, result.output
    done = trials(tmp_path)
    assert [t.number for t in done] == [0, 1, 2] and all(t.state in DONE for t in done)
    for t in done:  # an ordinary run directory: config, run.json, checkpoints
        assert read_record(t.user_attrs["run_dir"])["status"] in ("finished", "stopped")
    best = min(done, key=lambda t: -t.value if t.value is not None else 1)
    best_toml = tmp_path / "tune" / "s" / "best.toml"
    assert f"best: trial {best.number}, high_quality" in result.output and str(best_toml) in result.output
    trained = config.load_toml(Path(best.user_attrs["run_dir"]) / "config.toml")
    again = layering.build(file=best_toml).to_dict()
    for key in ("lr_g", "betas", "batch_size", "arch_options", "data_options", "steps", "seed", "dataset", "loss"):
        assert again[key] == trained[key], key
    namespace = {}
    exec((tmp_path / "tune" / "s" / "recipe.py").read_text(), namespace)  # a plugin module's source
    with plugin_registered(SimpleNamespace(register_recipes=namespace["register_recipes"]), "tuned"):
        cfg, origins = ganforge.config_for(dataset="ring", loss="bce")
    assert (cfg.lr_g, cfg.betas) == (trained["lr_g"], trained["betas"])
    assert origins["lr_g"] == "recipe 'ring+bce' (plugin tuned)"


def test_the_pruner_stops_a_trial_through_run_stop(tmp_path):
    given = {"dataset": "ring", "loss": "bce", "steps": 9, "eval_every": 3, "seed": 0, "batch_size": 32,
             "data_options": {"n": 256}, "eval_samples": 200, "checkpoint_every": 1000}
    job = Tune(given, "high_quality", 1, {"lr_g": {"low": 1e-4, "high": 1e-3, "log": True}}, "p",
               f"sqlite:///{tmp_path}/t.db", tmp_path, pruner=optuna.pruners.ThresholdPruner(lower=2.0),
               log=lambda line: None)
    [trial] = job.run().get_trials()
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [3]
    record = read_record(trial.user_attrs["run_dir"])
    assert record["status"] == "stopped" and record["step"] == 4  # the step after the evaluation, checkpointed
    assert record["stop_reason"].startswith("pruned by ganforge tune: high_quality ")
    assert (Path(trial.user_attrs["run_dir"]) / "checkpoints" / "step-4.safetensors").is_file()


def worker(tmp_path, n, study="s"):
    return subprocess.Popen([sys.executable, "-m", "ganforge", *tune_args(tmp_path, n, study)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_killed_tune_resumes_where_it_stopped(tmp_path):
    first = worker(tmp_path, 8)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            if sum(t.state in DONE for t in trials(tmp_path)) >= 2:
                break
        except KeyError:  # no study yet
            pass
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {t.number for t in trials(tmp_path) if t.state in DONE}
    assert 2 <= len(before) < 8
    again = worker(tmp_path, len(before) + 2)
    output, _ = again.communicate(timeout=240)
    assert again.returncode == 0, output
    after = trials(tmp_path)
    finished = {t.number for t in after if t.state in DONE}
    assert before < finished and len(finished) == len(before) + 2  # the study continued: two more, not 8 anew
    assert sorted(t.number for t in after) == list(range(len(after)))  # numbering continues


def test_two_workers_share_one_sqlite_study(tmp_path):
    a, b = worker(tmp_path, 4), worker(tmp_path, 4)
    for proc in (a, b):
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
    done = [t for t in trials(tmp_path) if t.state in DONE]
    assert 4 <= len(done) <= 5  # the last trials may run on both at once
    assert len({t.number for t in done}) == len(done)
    assert len({t.user_attrs["run_dir"] for t in done}) == len(done)
    assert all(Path(t.user_attrs["run_dir"], "run.json").is_file() for t in done)


def test_workers_started_together_on_a_new_database_all_open_the_study(tmp_path):
    # they race to create its tables (CI once lost a worker to "table ... already exists"); the losers retry
    url = f"sqlite:///{tmp_path}/new.db"
    code = ("import sys, optuna; from ganforge.tuning import open_storage; "
            "optuna.create_study(study_name='s', storage=open_storage(sys.argv[1]), load_if_exists=True)")
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(4)]
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["s"]

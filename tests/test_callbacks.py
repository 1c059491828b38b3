"""Training callbacks: the events and their order, callbacks chosen by name from plugins, the
TensorBoard logger, and the guide's callback plugin installed from its own text."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import ganforge
from ganforge import Callback, hookimpl, rundir
from ganforge.cli import app
from ganforge.plugins import plugin_registered


runner = CliRunner()
GUIDE = Path(__file__).parents[1] / "docs" / "plugins.md"
TINY = dict(arch="mlp", dataset="ring", latent_dim=2, batch_size=32, arch_options={"hidden": 16},
            data_options={"n": 256})
TINY_LR = ganforge.config_for(**TINY)[0].lr_g  # the ring's recommended learning rate
TINY_FLAGS = ["--arch", "mlp", "--dataset", "ring", "--data-opt", "n=256", "--arch-opt", "hidden=16",
              "--batch-size", "32", "--no-progress"]


class Recorder(Callback):
    """Every event with the step it came at."""

    def __init__(self):
        self.events = []

    def on_start(self, run):
        self.events.append(("start", run.step))

    def on_step(self, run, record):
        self.events.append(("step", run.step, record))

    def on_evaluate(self, run, metrics):
        self.events.append(("evaluate", run.step, sorted(metrics)))

    def on_checkpoint(self, run, path):
        assert path.is_file()
        self.events.append(("checkpoint", run.step, path.name))

    def on_end(self, run):
        self.events.append(("end", run.step))


def test_events_arrive_in_order_with_the_logged_records(tmp_path):
    recorder = Recorder()
    run_dir = ganforge.train(**TINY, steps=6, log_every=4, checkpoint_every=3, eval_every=5, eval_samples=100,
                             keep_best="high_quality", out_dir=str(tmp_path), name="r", callbacks=[recorder])
    events = recorder.events
    assert events[0] == ("start", 0) and events[-1] == ("end", 6)
    steps = [e for e in events if e[0] == "step"]
    assert [e[1] for e in steps] == [1, 2, 3, 4, 5, 6]
    logged = {e[1]: e[2] for e in steps if e[2] is not None}
    assert sorted(logged) == [4, 6]  # every --log-every steps and the last; None between
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [logged[4], logged[6]] == [r for r in records if "d_loss" in r]  # what metrics.jsonl holds
    assert [e for e in events if e[0] == "evaluate"] == [("evaluate", 5, ["high_quality", "modes", "reverse_kl"]),
                                                         ("evaluate", 6, ["high_quality", "modes", "reverse_kl"])]
    names = [e[2] for e in events if e[0] == "checkpoint"]
    assert [n for n in names if n.startswith("step")] == ["step-3.safetensors", "step-6.safetensors"]
    assert "best.safetensors" in names
    order = [e[0] for e in events if e[0] != "step" or e[1] == 5]
    assert order.index("evaluate") > order.index("step")  # step 5's evaluation follows its step event


def test_callbacks_do_not_change_the_run(tmp_path):
    """A callback that reads samples every step leaves the weights exactly as without it."""
    class Reader(Callback):
        def on_step(self, run, record):
            run.samples()

    plain = ganforge.train(**TINY, steps=5, out_dir=str(tmp_path), name="plain", ema=True)
    watched = ganforge.train(**TINY, steps=5, out_dir=str(tmp_path), name="watched", ema=True, callbacks=[Reader()])
    a, b = ganforge.load(plain)[0], ganforge.load(watched)[0]
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), key


class Counter(Callback):
    def on_start(self, run):
        (run.run_dir / "counted.txt").write_text("")

    def on_step(self, run, record):
        with open(run.run_dir / "counted.txt", "a") as f:
            f.write(f"{run.step}\n")


class CounterPlugin:
    @hookimpl
    def register_callbacks(self, register):
        register("counter", Counter)


def test_a_plugins_callback_by_name_and_unknown_names(tmp_path):
    with plugin_registered(CounterPlugin(), name="counter-plugin"):
        result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "3", "--logger", "counter",
                                     "--out-dir", str(tmp_path), "--name", "r"])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "r" / "counted.txt").read_text() == "1\n2\n3\n"
        assert 'loggers = ["counter"]' in (tmp_path / "r" / "config.toml").read_text()
        result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "3", "--logger", "countr",
                                     "--out-dir", str(tmp_path), "--name", "r2"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: unknown callback 'countr'; did you mean 'counter'? Available: counter, ")
    assert not (tmp_path / "r2").exists()


def test_tensorboard_logger_writes_scalars_and_samples(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = ganforge.train(**TINY, steps=4, log_every=2, sample_every=2, eval_every=4, eval_samples=100,
                             loggers=["tensorboard"], out_dir=str(tmp_path), name="tb")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"train/d_loss", "train/g_loss", "train/images_per_s", "eval/high_quality"} <= set(tags["scalars"])
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    d_losses = [(r["step"], r["d_loss"]) for r in logged if "d_loss" in r]
    scalars = events.Scalars("train/d_loss")
    assert [e.step for e in scalars] == [step for step, _ in d_losses]
    assert [e.value for e in scalars] == pytest.approx([value for _, value in d_losses])  # float32 in the file
    assert [e.step for e in events.Images("samples")] == [2, 4]
    assert [e.value for e in events.Scalars("train/lr_g")] == pytest.approx([TINY_LR, TINY_LR])
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "    steps = 4\n" in config and '    loggers = ["tensorboard"]' in config  # the config.toml, as a code block
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(events.PluginTagToContent("hparams"))
    assert events.Scalars("hparam/eval/high_quality")[0].value == logged[-1]["high_quality"]


def test_tensorboard_missing_is_one_line_naming_the_extra(tmp_path):
    code = ("import sys; sys.modules['tensorboard'] = None\n"  # as if not installed: importing it fails
            "from ganforge.cli import main\n"
            f"sys.argv = ['ganforge', 'train', *{TINY_FLAGS!r}, '--steps', '1', '--logger', 'tensorboard', "
            f"'--out-dir', {str(tmp_path)!r}]\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == ("Error: --logger tensorboard needs the tensorboard package: "
                           "pip install 'ganforge[tensorboard]'\n")
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_guides_callback_plugin_installs_and_logs(site, tmp_path):
    """docs/plugins.md's complete callback plugin, installed from the guide's own text."""
    text = GUIDE.read_text()
    pyproject = next(b for b in re.findall(r"```toml\n(.*?)```", text, flags=re.S) if "csvlog" in b)
    module = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "register_callbacks" in b)
    entry, target = re.search(r"\[project.entry-points.ganforge\]\n(\S+) = \"(.*?)\"", pyproject).groups()
    site(re.search(r'name = "(.*?)"', pyproject).group(1), entry, target, module)
    assert "callbacks: csvlog" in runner.invoke(app, ["plugins"]).output
    result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "4", "--log-every", "2", "--logger", "csvlog",
                                 "--out-dir", str(tmp_path), "--name", "r"])
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "r" / "losses.csv").read_text().splitlines()
    logged = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows == ["step,d_loss,g_loss"] + [f"{r['step']},{r['d_loss']:.6g},{r['g_loss']:.6g}" for r in logged]


class Raises(Callback):
    """Raises in ``event`` at ``step`` (0: on_start, on_end: at the end)."""

    def __init__(self, event="on_step", step=3):
        self.event, self.step = event, step

    def on_step(self, run, record):
        if self.event == "on_step" and run.step == self.step:
            raise RuntimeError("disk full")

    def on_checkpoint(self, run, path):
        if self.event == "on_checkpoint":
            raise RuntimeError("upload refused")

    def on_end(self, run):
        if self.event == "on_end":
            raise RuntimeError("cannot close")


class RaisesPlugin:
    @hookimpl
    def register_callbacks(self, register):
        register("flaky", Raises)
        register("flaky-checkpoint", lambda: Raises("on_checkpoint"))


@pytest.mark.parametrize("logger,event,step", [("flaky", "on_step", 3), ("flaky-checkpoint", "on_checkpoint", 2)])
def test_a_failing_callback_checkpoints_names_itself_and_the_run_resumes_without_it(tmp_path, logger, event, step):
    """Nothing done before the failure is lost; one line names the callback, its plugin and package, and
    how to resume without it; --logger none drops the saved logger list on resume."""
    run = tmp_path / "r"
    with plugin_registered(RaisesPlugin(), name="raises"):
        result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "6", "--checkpoint-every", "2", "--log-every",
                                     "1", "--logger", logger, "--out-dir", str(tmp_path), "--name", "r"])
        assert result.exit_code == 1, result.output
        exc = "RuntimeError: disk full" if event == "on_step" else "RuntimeError: upload refused"
        assert result.stderr == (f"Error: callback '{logger}' (plugin 'raises', package (in-process)) failed in "
                                 f"{event} at step {step}: {exc}; checkpoint step-{step} is written, the traceback is in "
                                 f"{run / 'error.txt'}. Continue without it: ganforge train --resume {run} "
                                 "--logger none\n")
        assert "Traceback" not in result.output
        assert rundir.find(run).name == f"step-{step}.safetensors"
        assert "Traceback (most recent call last)" in (run / "error.txt").read_text()
        assert (run / "progress.gif").is_file() and (run / "loss.png").is_file()  # on_end ran for the others
        result = runner.invoke(app, ["train", "--resume", str(run), "--no-progress", "--logger", "none"])
    assert result.exit_code == 0, result.output
    assert f"steps {step}->6" in result.output
    assert "loggers" not in (run / "config.toml").read_text().replace("loggers = []", "")


def test_a_callback_failing_at_the_end_does_not_stop_the_others(tmp_path, capsys):
    recorder = Recorder()
    run_dir = ganforge.train(**TINY, steps=3, out_dir=str(tmp_path), name="r", callbacks=[Raises("on_end"), recorder])
    assert recorder.events[-1] == ("end", 3)
    assert (run_dir / "progress.gif").is_file()
    assert "Warning: callback 1 of the callbacks given (Raises) failed in on_end: RuntimeError: cannot close\n" \
        in capsys.readouterr().err


@pytest.mark.parametrize("given,message", [
    ([Recorder], "callback 1 of the callbacks given (type): got the class Recorder, not an object; use an instance, "
                 "Recorder()"),
    ([Recorder(), print], "callback 2 of the callbacks given (builtin_function_or_method): a "
                          "builtin_function_or_method has no on_start, on_step, on_evaluate, on_checkpoint, on_end; "
                          "subclass ganforge.Callback"),
])
def test_callbacks_that_are_not_callback_objects_are_refused_before_anything_is_written(tmp_path, given, message):
    with pytest.raises(ganforge.UsageError) as info:
        ganforge.train(**TINY, steps=2, out_dir=str(tmp_path), name="r", callbacks=given)
    assert str(info.value) == message
    assert not (tmp_path / "r").exists()


COUNTER = ("from ganforge import Callback, hookimpl\n\n"
           "class Counter(Callback):\n"
           "    def on_step(self, run, record):\n"
           "        pass\n\n"
           "@hookimpl\ndef register_callbacks(register):\n    register('counter', Counter)\n")


def test_a_missing_logger_plugin_on_resume_names_its_package(site, tmp_path):
    site("ganforge-counter", "counter", "gf_counter", COUNTER, version="2.1")
    run = tmp_path / "r"
    result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "2", "--logger", "counter",
                                 "--out-dir", str(tmp_path), "--name", "r"])
    assert result.exit_code == 0, result.output
    providers = json.loads((run / "run.json").read_text())["providers"]
    assert providers["logger counter"] == {"kind": "callbacks", "name": "counter", "plugin": "counter",
                                           "package": "ganforge-counter", "version": "2.1"}
    result = runner.invoke(app, ["--disable-plugin", "counter", "train", "--resume", str(run), "--steps", "3",
                                 "--no-progress"])
    assert result.exit_code == 2
    assert result.stderr == (f"Error: resuming {run} needs callback 'counter' from package ganforge-counter 2.1 "
                             "(plugin 'counter'), which is disabled: drop --disable-plugin counter\n")
    result = runner.invoke(app, ["--disable-plugin", "counter", "train", "--resume", str(run), "--steps", "3",
                                 "--no-progress", "--logger", "none"])
    assert result.exit_code == 0, result.output

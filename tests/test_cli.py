"""The command line through typer's CliRunner: exit codes, one-line errors, run directories."""
import json

import pytest
from typer.testing import CliRunner

from ganforge import layering
from ganforge.cli import app
from ganforge.config import MODEL_FIELDS, TrainConfig, to_toml
from ganforge.errors import UsageError

runner = CliRunner()
TINY = ["--arch", "mlp", "--dataset", "ring", "--data-opt", "n=512", "--arch-opt", "hidden=16",
        "--batch-size", "32", "--no-progress"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_writes_a_run_and_resume_continues_it(tmp_path):
    result = invoke("train", *TINY, "--loss", "lsgan", "--steps", 4, "--out-dir", tmp_path, "--log-every", 2)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "mlp-lsgan-ring-001"
    assert (run_dir / "checkpoints" / "step-4.safetensors").is_file()
    assert (run_dir / "samples" / "step-4.png").is_file()
    result = invoke("train", "--resume", run_dir, "--steps", 8, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "steps 4->8" in result.output
    assert (run_dir / "checkpoints" / "step-8.safetensors").is_file()
    assert 'steps = 8' in (run_dir / "config.toml").read_text()
    assert not (tmp_path / "mlp-lsgan-ring-002").exists()


def test_config_file_then_flags_then_loss_recommendations(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('loss = "wgan-gp"\nlr_g = 3e-4\nsteps = 2\nbatch_size = 32\n[arch_options]\nhidden = 16\nlayers = 1\n')
    result = invoke("train", "--config", config, "--lr-d", 5e-4, "--arch", "mlp", "--dataset", "ring",
                    "--data-opt", "n=256", "--arch-opt", "layers=2", "--out-dir", tmp_path, "--no-progress")
    assert result.exit_code == 0, result.output
    recorded = (tmp_path / "mlp-wgan-gp-ring-001" / "config.toml").read_text()
    assert "lr_g = 0.0003\n" in recorded        # from the file
    assert "lr_d = 0.0005\n" in recorded        # from the flag
    assert "d_steps = 5\n" in recorded          # wgan-gp's recommendation, nobody overrode it
    assert "betas = [0.0, 0.9]\n" in recorded
    assert "batch_size = 32\n" in recorded     # the file over the dataset's recommendation
    assert "pack = 2\n" in recorded and "standardize = true\n" in recorded  # the dataset's, not overridden
    assert 'arch_options = {"hidden" = 16, "layers" = 2}' in recorded  # flag merged over the file's table


def test_resume_refuses_to_change_the_model(tmp_path):
    assert invoke("train", *TINY, "--steps", 1, "--out-dir", tmp_path).exit_code == 0
    run_dir = tmp_path / "mlp-bce-ring-001"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = invoke("train", "--resume", run_dir, "--arch", "dcgan")
    assert result.exit_code == 2
    assert result.output == ("Error: --arch cannot change when resuming (the run has 'mlp'); "
                             "start a new run instead\n")
    result = invoke("train", "--resume", run_dir, "--config", "x.toml")
    assert result.output == "Error: --resume continues a run with its own config; drop --config\n"
    assert before == {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}  # untouched


#: For each setting that defines the model, a valid value other than ganforge's default.
CHANGED = {"arch": "mlp", "d_arch": "mlp", "pack": 2, "standardize": True, "loss": "lsgan", "dataset": "ring",
           "image_size": 32, "latent_dim": 8, "conditional": True, "ema": True, "arch_options": {"width": 8},
           "d_arch_options": {"width": 8}, "loss_options": {"gp": 5}, "data_options": {"n": 8}, "augment": "ada",
           "augment_options": {"p": 0.5}}


@pytest.mark.parametrize("name", MODEL_FIELDS)
def test_a_resume_refusal_names_a_flag_that_ganforge_train_takes(tmp_path, name):
    """Changing a model setting on --resume is refused naming the flag that sets it (an option table's refusal
    once named --arch-options, a flag that does not exist)."""
    import typer.main

    assert set(CHANGED) == set(MODEL_FIELDS)  # a new model setting gets a value here
    recorded = TrainConfig().to_dict()
    (tmp_path / "config.toml").write_text(to_toml(recorded))
    with pytest.raises(UsageError) as exc:
        layering.for_resume(tmp_path, {name: CHANGED[name]})
    flag = str(exc.value).split()[0]
    assert str(exc.value) == (f"{flag} cannot change when resuming (the run has {recorded[name]!r}); "
                              "start a new run instead")
    command = typer.main.get_command(app).commands["train"]
    assert flag in {opt for p in command.params for opt in p.opts}


def test_plugins_command_lists_what_each_plugin_provides():
    result = invoke("plugins")
    assert result.exit_code == 0
    assert "ganforge.builtin.losses  (ganforge 0.1.0, built-in)  ok\n    losses: bce, minimax, lsgan, wgan, " \
        "wgan-gp, hinge, rpgan\n" in result.output
    rows = json.loads(invoke("plugins", "--json").output)["plugins"]
    arch = next(r for r in rows if r["name"] == "ganforge.builtin.architectures")
    assert arch["provides"]["architectures"] == ["mlp", "dcgan", "resnet"]
    assert arch["status"] == "ok" and arch["builtin"]


def test_version_and_help():
    from ganforge import __version__

    assert invoke("--version").output == f"ganforge {__version__}\n"
    result = invoke("train", "--help")
    assert result.exit_code == 0 and "--arch-opt" in result.output and "--resume" in result.output


def test_the_version_is_written_once():
    """pyproject.toml reads the version from ganforge/version.py; the installed package says the same."""
    import importlib.metadata
    import tomllib
    from pathlib import Path

    import ganforge

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ganforge.version.__version__"}
    assert importlib.metadata.version("ganforge") == ganforge.__version__


def test_train_options_come_from_the_config_declarations_in_panels():
    """Every TrainConfig setting has its flag, in its panel, with its allowed values in the help."""
    import typer.main

    from ganforge.config import FIELDS, PANELS, choices

    command = typer.main.get_command(app).commands["train"]
    options = {p.name: p for p in command.params if p.param_type_name == "option"}
    assert set(FIELDS) <= set(options)  # betas included: --betas takes 'beta1,beta2'
    for name, declared in FIELDS.items():
        option = options[name]
        assert option.rich_help_panel == declared.metadata["panel"], name
        assert option.default in (None, []), f"--{name} must default to None: only what the user sets applies"
        for value in choices(name) or ():
            assert value in option.help, f"{value} missing from --{name}'s help"
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    shown = [line.strip("╭─ ").split(" ─")[0] for line in result.output.splitlines() if line.startswith("╭─ ")]
    assert shown == ["Options", *PANELS]

"""Config files, validation, precedence and the TOML a run records."""
import tomllib
from pathlib import Path

import pytest

from ganforge.config import TrainConfig, check_value, load_toml, parse_option, to_toml
from ganforge.layering import resolve
from ganforge.errors import UsageError


def test_resolved_config_round_trips_through_toml():
    cfg = TrainConfig(arch="mlp", d_arch="dcgan", loss="wgan-gp", data_root='C:\\data "x"', betas=[0.0, 0.9],
                      arch_options={"hidden": 64, "upsample": "nearest"}, loss_options={"gp": 5.0},
                      lr_g=1e-5, epochs=3, ema=True)
    text = to_toml(cfg.to_dict())
    assert "image_size" not in text  # None is left out: TOML has no null
    values = tomllib.loads(text)
    assert resolve(TrainConfig().to_dict(), values) == cfg


def test_later_layers_win():
    cfg = resolve(TrainConfig().to_dict(), {"d_steps": 5, "lr_g": 1e-4}, {"lr_g": 3e-4}, {"steps": 7})
    assert (cfg.d_steps, cfg.lr_g, cfg.steps, cfg.lr_d) == (5, 3e-4, 7, 2e-4)


def test_load_toml_validates(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('arch = "mlp"\nsteps = 10\nbetas = [0.5, 0.99]\n[arch_options]\nhidden = 32\n')
    assert load_toml(path) == {"arch": "mlp", "steps": 10, "betas": [0.5, 0.99], "arch_options": {"hidden": 32}}


@pytest.mark.parametrize("text,message", [
    ("lr = 0.1", "unknown config key 'lr' in {p}; did you mean 'lr_g'?"),
    ("bogus_key = 1", "unknown config key 'bogus_key' in {p}; known keys: arch, d_arch,"),
    ("steps = '10'", "config key 'steps' in {p} must be an integer, got '10'"),
    ("steps = 0", "steps must be positive, got 0 (in {p})"),
    ("lr_g = -1e-4", "lr_g must be positive, got -0.0001 (in {p})"),
    ("ema = 1", "config key 'ema' in {p} must be true or false, got 1"),
    ("betas = [0.5]", "config key 'betas' in {p} must be two numbers in [0, 1), got [0.5]"),
    ("precision = 'fp8'", "precision must be fp32, bf16 or fp16, got 'fp8' (in {p})"),
    ("arch_options = 3", "config key 'arch_options' in {p} must be a table, got 3"),
    ("steps = ", "config file {p} is not valid TOML"),
    ("lr_decay = 'cosine'", "lr_decay must be none or linear, got 'cosine' (in {p})"),
    ("pack = 0", "pack must be positive, got 0 (in {p})"),
    ("eval_metrics = 'fid,isc'", "unknown metric 'isc'; choose from toy, fid, kid, precision-recall,"),
    ("keep_best = 'fdi'", "unknown metric 'fdi' for --keep-best; choose from modes, high_quality,"),
])
def test_bad_config_files_get_one_line(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(UsageError) as err:
        load_toml(path)
    assert str(err.value).startswith(message.format(p=path))
    assert "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UsageError, match="config file .*nope.toml does not exist"):
        load_toml(tmp_path / "nope.toml")


@pytest.mark.parametrize("text,expected", [
    ("width=32", ("width", 32)), ("gp=2.5", ("gp", 2.5)), ("upsample=nearest", ("upsample", "nearest")),
    ("flag=true", ("flag", True)), ("split='test'", ("split", "test")), ("n=1_000", ("n", 1000)),
])
def test_parse_option_reads_toml_literals(text, expected):
    assert parse_option(text, "--arch-opt") == expected


def test_parse_option_needs_key_value():
    with pytest.raises(UsageError, match=r"--loss-opt takes key=value \(e.g. --loss-opt width=32\), got 'gp'"):
        parse_option("gp", "--loss-opt")


def test_ints_are_accepted_for_floats():
    assert check_value("lr_g", 1, "x") == 1.0 and isinstance(check_value("lr_g", 1, "x"), float)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    from ganforge.plugins import get_registry

    values = load_toml(path)
    cfg = resolve(TrainConfig().to_dict(), values)
    registry = get_registry()
    for kind, name in (("architectures", cfg.arch), ("losses", cfg.loss), ("datasets", cfg.dataset)):
        registry.get(kind, name)

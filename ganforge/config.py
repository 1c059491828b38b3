"""Training configuration: defaults, TOML files, validation and the resolved config a run records.

Precedence, lowest first: the defaults below, the loss's ``recommended``
settings, the config file, the command-line flags the user actually gave.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ganforge.errors import UsageError


@dataclass
class TrainConfig:
    # what to train
    arch: str = "dcgan"
    d_arch: str | None = None          # discriminator from another architecture (default: arch)
    loss: str = "bce"
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = True
    image_size: int | None = None      # None: the dataset's default (32 for the built-in image sets)
    latent_dim: int = 100
    conditional: bool = False
    arch_options: dict = field(default_factory=dict)
    d_arch_options: dict = field(default_factory=dict)
    loss_options: dict = field(default_factory=dict)
    data_options: dict = field(default_factory=dict)
    data_path: str = "auto"            # memory | stream | auto (the dataset decides: in memory if it fits)
    # how to train
    steps: int = 2000                  # iterations; each is d_steps D updates then g_steps G updates
    epochs: int | None = None          # when set, overrides steps: epochs * (len(data) // batch_size)
    batch_size: int = 64
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: list = field(default_factory=lambda: [0.5, 0.999])
    lr_decay: str = "none"             # none | linear (both learning rates to 0 at the last step)
    d_steps: int = 1
    g_steps: int = 1
    pack: int = 1                      # PacGAN: D judges this many samples at once (batch_size a multiple)
    standardize: bool = False          # vector data: G and D work in standardized units (zero mean, unit std)
    ema: bool = False
    ema_decay: float = 0.999
    precision: str = "fp32"            # fp32 | bf16 | fp16
    compile: bool = False
    compile_mode: str = "default"      # torch.compile mode: default | reduce-overhead | max-autotune | ...
    channels_last: bool = False        # NHWC memory format for convolutional models
    device: str = "auto"               # auto | cpu | cuda | cuda:N | mps
    seed: int = 0
    on_nonfinite: str = "stop"        # stop | skip (skip costs a host sync per update on GPUs)
    # what to write
    out_dir: str = "runs"
    name: str | None = None            # run directory name (default: <arch>-<loss>-NNN)
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 10.0   # also checkpoint when this much wall-clock time has passed
    keep_checkpoints: int = 3
    # evaluation during training
    eval_every: int | None = None      # compute metrics every N steps (and at the end)
    eval_metrics: str | None = None    # comma-separated groups, e.g. "fid,kid" (default: all that apply)
    eval_extractor: str | None = None  # feature extractor (default: inception for images, raw for vectors)
    eval_samples: int | None = None    # samples per evaluation (default: 2500 toy, up to 10000 images)
    keep_best: str | None = None       # keep checkpoints/best.safetensors, the best by this metric

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Changing these on --resume would not continue the same model.
MODEL_FIELDS = ("arch", "d_arch", "pack", "standardize", "loss", "dataset", "image_size", "latent_dim", "conditional", "ema",
                "arch_options", "d_arch_options", "loss_options", "data_options")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
POSITIVE = ("steps", "epochs", "batch_size", "lr_g", "lr_d", "d_steps", "g_steps", "pack", "latent_dim",
            "image_size", "log_every", "sample_every", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints",
            "eval_every", "eval_samples")


def _type_name(name: str) -> str:
    return FIELDS[name].type.replace(" | None", "")


def check_value(name: str, value, source: str):
    """Validate one setting and return it normalised; UsageError names the key and the fix."""
    if name not in FIELDS:
        close = difflib.get_close_matches(name, FIELDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(FIELDS)}"
        raise UsageError(f"unknown config key '{name}' in {source}{hint}")
    kind = _type_name(name)
    if value is None and "None" in FIELDS[name].type:
        return None
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        "dict": isinstance(value, dict),
        "list": isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1 for v in value),
    }[kind]
    if not ok:
        expected = {"str": "a string", "bool": "true or false", "int": "an integer", "float": "a finite number",
                    "dict": "a table", "list": "two numbers in [0, 1)"}[kind]
        raise UsageError(f"config key '{name}' in {source} must be {expected}, got {value!r}")
    if name in POSITIVE and value <= 0:
        raise UsageError(f"{name} must be positive, got {value!r} (in {source})")
    if name == "precision" and value not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"precision must be fp32, bf16 or fp16, got {value!r} (in {source})")
    if name == "compile_mode" and value not in COMPILE_MODES:
        raise UsageError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {value!r} (in {source})")
    if name == "data_path" and value not in ("auto", "memory", "stream"):
        raise UsageError(f"data_path must be auto, memory or stream, got {value!r} (in {source})")
    if name == "lr_decay" and value not in ("none", "linear"):
        raise UsageError(f"lr_decay must be none or linear, got {value!r} (in {source})")
    if name == "on_nonfinite" and value not in ("stop", "skip"):
        raise UsageError(f"on_nonfinite must be stop or skip, got {value!r} (in {source})")
    if name == "name" and (not re.fullmatch(r"[A-Za-z0-9_.-]+", value) or value in (".", "..")):
        raise UsageError(f"name must be a plain directory name (letters, digits, _ . -), got {value!r} "
                         f"(in {source})")
    if name in ("eval_metrics", "keep_best"):
        from ganforge.metrics import metric_direction, parse_metrics

        parse_metrics(value) if name == "eval_metrics" else metric_direction(value)
    if name == "ema_decay" and not 0 < value < 1:
        raise UsageError(f"ema_decay must be between 0 and 1, got {value!r} (in {source})")
    return float(value) if kind == "float" else value


def load_toml(path) -> dict:
    """The settings in a TOML config file, validated."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    return {k: check_value(k, v, str(path)) for k, v in values.items()}


OPTION_TABLES = ("arch_options", "d_arch_options", "loss_options", "data_options")


def resolve(*layers: dict) -> TrainConfig:
    """A config from layers of settings, later layers winning; option tables (``arch_options``, ...)
    merge key by key. Values must already be checked."""
    merged = {}
    for layer in layers:
        for key, value in layer.items():
            merged[key] = {**merged.get(key, {}), **value} if key in OPTION_TABLES else value
    return TrainConfig(**merged)


def parse_option(text: str, flag: str) -> tuple:
    """``key=value`` -> (key, value); the value is read as a TOML literal, else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise UsageError(f"{flag} takes key=value (e.g. {flag} width=32), got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(values: dict) -> str:
    """TOML text for a flat dict of settings (None values are left out: TOML has no null)."""
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items() if v is not None)

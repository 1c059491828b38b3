"""Training configuration: every setting declared once (type, allowed values, help, CLI panel, the rules
between settings), its validation, and TOML files. How the layers of a run's config are put together is
:mod:`ganforge.layering`'s."""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import shlex
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

from ganforge.errors import UsageError

PANELS = ("Model", "Data", "Optimisation", "Speed", "Run", "Evaluation")
DEVICES = "auto, cpu, cuda, cuda:N or mps"  # what --device takes


def setting(default, help: str, panel: str, *, flag: str | None = None, positive: bool = False,
            check=None, parse=None, search: dict | None = None):
    """A TrainConfig field and every rule of it: its ``--help`` text and CLI panel; ``flag`` overrides the
    CLI flag (e.g. ``--conditional/--unconditional``); ``positive`` values must be > 0; ``check(value)``
    returns what else is wrong with a value ("must be >= 0"), or None; ``parse(text)`` reads the flag's
    text when it is not a plain value (``--betas 0.5,0.999``); ``search`` is where ``ganforge tune`` looks
    for it (``{"low", "high", "log"}`` or ``{"choices"}``). Rules between settings: :data:`CONFLICTS`."""
    assert panel in PANELS, panel
    meta = {"help": help, "panel": panel, "flag": flag, "positive": positive, "check": check, "parse": parse,
            "search": search}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


LEARNING_RATES = {"low": 1e-5, "high": 1e-2, "log": True}  # where ganforge tune searches
PENALTIES = {"low": 1e-3, "high": 100.0, "log": True}


def _non_negative(value):
    return "must be >= 0" if value < 0 else None


def _between_0_and_1(value):
    return None if 0 < value < 1 else "must be between 0 and 1"


def _fraction(value):
    return None if 0 < value <= 1 else "must be in (0, 1]"


def _plain_name(value):
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value) or value in (".", ".."):
        return "must be a plain directory name (letters, digits, _ . -)"


def _metrics(value):
    from ganforge.metrics import parse_metrics

    parse_metrics(value)  # raises its own error


def _metric(value):
    from ganforge.metrics import metric_direction

    metric_direction(value)


def _pair(text: str) -> list:
    """``--betas 0.5,0.999``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 2:
        raise UsageError(f"--betas takes two numbers as 'beta1,beta2' (e.g. 0.5,0.999), got {text!r}")
    return values


@dataclass
class TrainConfig:
    # what to train
    arch: str = setting("dcgan", "Architecture (generator, and discriminator unless --d-arch).", "Model")
    d_arch: str | None = setting(None, "Take the discriminator from this architecture.", "Model")
    loss: str = setting("bce", "Loss, e.g. bce, lsgan, wgan-gp, hinge.", "Model")
    dataset: str = setting("digits", "Dataset, e.g. digits (embedded), mnist, ring.", "Data")
    data_root: str | None = setting(None, "Directory holding the dataset.", "Data")
    download: bool = setting(True, "Allow downloading data.", "Data")
    image_size: int | None = setting(None, "Image side length (default: the dataset's).", "Data", positive=True)
    latent_dim: int = setting(100, "Size of the latent vector z.", "Model", positive=True)
    conditional: bool = setting(False, "Class-conditional G and D (datasets with labels; the labelled image "
                                "datasets' default).", "Model", flag="--conditional/--unconditional")
    arch_options: dict = setting({}, "Architecture option key=value (repeatable), e.g. width=32.", "Model",
                                 flag="--arch-opt")
    d_arch_options: dict = setting({}, "Option key=value of the --d-arch architecture (repeatable).", "Model",
                                   flag="--d-arch-opt")
    loss_options: dict = setting({}, "Loss option key=value (repeatable), e.g. gp=5 or clip=0.02.", "Model",
                                 flag="--loss-opt")
    data_options: dict = setting({}, "Dataset option key=value (repeatable), e.g. split=test.", "Data",
                                 flag="--data-opt")
    data_path: Literal["auto", "memory", "stream"] = setting(
        "auto", "memory (on the device), stream (DataLoader) or auto (in memory if it fits).", "Data")
    # how to train
    steps: int = setting(2000, "Training iterations (each: d_steps D updates, then g_steps G updates).",
                         "Optimisation", positive=True)
    epochs: int | None = setting(None, "Train for this many passes over the data instead.", "Optimisation",
                                 positive=True)
    batch_size: int = setting(64, "Batch size (per process).", "Optimisation", positive=True)
    lr_g: float = setting(2e-4, "Generator learning rate.", "Optimisation", positive=True, search=LEARNING_RATES)
    lr_d: float = setting(2e-4, "Discriminator learning rate.", "Optimisation", positive=True, search=LEARNING_RATES)
    betas: list = setting([0.5, 0.999], "Adam betas as 'beta1,beta2'.", "Optimisation", parse=_pair,
                          search={"choices": [[0.0, 0.9], [0.0, 0.99], [0.5, 0.9], [0.5, 0.999]]})
    lr_decay: Literal["none", "linear"] = setting(
        "none", "none, or linear: both learning rates fall to 0 at the end.", "Optimisation",
        search={"choices": ["none", "linear"]})
    d_steps: int = setting(1, "Discriminator updates per iteration.", "Optimisation", positive=True,
                           search={"low": 1, "high": 5})
    g_steps: int = setting(1, "Generator updates per iteration.", "Optimisation", positive=True)
    pack: int = setting(1, "PacGAN packing: D judges this many samples at once.", "Model", positive=True,
                        search={"choices": [1, 2, 4]})
    standardize: bool = setting(False, "Vector data: G and D work in standardized units.", "Model")
    augment: str | None = setting(None, "Augment every batch D sees, real and generated: diffaugment or ada "
                                        "(adaptive).", "Model")
    augment_options: dict = setting({}, "Augmentation option key=value (repeatable), e.g. policy=translation,cutout "
                                        "or target=0.6.", "Model", flag="--augment-opt")
    r1: float = setting(0.0, "R1 penalty: gamma/2 E|grad D(real)|^2 added to D's loss, with any loss.",
                        "Optimisation", check=_non_negative, search=PENALTIES)
    r2: float = setting(0.0, "R2 penalty: the same at generated samples.", "Optimisation", check=_non_negative,
                        search=PENALTIES)
    reg_every: int = setting(16, "Lazy regularization: R1/R2 every N discriminator updates, weighted by N.",
                             "Optimisation", positive=True)
    ema: bool = setting(False, "Keep an EMA of the generator.", "Optimisation")
    ema_decay: float = setting(0.999, "EMA decay.", "Optimisation", check=_between_0_and_1,
                               search={"choices": [0.99, 0.995, 0.999, 0.9995]})
    ema_rampup: float | None = setting(None, "The EMA averages over about this last fraction of the steps so far "
                                             "(StyleGAN2-ADA's ramp-up) until that exceeds ema_decay; default 1/9.",
                                       "Optimisation", check=_fraction)
    precision: Literal["fp32", "bf16", "fp16"] = setting("fp32", "Mixed precision (fp16 needs CUDA).", "Speed")
    compile: bool = setting(False, "torch.compile G and D.", "Speed")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = setting(
        "default", "torch.compile mode (reduce-overhead: CUDA graphs).", "Speed")
    channels_last: bool = setting(False, "NHWC memory format for convolutional models.", "Speed")
    device: str = setting("auto", f"{DEVICES}.", "Speed")
    threads: int | None = setting(None, "CPU threads of PyTorch's ops (default: the cores this process may use; "
                                        "fewer when other work keeps cores busy).", "Speed", positive=True)
    seed: int = setting(0, "Random seed: the same seed, settings and device give the same run.", "Run")
    on_nonfinite: Literal["stop", "skip"] = setting(
        "stop", "What a NaN/inf loss does: stop the run, or skip the update (a host sync per update on GPUs).",
        "Run")
    # what to write
    out_dir: str = setting("runs", "Parent directory of new runs.", "Run")
    name: str | None = setting(None, "Run directory name (default: <arch>-<loss>-<dataset>-NNN).", "Run",
                               check=_plain_name)
    log_every: int = setting(50, "Log losses every N steps.", "Run", positive=True)
    sample_every: int = setting(500, "Write a sample grid every N steps.", "Run", positive=True)
    checkpoint_every: int = setting(1000, "Checkpoint every N steps.", "Run", positive=True)
    checkpoint_minutes: float = setting(10.0, "Also checkpoint every M minutes.", "Run", positive=True)
    keep_checkpoints: int = setting(3, "Keep the last N checkpoints.", "Run", positive=True)
    loggers: list[str] = setting([], "Extra training callbacks by name, e.g. tensorboard (repeatable); on "
                                     "--resume they replace the run's, and --logger none drops them all.", "Run",
                                 flag="--logger")
    # evaluation during training
    eval_every: int | None = setting(None, "Compute metrics every N steps (and at the end) into metrics.jsonl.",
                                     "Evaluation", positive=True)
    eval_metrics: str | None = setting(None, "Metrics for --eval-every, e.g. fid,kid or toy (default: all that "
                                             "apply to the data).", "Evaluation", check=_metrics)
    eval_extractor: str | None = setting(None, "Feature extractor for --eval-every: inception, classifier, "
                                                                "autoencoder or raw.",
                                         "Evaluation")
    eval_samples: int | None = setting(None, "Samples per evaluation.", "Evaluation", positive=True)
    keep_best: str | None = setting(None, "Keep checkpoints/best.safetensors, the best by this metric (e.g. fid, "
                                          "high_quality); needs --eval-every.", "Evaluation", check=_metric)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
TYPES = typing.get_type_hints(TrainConfig)
# Changing these on --resume would not continue the same model.
MODEL_FIELDS = ("arch", "d_arch", "pack", "standardize", "loss", "dataset", "image_size", "latent_dim", "conditional",
                "ema", "arch_options", "d_arch_options", "loss_options", "data_options", "augment", "augment_options")
OPTION_TABLES = ("arch_options", "d_arch_options", "loss_options", "data_options", "augment_options")


def setting_type(name: str):
    """A setting's declared type, without the ``| None`` of optional ones."""
    tp = TYPES[name]
    if typing.get_origin(tp) in (Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def choices(name: str) -> tuple | None:
    """The allowed values of a Literal setting, else None."""
    tp = setting_type(name)
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def _either(values) -> str:
    values = [str(v) for v in values]
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


EXPECTED = {  # a type's check and how its error names it
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: _number(v) and math.isfinite(v), "a finite number"),
    str: (lambda v: isinstance(v, str), "a string"),
    dict: (lambda v: isinstance(v, dict), "a table"),
    list: (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
           "two numbers in [0, 1)"),  # betas
    list[str]: (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of strings"),
}


COMMAND_LINE = "the command line"  # the source of settings given as flags: errors name the flag


def cli_flag(name: str) -> str:
    """The ``ganforge train`` flag of a setting as declared: ``--lr-g``, ``--conditional/--unconditional``."""
    return FIELDS[name].metadata["flag"] or "--" + name.replace("_", "-")


def flag_of(name: str) -> str:
    """The flag that sets a setting (``--lr-g``; ``--conditional`` for the pair), for messages."""
    return cli_flag(name).split("/")[0]


def train_command(settings: dict, config_file=None) -> str:
    """The ``ganforge train`` command line that gives ``settings`` (checked values), over ``config_file``."""
    words = ["ganforge", "train", *(["--config", str(config_file)] if config_file else [])]
    for name, value in settings.items():
        flag = cli_flag(name)
        if name in OPTION_TABLES:
            words += [w for key, v in value.items() for w in (flag, f"{key}={toml_value(v)}")]
        elif setting_type(name) is bool:
            on, _, off = flag.partition("/")
            words.append(on if value else off or "--no-" + on[2:])
        elif name == "loggers":
            words += [w for v in value or ["none"] for w in (flag, v)]
        elif isinstance(value, list):
            words += [flag, ",".join(map(str, value))]
        else:
            words += [flag, str(value)]
    return shell_line(words)


def shell_line(words: list) -> str:
    """Words as one shell command line, quoted where needed."""
    return " ".join(shlex.quote(w) for w in words)


def check_value(name: str, value, source: str, label: str | None = None):
    """Validate one setting against its declaration and return it normalised; UsageError names the
    setting (``label``: as the user wrote it; by default its flag on the command line, else its key) and
    the fix."""
    if name not in FIELDS:
        close = difflib.get_close_matches(name, FIELDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(FIELDS)}"
        raise UsageError(f"unknown config key '{name}' in {source}{hint}")
    flagged = source == COMMAND_LINE
    label = label or (flag_of(name) if flagged else name)
    where = "" if flagged else f" (in {source})"
    tp = setting_type(name)
    if value is None and tp is not TYPES[name]:
        return None
    allowed = choices(name)
    if allowed is not None:
        if value not in allowed:
            raise UsageError(f"{label} must be {_either(allowed)}, got {value!r}{where}")
        return value
    ok, expected = EXPECTED[tp]
    if not ok(value):
        if flagged:
            raise UsageError(f"{label} must be {expected}, got {value!r}")
        raise UsageError(f"config key '{name}' in {source} must be {expected}, got {value!r}")
    meta = FIELDS[name].metadata
    wrong = "must be positive" if meta["positive"] and value <= 0 else meta["check"] and meta["check"](value)
    if wrong:
        raise UsageError(f"{label} {wrong}, got {value!r}{where}")
    return float(value) if tp is float else list(value) if tp is list else value


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


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def short_value(value) -> str:
    """A setting's value in a line of text: ``0.0002``, ``linear``, ``{"width": 32}``."""
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, (dict, list)) \
        else str(value)


def to_toml(values: dict) -> str:
    """TOML text for a flat dict of settings (None values are left out: TOML has no null)."""
    return "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items() if v is not None)


STANDARDIZE_IN_MEMORY = "--standardize needs the data in memory; drop --data-path stream"
#: Settings that cannot go together: (keys, conflict(cfg), the refusal). :func:`refuse_conflicts` refuses
#: them in the config of a run; :func:`ganforge.layering.give_way` lets a recommendation give way to what the
#: user set.
CONFLICTS = (
    (("pack", "conditional"), lambda cfg: cfg.pack > 1 and cfg.conditional,
     lambda cfg: "--pack cannot go with --conditional (a pack mixes classes); drop one of them"),
    (("pack", "batch_size"), lambda cfg: cfg.batch_size % cfg.pack != 0,
     lambda cfg: f"batch size {cfg.batch_size} is not a multiple of --pack {cfg.pack}; use a batch size such as "
                 f"{cfg.batch_size // cfg.pack * cfg.pack or cfg.pack}"),
    (("standardize", "data_path"), lambda cfg: cfg.standardize and cfg.data_path == "stream",
     lambda cfg: STANDARDIZE_IN_MEMORY),
)


def refuse_conflicts(cfg: TrainConfig) -> None:
    """UsageError for the first :data:`CONFLICTS` entry that ``cfg`` has."""
    for _, conflict, refusal in CONFLICTS:
        if conflict(cfg):
            raise UsageError(refusal(cfg))

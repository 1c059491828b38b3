"""How the config of a run is put together from its layers, lowest first: ganforge's defaults
(:class:`ganforge.config.TrainConfig`), the recipes that apply to the run (the less specific first), the
settings that are part of the loss's method, what ``--fast`` measured, the config file, the settings the
user gave (:func:`build`); which layer set each setting (:func:`explain`); a recommendation giving way to
what the user set (:func:`give_way`); and the config of a resumed run (:func:`for_resume`) and what the
resume changes (:func:`resume_line`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ganforge import rundir
from ganforge.config import (CONFLICTS, MODEL_FIELDS, OPTION_TABLES, TrainConfig, check_value, flag_of, load_toml,
                             short_value, toml_value)
from ganforge.errors import UsageError
from ganforge.plugins import get_registry
from ganforge.recipes import applying


def resolve(*layers: dict) -> TrainConfig:
    """A config from layers of settings (:func:`merge_settings`). Values must already be checked."""
    return TrainConfig(**merge_settings(*layers))


def merge_settings(*layers: dict) -> dict:
    """Layers of settings as one dict, later layers winning and option tables merging key by key."""
    merged = {}
    for layer in layers:
        for key, value in layer.items():
            merged[key] = {**merged.get(key, {}), **value} if key in OPTION_TABLES else value
    return merged


def recommended_layers(loss: str, dataset: str, arch: str | None = None, registry=None) -> list:
    """``[(who, settings)]``, lowest first: the recipes that apply to the run (:mod:`ganforge.recipes`),
    then the settings that are part of the loss's method (its ``recommended``, e.g. WGAN's 5 critic
    updates), checked. A recipe's architecture options are dropped when the user picked another
    ``arch`` than the one it is for."""
    registry = registry or get_registry()
    data_entry, loss_entry = registry.get("datasets", dataset), registry.get("losses", loss)
    who = f"loss '{loss_entry.name}'"
    intrinsic = {key: check_value(key, value, f"the recommended settings of {who}")
                 for key, value in getattr(loss_entry.factory, "recommended", {}).items()}
    recipes = applying(registry.recipes, data_entry.name, loss_entry.name, arch, TrainConfig.arch)
    out, planned = [], None  # planned: the arch the recipes so far are for
    for recipe in recipes:
        settings = recipe.settings
        planned = recipe.arch or settings.get("arch", planned)
        if arch and (planned or arch) != arch:
            settings = {k: v for k, v in settings.items() if k not in ("arch_options", "d_arch_options")}
        out.append((recipe.label, settings))
    return [*out, (who, intrinsic)]


def recommended_settings(loss: str, dataset: str, arch: str | None = None, registry=None) -> dict:
    """The recommended settings (:func:`recommended_layers`) as one dict, later layers winning: the layer
    between ganforge's defaults and the user's file and flags."""
    return merge_settings(*(settings for _, settings in recommended_layers(loss, dataset, arch, registry)))


def checked(given: dict | None, source: str) -> dict:
    """The settings a user gave (None: not given), each checked, and not contradicting each other."""
    given = {k: check_value(k, v, source) for k, v in (given or {}).items() if v is not None}
    if "steps" in given and "epochs" in given:
        raise UsageError("--steps and --epochs both set the length of training; give one")
    return given


def build(given: dict | None = None, file=None, fast: bool = False, registry=None,
          source: str = "the arguments", announce=None) -> TrainConfig:
    """The config of a new run, from every layer, lowest first: ganforge's defaults, the recipes and
    the loss's own settings (:func:`recommended_layers`), what ``fast`` measured on the device, the TOML
    ``file``, and ``given`` (checked here; ``source`` names them in errors). ``announce`` is told
    what ``--fast`` picked. The CLI and :func:`ganforge.train` both build configs here."""
    return build_explained(given, file, fast, registry, source, announce)[0]


def build_explained(given: dict | None = None, file=None, fast: bool = False, registry=None,
                    source: str = "the arguments", announce=None) -> tuple:
    """:func:`build`'s config and ``{setting: the layer that set it}`` (``table.key`` for the keys of an
    option table) for every setting a layer above ganforge's defaults set."""
    given = checked(given, source)
    file_settings = load_toml(file) if file is not None else {}
    chosen = {**file_settings, **given}  # what the user set, either way
    preset = {}
    if fast:
        from ganforge.device import fast_settings

        preset = {k: v for k, v in fast_settings(chosen.get("device", TrainConfig.device)).items() if k not in chosen}
        if announce:
            announce("--fast picked: " + (", ".join(f"{k}={v}" for k, v in preset.items()) or "nothing (all set)"))
    recommended = recommended_layers(chosen.get("loss", TrainConfig.loss), chosen.get("dataset", TrainConfig.dataset),
                                     chosen.get("arch"), registry)
    layers = [*recommended, ("--fast", preset), (f"config file {file}", file_settings), (source, given)]
    soft = set().union(*(settings for _, settings in recommended)) - set(preset) - set(chosen)
    cfg, dropped = give_way(resolve(TrainConfig().to_dict(), *(settings for _, settings in layers)), soft)
    if dropped and announce:
        announce("recommended settings left out (they conflict with yours): "
                 + ", ".join(f"{k}={v!r}" for k, v in dropped.items()))
    return cfg, origins([(who, {k: v for k, v in settings.items() if k not in dropped}) for who, settings in layers])


def origins(layers) -> dict:
    """``{setting: who}`` for ``[(who, settings)]`` layers, the last to set a setting winning; option
    tables key by key (``table.key``)."""
    out = {}
    for who, settings in layers:
        for key, value in settings.items():
            for sub in (value if key in OPTION_TABLES else [None]):
                out[key if sub is None else f"{key}.{sub}"] = who
    return out


def explain(cfg: TrainConfig, origins: dict) -> str:
    """The config as TOML (``ganforge train --config`` takes it), each setting that a layer above
    ganforge's defaults set followed by a comment naming the layer (:func:`build_explained`)."""
    lines = ["# the resolved config; a comment names what set a value (the rest are ganforge's defaults)"]
    for key, value in cfg.to_dict().items():
        if value is None:
            lines.append(f"# {key}: not set")
            continue
        line = f"{key} = {toml_value(value)}"
        if key in OPTION_TABLES:
            who = {k: origins[f"{key}.{k}"] for k in value if f"{key}.{k}" in origins}
            if who:
                line += "  # " + "; ".join(f"{k}: {w}" for k, w in who.items())
        elif key in origins:
            line += f"  # {origins[key]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def give_way(cfg: TrainConfig, recommended: set) -> tuple:
    """A recommendation never turns a valid command into an error: a setting only a recommendation set
    (``recommended``) that conflicts with another goes back to ganforge's default. Returns the config and
    the settings dropped."""
    dropped = {}
    for keys, conflict, _ in CONFLICTS:
        soft = [k for k in keys if k in recommended and k not in dropped]
        if soft and conflict(cfg):
            dropped[soft[0]] = getattr(cfg, soft[0])
            cfg = dataclasses.replace(cfg, **{soft[0]: getattr(TrainConfig(), soft[0])})
    return cfg, dropped


def for_resume(run_dir, given: dict | None = None, source: str = "the arguments") -> TrainConfig:
    """The recorded config of ``run_dir`` with ``given`` settings over it; settings that define the
    model (MODEL_FIELDS) cannot change."""
    run_dir = Path(run_dir)
    if not rundir.is_run(run_dir):
        raise UsageError(f"{run_dir} is not a ganforge run (no config.toml); pass a directory made by ganforge train")
    given = checked(given, source)
    recorded = load_toml(run_dir / rundir.CONFIG)
    for name in MODEL_FIELDS:
        if name in given and given[name] != recorded.get(name):
            raise UsageError(f"{flag_of(name)} cannot change when resuming "
                             f"(the run has {recorded.get(name)!r}); start a new run instead")
    return resolve(recorded, given)


def for_resume_explained(run_dir, given: dict | None = None, source: str = "the arguments") -> tuple:
    """:func:`for_resume`'s config and the origins of its settings (:func:`build_explained`): the run's
    recorded config.toml where it differs from ganforge's defaults, then ``given``."""
    cfg = for_resume(run_dir, given, source)
    recorded, default = load_toml(Path(run_dir) / rundir.CONFIG), TrainConfig().to_dict()
    return cfg, origins([("the run's config.toml", {k: v for k, v in recorded.items() if v != default.get(k)}),
                         (source, checked(given, source))])


def resume_line(run_dir, step: int, changed: dict, history: list, cfg: TrainConfig, total: int) -> str:
    """What a resume changes, in one line; with a linear lr decay and a new length, where the rates jump."""
    line = f"resuming {run_dir} at step {step}: " + (
        ", ".join(f"{key} {short_value(b)} -> {short_value(a)}" for key, (b, a) in changed.items())
        or "no setting changed")
    before = history[-1].get("total") if history else None
    if cfg.lr_decay == "linear" and before not in (None, total):
        old = changed.get("lr_g", [cfg.lr_g])[0] * (1 - step / before)
        line += (f" (the linear lr decay now ends at step {total} instead of {before}: lr_g goes from "
                 f"{old:.3g} to {cfg.lr_g * (1 - step / total):.3g} here)")
    return line

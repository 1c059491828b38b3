"""``ganforge recipes``: the training settings plugins recommend, and which apply to a run."""
from __future__ import annotations

import json
from typing import Optional

import typer

from ganforge.cli.common import load_registry, user_errors


def recipes(
    dataset: Optional[str] = typer.Option(None, help="Show the recipes a run on this dataset would use."),
    loss: Optional[str] = typer.Option(None, help="... with this loss (default: ganforge train's)."),
    arch: Optional[str] = typer.Option(None, help="... with this architecture (default: the recipes' choice)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """List recipes (settings registered for a dataset, loss or architecture) with their plugin and source.
    With --dataset, --loss or --arch: those a run of ganforge train with the same flags would apply, lowest
    first, and the settings they resolve to."""
    from ganforge import config, layering

    with user_errors():
        registry = load_registry()
        given = {k: v for k, v in {"dataset": dataset, "loss": loss, "arch": arch}.items() if v is not None}
        if not given:
            shown, resolved = registry.recipes, None
        else:
            cfg, origins = layering.build_explained(given, source=config.COMMAND_LINE)
            layers = layering.recommended_layers(cfg.loss, cfg.dataset, arch, registry)
            labels = {who for who, _ in layers}
            shown = [r for r in registry.recipes if r.label in labels]
            shown.sort(key=lambda r: [who for who, _ in layers].index(r.label))
            resolved = {key: who for key, who in origins.items() if who in labels}
    if as_json:
        out = {"recipes": [{**r.record(), "settings": r.settings} for r in shown]}
        if resolved is not None:
            values = cfg.to_dict()
            out["resolved"] = {key: {"value": _value(values, key), "set_by": who} for key, who in resolved.items()}
        typer.echo(json.dumps(out, indent=2))
        return
    if resolved is not None:
        flags = " ".join(f"--{k} {v}" for k, v in given.items())
        typer.echo(f"ganforge train {flags} applies, lowest first:" if shown else
                   f"no recipe applies to ganforge train {flags}")
    for r in shown:
        where = f"{r.plugin.package} {r.plugin.version}" + (", built-in" if r.plugin.builtin else "")
        typer.echo(f"{r.label}  ({where})\n    source: {r.source}\n    settings: "
                   + ", ".join(f"{k} = {config.toml_value(v)}" for k, v in r.settings.items()))
    if resolved:
        typer.echo("resolved (--fast, a config file and flags still win):")
        values = cfg.to_dict()
        for key, who in resolved.items():
            typer.echo(f"    {key} = {config.toml_value(_value(values, key))}  # {who}")


def _value(values: dict, key: str):
    table, _, sub = key.partition(".")
    return values[table][sub] if sub else values[table]

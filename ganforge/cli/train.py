"""``ganforge train``. Its options are made from the settings declared on ``TrainConfig`` (help text,
panel, allowed values), plus a few that exist only on the command line. Every option defaults to
None, so only what the user sets overrides the config file, the recipes, the loss's own settings and
the components' own defaults: the layering itself is :func:`ganforge.layering.build`."""
from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ganforge.cli.common import load_registry, parse_options, user_errors
from ganforge.config import (COMMAND_LINE, FIELDS, OPTION_TABLES, PANELS, TrainConfig, check_value, choices,
                             cli_flag, setting_type)
from ganforge.errors import UsageError

# Options of the command line alone: (name, annotation, typer.Option)
COMMAND_LINE_OPTIONS = [
    ("config", Optional[Path], typer.Option(None, "--config", "-c", help="TOML config file; flags override it.",
                                             rich_help_panel="Run")),
    ("resume", Optional[Path], typer.Option(None, help="Continue the run in this directory from its last "
                                                       "checkpoint.", rich_help_panel="Run")),
    ("lr", Optional[float], typer.Option(None, help="Learning rate of both G and D.", rich_help_panel="Optimisation")),
    ("fast", bool, typer.Option(False, "--fast", help="The fastest settings for the device (printed); flags and "
                                                      "the config file still win.", rich_help_panel="Speed")),
    ("devices", Optional[int], typer.Option(None, help="Train in N processes (torchrun, DistributedDataParallel).",
                                            rich_help_panel="Speed")),
    ("overwrite", bool, typer.Option(False, "--overwrite", help="Replace an existing run directory --name.",
                                     rich_help_panel="Run")),
    ("progress", bool, typer.Option(True, "--progress/--no-progress", help="Show progress: a live bar in a "
                                    "terminal, one line per --log-every steps otherwise.", rich_help_panel="Run")),
    ("print_config", bool, typer.Option(False, "--print-config", help="Print the resolved config, each value with "
                                        "what set it (recipe, loss, --fast, config file, flag), and exit without "
                                        "training or writing anything.", rich_help_panel="Run")),
]


def _setting_option(name: str):
    """The annotation and typer.Option of one TrainConfig setting."""
    meta = FIELDS[name].metadata
    flag = cli_flag(name)
    if name in OPTION_TABLES:  # repeated key=value flags
        return List[str], typer.Option([], flag, metavar="KEY=VALUE", help=meta["help"], rich_help_panel=meta["panel"])
    tp = setting_type(name)
    allowed = choices(name)
    help_text = meta["help"]
    if allowed and not all(value in help_text for value in allowed):
        help_text += f" One of: {', '.join(allowed)}."
    if tp == list[str]:
        return List[str], typer.Option([], flag, metavar="NAME", help=help_text, rich_help_panel=meta["panel"])
    if meta["parse"]:  # text the declaration reads, e.g. --betas 0.5,0.999
        default = ",".join(map(str, getattr(TrainConfig(), name)))
        return Optional[str], typer.Option(None, flag, help=help_text, rich_help_panel=meta["panel"],
                                           show_default=default)
    base = tp if tp in (bool, int, float) else str
    if base is bool and "/" not in flag:
        flag = f"{flag}/--no-{flag[2:]}"
    default = getattr(TrainConfig(), name)
    shown = False if default is None else flag.split("/")[0 if default else 1][2:] if base is bool else str(default)
    return Optional[base], typer.Option(None, flag, help=help_text, rich_help_panel=meta["panel"], show_default=shown)


def train(**options):
    """Train a GAN; writes a run directory with config, metrics, samples and checkpoints.

    Defaults shown are ganforge's; datasets and losses recommend others: --print-config shows each value's source."""
    # Idle OpenMP threads sleep instead of spinning: with another process on the cores, spinning threads
    # wait on descheduled ones (images/s fell to 0.30x with one of 2 cores busy; passive: 0.59x; idle
    # machine: 0.85x of spinning's; benchmarks/threads.py). OpenMP reads it once torch loads: here, before.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with user_errors():
        devices = options.pop("devices")
        if devices is not None and devices < 1:
            raise UsageError(f"--devices must be at least 1, got {devices}")
        if devices is not None and devices > 1 and "WORLD_SIZE" not in os.environ:
            from ganforge import distributed

            raise typer.Exit(distributed.launch(devices, _without_devices(sys.argv[1:])))
        load_registry()  # after any relaunch: the launcher itself trains nothing
        config, resume, lr, fast, overwrite, progress, print_config = (
            options.pop(k) for k in ("config", "resume", "lr", "fast", "overwrite", "progress", "print_config"))
        given = {k: FIELDS[k].metadata["parse"](v) if FIELDS[k].metadata["parse"] else v
                 for k, v in options.items() if v is not None and k not in OPTION_TABLES and k != "loggers"}
        if lr is not None:
            lr = check_value("lr_g", lr, COMMAND_LINE, label="--lr")
            given.setdefault("lr_g", lr)
            given.setdefault("lr_d", lr)
        for name in OPTION_TABLES:
            if options[name]:
                given[name] = parse_options(options[name], cli_flag(name))
        if options["loggers"]:  # --logger none: no extra callbacks (e.g. to resume without a failing one)
            given["loggers"] = [] if options["loggers"] == ["none"] else options["loggers"]
        if print_config:
            from ganforge.api import config_for
            from ganforge.layering import explain

            typer.echo(explain(*config_for(config, resume=resume, fast=fast, source=COMMAND_LINE,
                                           announce=typer.echo, **given)), nl=False)
            return
        from ganforge.api import train as run_training

        run_training(config, resume=resume, fast=fast, overwrite=overwrite, progress=progress,
                     source=COMMAND_LINE, announce=typer.echo, **given)


_OPTIONS = [*COMMAND_LINE_OPTIONS, *((n, *_setting_option(n)) for n in FIELDS)]
train.__signature__ = inspect.Signature(
    [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
     for name, annotation, option in sorted(_OPTIONS, key=lambda o: PANELS.index(o[2].rich_help_panel))])


def _without_devices(argv: list) -> list:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--devices":
            skip = True
        elif not arg.startswith("--devices="):
            out.append(arg)
    return out

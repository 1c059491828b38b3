"""The ``ganforge`` command. One module per command; torch is imported only inside commands."""
from __future__ import annotations

from contextlib import contextmanager
from typing import List

import typer

from ganforge import __version__
from ganforge.errors import Interrupted, TrainingDiverged, UsageError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="ganforge: a plugin-based GAN framework for PyTorch.")


@contextmanager
def user_errors():
    """One line on stderr instead of a traceback: exit code 2 for UsageError, 1 for TrainingDiverged,
    128 + the signal for an interrupted run."""
    try:
        yield
    except UsageError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
    except TrainingDiverged as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    except Interrupted as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(128 + exc.signum) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: stopped at once; --resume continues from the last checkpoint", err=True)
        raise typer.Exit(130) from None


def _version(value: bool):
    if value:
        typer.echo(f"ganforge {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    disable_plugin: List[str] = typer.Option([], "--disable-plugin", metavar="NAME",
                                             help="Do not import this plugin (repeatable; also "
                                                  "GANFORGE_DISABLE_PLUGINS=a,b)."),
):
    """ganforge: a plugin-based GAN framework for PyTorch."""
    from ganforge.plugins import disable  # light: pluggy only

    disable(disable_plugin)


def load_registry(failures: bool = True):
    """The plugin registry, with a one-line warning on stderr for each name that --disable-plugin (or
    GANFORGE_DISABLE_PLUGINS) gave and no plugin has, and (``failures``) each plugin that failed to load."""
    from ganforge.plugins import get_registry

    registry = get_registry()
    for name in registry.unmatched_disabled:
        typer.echo(f"Warning: no plugin named '{name}' to disable; plugins: "
                   f"{', '.join(p.name for p in registry.plugins)}", err=True)
    for p in registry.plugins:
        if p.error and failures:
            typer.echo(f"Warning: plugin '{p.name}' ({p.package}) failed to load: {p.error}; "
                       "details: ganforge plugins --verbose", err=True)
    return registry


def parse_options(values: list, flag: str) -> dict:
    """Repeated ``key=value`` flags as a dict of TOML-literal values."""
    from ganforge.config import parse_option

    return dict(parse_option(v, flag) for v in values)


from ganforge.cli import evaluate, export, plugins, sample, train  # noqa: E402,F401  (modules register their commands)


def main():
    app()

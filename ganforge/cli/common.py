"""What the command modules share: one-line errors instead of tracebacks, the plugin registry with
its load warnings, ``key=value`` options and the default Optuna storage."""
from __future__ import annotations

from contextlib import contextmanager

import typer

from ganforge.errors import CallbackFailed, ExportMismatch, Interrupted, TrainingDiverged, UsageError

DEFAULT_STORAGE = "sqlite:///ganforge-tune.db"  # Optuna's, in the working directory: ganforge tune and bench


@contextmanager
def user_errors():
    """One line on stderr instead of a traceback: exit code 2 for UsageError, 1 for TrainingDiverged,
    CallbackFailed and ExportMismatch, 128 + the signal for an interrupted run."""
    try:
        yield
    except UsageError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (TrainingDiverged, CallbackFailed, ExportMismatch) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    except Interrupted as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(128 + exc.signum) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: stopped at once; --resume continues from the last checkpoint", err=True)
        raise typer.Exit(130) from None


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

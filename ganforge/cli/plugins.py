"""``ganforge plugins``: what is installed, what each plugin provides, and what went wrong."""
from __future__ import annotations

import json
import os

import typer

from ganforge.cli.common import load_registry, user_errors

VERBOSE_ENV = "GANFORGE_VERBOSE"


def plugins(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=f"Show tracebacks of plugins that failed "
                                                                f"(or set {VERBOSE_ENV}=1)."),
):
    """List plugins: package, version, the architectures, losses and datasets each provides, and status."""
    from ganforge.hookspecs import KINDS

    verbose = verbose or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    with user_errors():
        registry = load_registry(failures=False)  # failures are listed below
        conflicts = registry.conflicts()
        if as_json:
            rows = [{"name": p.name, "package": p.package, "version": p.version, "builtin": p.builtin,
                     "provides": p.provides, "status": _status(p), "error": p.error}
                    for p in registry.plugins]
            typer.echo(json.dumps({"plugins": rows, "conflicts": [
                {"kind": kind, "name": name, "plugins": names} for kind, name, names in conflicts]}, indent=2))
            return
        for p in registry.plugins:
            where = f"{p.package} {p.version}" + (", built-in" if p.builtin else "")
            typer.echo(f"{p.name}  ({where})  {'ERROR ' + p.error if p.error else _status(p)}")
            for kind, names in p.provides.items():
                if names:
                    typer.echo(f"    {kind}: {', '.join(names)}")
            if p.error and verbose:
                typer.echo(p.traceback.rstrip())
        for kind, name, names in conflicts:
            choices = " or ".join(f"{n}:{name}" for n in names)
            typer.echo(f"conflict: {KINDS[kind]} '{name}' is provided by {', '.join(names)}; use {choices}")


def _status(plugin) -> str:
    return "error" if plugin.error else "disabled" if plugin.disabled else "ok"

"""``ganforge plugins``: what is installed and what each plugin provides."""
from __future__ import annotations

import json

import typer

from ganforge.cli import app, user_errors


@app.command()
def plugins(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks of plugins that failed."),
):
    """List installed plugins and the architectures, losses and datasets each provides."""
    from ganforge.plugins import KINDS, get_registry

    with user_errors():
        registry = get_registry()
        if as_json:
            rows = [{"name": p.name, "package": p.package, "version": p.version, "builtin": p.builtin,
                     "provides": p.provides, "status": "error" if p.error else "ok", "error": p.error}
                    for p in registry.plugins]
            typer.echo(json.dumps(rows, indent=2))
            return
        for p in registry.plugins:
            where = "built-in" if p.builtin else f"{p.package} {p.version}"
            status = f"ERROR {p.error}" if p.error else "ok"
            typer.echo(f"{p.name}  ({where})  {status}")
            for kind in KINDS:
                if p.provides[kind]:
                    typer.echo(f"    {kind}: {', '.join(p.provides[kind])}")
            if p.error and verbose:
                typer.echo(p.traceback.rstrip())

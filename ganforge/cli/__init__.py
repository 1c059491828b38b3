"""The ``ganforge`` command. One module per command; torch is imported only inside commands."""
from __future__ import annotations

from typing import List

import typer

from ganforge.version import __version__
from ganforge.cli import bench, evaluate, export, plugins, recipes, runs, sample, serve, train, tune

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="ganforge: a plugin-based GAN framework for PyTorch.")


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


for command in (train.train, export.export, sample.sample, plugins.plugins, recipes.recipes, evaluate.evaluate,
                runs.runs, tune.tune, bench.bench, serve.serve):
    app.command()(command)


def main():
    app()

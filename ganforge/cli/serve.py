"""``ganforge serve``: serve an exported web page, cross-origin isolated so WebAssembly runs threaded."""
from __future__ import annotations

from pathlib import Path

import typer

from ganforge.cli.common import user_errors


def serve(
    site: Path = typer.Argument(..., help="A folder made by ganforge export --format web."),
    port: int = typer.Option(8000, help="Port (0: any free one)."),
    bind: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface; browsers on other "
                                               "machines get no threads there, as plain HTTP is not a secure context)."),
):
    """Serve an exported web page over HTTP with the cross-origin isolation headers (COOP/COEP) that let
    its WebAssembly use several threads. Ctrl-C stops."""
    with user_errors():
        from ganforge.web import server

        httpd = server(site, port, bind)
        host, port = httpd.server_address[:2]
        typer.echo(f"serving {site} at http://{host}:{port}/ (cross-origin isolated: WebAssembly runs threaded); "
                   "Ctrl-C stops")
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            httpd.server_close()

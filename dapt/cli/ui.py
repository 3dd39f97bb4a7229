"""`dapt ui`: the registry as a web page (services/ui), on loopback by default.

Registered by dapt/cli/app.py with ``register_ui_command(app)``. Read-only unless DAPT_ADMIN_TOKEN is set.
"""

from __future__ import annotations

import typer

from dapt.cli.common import UserError, console
from models.settings import admin_token


def register(app: typer.Typer) -> None:
    @app.command()
    def ui(
        host: str = typer.Option("127.0.0.1", help="Interface to listen on (loopback by default)."),
        port: int = typer.Option(3100, min=1, max=65535, help="TCP port."),
    ) -> None:
        """Browse the registry in a web browser: models, versions, evidence, plots, model cards, diffs, audit log.

        Read-only by default; with DAPT_ADMIN_TOKEN set, promote and rollback forms appear (the token is typed
        into the form). Example: dapt ui --port 3100, then open http://127.0.0.1:3100/
        """
        import errno
        import socket

        import uvicorn

        from services.ui import create_app

        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.bind((host, port))
            except OSError as exc:
                reason = (
                    "is already in use"
                    if exc.errno == errno.EADDRINUSE
                    else f"cannot be opened ({exc.strerror})"
                )
                raise UserError(f"{host}:{port} {reason}; choose another with --port") from None
        app_ = create_app()
        mode = "admin actions enabled" if admin_token() else "read-only"
        console.print(f"dapt ui on http://{host}:{port}/ ({mode}); registry {app_.state.registry!r}")
        uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False)

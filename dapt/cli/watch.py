"""`dapt watch`: the automatic-rollback watcher (services/rollback_watch.py) as a long-running command.

Registered by dapt/cli/app.py with ``register_watch_command(app)``.
"""

from __future__ import annotations

import typer

from dapt.cli.common import UserError, console
from dapt.exit_codes import ExitCode


def register(app: typer.Typer) -> None:
    @app.command()
    def watch(
        name: str = typer.Argument(..., help="Registered model name the service serves."),
        alias: str = typer.Option("production", "--alias", "-a", help="Alias the service follows."),
        url: str = typer.Option("http://127.0.0.1:3000", help="Base URL of the running `dapt serve`."),
        window_s: float = typer.Option(120.0, help="Seconds to watch a new version once it answers."),
        interval_s: float = typer.Option(2.0, help="Seconds between two readings of the service."),
        swap_timeout_s: float = typer.Option(
            90.0, help="Seconds the service may take to answer with a new version."
        ),
        min_requests: int = typer.Option(
            20, help="Prediction requests a window needs before errors and latency are judged."
        ),
        max_error_rate_increase: float = typer.Option(
            0.05, help="Allowed rise of the server-error share over the previous version (0.05 = 5 points)."
        ),
        max_latency_ratio: float = typer.Option(
            2.0, help="Allowed mean latency as a multiple of the previous version's."
        ),
        min_latency_increase_ms: float = typer.Option(
            50.0, help="A latency rise smaller than this is never a regression (noise on fast models)."
        ),
        max_unready_probes: int = typer.Option(
            3, help="Failed /readyz probes in a row that are a regression."
        ),
        once: bool = typer.Option(
            False, "--once", help="Stop after the first verdict: exit 0 if kept, 1 if rolled back."
        ),
    ) -> None:
        """Watch a live service after its alias moves; move the alias back when the new version regresses.

        Compares the new version's server-error rate, mean latency and /readyz with the previous version's
        (from the service's /metrics and /metadata) over a window; on a regression it moves the alias back
        (audited as "automatic rollback" with the reason: `dapt models history NAME`) and the service, which
        follows the alias, serves the previous version again.

        Example: dapt watch finsent --alias production --url http://127.0.0.1:3000 --window-s 120
        """
        import signal

        from models.registry.store import Registry, RegistryError
        from models.settings import actor
        from services.rollback_watch import RollbackWatcher, ServiceProbe, WatchError

        settings = _checked_settings(
            name,
            alias,
            url,
            window_s=window_s,
            interval_s=interval_s,
            swap_timeout_s=swap_timeout_s,
            min_requests=min_requests,
            max_error_rate_increase=max_error_rate_increase,
            max_latency_ratio=max_latency_ratio,
            min_latency_increase_ms=min_latency_increase_ms,
            max_unready_probes=max_unready_probes,
        )

        def say(line: str) -> None:
            console.print(f"[dim]{_stamp()}[/dim] {line}", highlight=False, soft_wrap=True)

        probe = ServiceProbe(url, name)
        watcher = RollbackWatcher(
            Registry(), name, alias, probe, settings, actor=f"dapt-watch ({actor() or _login()})", say=say
        )
        previous = signal.signal(signal.SIGTERM, lambda *_: watcher.stop_event.set())
        try:
            try:
                watcher.start()
            except (WatchError, RegistryError) as exc:
                raise UserError(str(exc), exit_code=ExitCode.FAILURE) from None
            verdicts = watcher.run(once=once)
        finally:
            signal.signal(signal.SIGTERM, previous)
            probe.close()
        if once and verdicts and verdicts[-1].rolled_back:
            raise typer.Exit(ExitCode.FAILURE)


def _checked_settings(name: str, alias: str, url: str, **limits):
    """The watcher's settings, or a UserError (exit 2) naming the bad argument."""
    from models.registry.store import RegistryError, check_name
    from services.rollback_watch import WatchError, WatchSettings

    if not url.startswith(("http://", "https://")):
        raise UserError(f"--url {url!r} is not an HTTP URL; use e.g. http://127.0.0.1:3000")
    try:
        check_name(name)
        check_name(alias, "alias")
        return WatchSettings(**limits).check()
    except (RegistryError, WatchError) as exc:
        raise UserError(str(exc)) from None


def _stamp() -> str:
    import time

    return time.strftime("%H:%M:%S", time.gmtime())


def _login() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"

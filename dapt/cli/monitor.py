"""`dapt monitor`: the `monitor` flow (flows/monitor.py) once, or as a scheduled Prefect deployment.

Registered by dapt/cli/app.py with ``register_monitor_command(app)``.
"""

from __future__ import annotations

import json

import typer

from dapt.cli.common import UserError, console
from dapt.exit_codes import ExitCode


def register(app: typer.Typer) -> None:
    @app.command()
    def monitor(
        name: str = typer.Argument(..., help="Registered model name."),
        alias: str = typer.Option("production", help="Alias whose version is judged."),
        version: int = typer.Option(None, help="Judge this version instead of the alias's."),
        retrain_deployment: str = typer.Option(
            None,
            help="Deployment to start on drift (default: retrain/<name>-scheduled, from `dapt schedule`).",
        ),
        cron: str = typer.Option(None, help="Serve as a scheduled deployment instead, e.g. '*/30 * * * *'."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Measure drift of the served version from its prediction log; start retraining when it crosses the
        recipe's threshold (monitor.retrain_on). The log comes from `dapt serve --log-predictions hash`.

        Example: PREFECT_API_URL=http://127.0.0.1:4200/api dapt monitor finsent
        """
        from flows.deploy import ScheduleError
        from flows.monitor import MonitorError, serve_monitor
        from flows.monitor import monitor as monitor_flow
        from models.registry.store import RegistryError

        if cron:
            try:
                serve_monitor(name, cron, alias, retrain_deployment)
            except ScheduleError as exc:
                raise UserError(str(exc)) from None
            return
        try:
            state = monitor_flow(name, alias, version, retrain_deployment, return_state=True)
            result = state.result(raise_on_failure=True)
        except (MonitorError, RegistryError) as exc:
            raise UserError(str(exc), exit_code=ExitCode.FAILURE) from None
        if as_json:
            console.print_json(json.dumps(result))
            return
        console.print(
            f"{result['name']} v{result['version']}: drift {result['status']} over {result['texts']} texts"
        )
        for statistic, judged in result["statistics"].items():
            value = "-" if judged["value"] is None else f"{judged['value']:.4f}"
            console.print(
                f"  {statistic}: {value} (warn {judged['warn']}, fail {judged['fail']}) {judged['status']}"
            )
        retrain = result["retrain"]
        console.print(
            f"retraining started: {retrain['deployment']} run {retrain['flow_run_name']}"
            if retrain
            else "retraining not started"
        )
        console.print(f"report: {result['report']}")

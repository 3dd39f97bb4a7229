"""The `dapt` command line. Heavy libraries are imported inside commands so `--help` is instant."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from dapt.cli.common import UserError, console, err, read_recipe
from dapt.cli.monitor import register as register_monitor_command
from dapt.cli.stages import register as register_stage_commands
from dapt.cli.ui import register as register_ui_command
from dapt.cli.versions import models_app
from dapt.cli.watch import register as register_watch_command
from dapt.exit_codes import ExitCode
from models.progress import stage
from models.settings import configure_environment
from services.launcher import (
    ServerError,
    free_port,
    serve_until_stopped,
    start_server,
    stop_server,
    wait_ready,
)

app = typer.Typer(
    help="dapt: raw domain text → validated → adapted → fine-tuned → judged → exported → registered → served.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bento_app = typer.Typer(
    help="Package a registered version as a Bento (BentoML store + Dockerfile).", no_args_is_help=True
)
app.add_typer(bento_app, name="bento")


@app.callback()
def _setup() -> None:
    configure_environment()
    if not console.is_terminal:
        # Piped or redirected: tables keep their natural width instead of cutting cells at 80 columns.
        console.width = 100_000


def _print_run_summary(summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{summary['name']} v{summary['version']}")
    table.add_column("metric")
    table.add_column("this version", justify="right")
    table.add_column("production before", justify="right")
    before = summary.get("incumbent_metrics") or {}
    for key, value in summary["metrics"].items():
        if key in ("accuracy", "macro_f1", "weighted_f1", "ece", "eval_loss", "f1", "precision", "recall"):
            old = before.get(key)
            table.add_row(key, f"{value:.4f}", "-" if not isinstance(old, float | int) else f"{old:.4f}")
    forgetting = summary.get("forgetting") or {}
    for key in (
        "domain_loss_before",
        "domain_loss_after",
        "general_loss_before",
        "general_loss_after",
        "delta",
    ):
        value = forgetting.get(key)
        if isinstance(value, float | int):
            table.add_row(f"mlm {key}", f"{value:.4f}", "")
    console.print(table)
    gain = summary.get("adaptation_gain")
    if gain:
        console.print(f"[{'green' if gain['kept'] == 'adapted' else 'yellow'}]{gain['summary']}[/]")
    gate = summary.get("gate") or {}
    colour = "green" if gate.get("passed") else "yellow"
    console.print(f"[{colour}]gate: {gate.get('summary', 'not evaluated')}[/{colour}]")
    if summary.get("run_budget"):
        from flows.retrain import run_time_line

        console.print(run_time_line(summary["run_budget"]))


def _stop_temporary_prefect_server() -> None:
    """Without a Prefect server configured the flow starts a temporary one, which Prefect stops at exit in
    silence (its wait can take seconds); stopping it here keeps that inside the progress display."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return  # a real server (or a test harness's): not ours to stop
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
        from prefect.server.api.server import SubprocessASGIServer

        servers = list(SubprocessASGIServer._instances.values())
    except (ImportError, AttributeError):  # another Prefect version: it stops at exit as before
        return
    with stage("stopping Prefect's temporary server"):
        try:
            # The run's last log lines and events go to the server first (Prefect would send them at exit).
            APILogWorker.drain_all(timeout=5)
            EventsWorker.drain_all(timeout=5)
            for server in servers:
                server.stop()
        except Exception as exc:  # noqa: BLE001 - the run is done; Prefect stops the server at exit anyway
            err.print(
                f"Prefect's temporary server is stopped at exit instead ({exc})",
                markup=False,
                highlight=False,
            )


def _run_flow(recipe, adopt_log_handlers, started_at: float):
    from flows.retrain import retrain

    adopt_log_handlers()  # Prefect's log handlers exist from its import on
    # the run's budget counts from the command's start: Prefect's import and temporary server (12-14 s) included
    state = retrain(recipe, budget_started_at=started_at, return_state=True)
    _stop_temporary_prefect_server()
    return state


def _check_training_environment() -> None:
    """Settings read deep inside the flow, checked before it starts: a typo must not cost a whole adaptation."""
    from models.training.precision import cpu_bf16_setting
    from models.training.task_model import FinetuneError

    try:
        cpu_bf16_setting()
    except FinetuneError as exc:
        raise UserError(str(exc)) from None


def run_recipe(recipe_path: Path) -> dict:
    """Run the retrain flow; return its summary or raise UserError with a readable report."""
    started_at = time.time()
    from dapt.progress_view import adopt_log_handlers, say, watched

    # A bar per stage in a terminal, plain lines (never silent for long) in logs and CI.
    with watched(err):
        recipe = read_recipe(recipe_path)
        _check_training_environment()
        say(f"run {recipe.name}: validate → adapt → fine-tune → evaluate → export → register → promote")
        with stage(f"run {recipe.name}"):
            state = _run_flow(recipe, adopt_log_handlers, started_at)
    if state.is_failed():
        data = None
        try:
            data = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - the state's own message is reported below
            data = None
        if isinstance(data, dict) and "checks" in data:
            from expectations.runner import render_report_dict

            render_report_dict(data, console)
            raise UserError(
                "data validation failed: fix the data (or the thresholds in the recipe) and run again",
                exit_code=ExitCode.FAILURE,
            )
        raise UserError(f"run failed: {state.message}", exit_code=ExitCode.FAILURE)
    summary = state.result()
    _print_run_summary(summary)
    return summary


def refuse_unless_promoted(summary: dict) -> None:
    """Exit 3 when the gate kept the new version out of its alias: say why and what to run next."""
    gate = summary.get("gate") or {}
    if gate.get("passed"):
        return
    name, version = summary["name"], summary["version"]
    failures = gate.get("failures") or [gate.get("summary", "the gate was not evaluated")]
    raise UserError(
        f"the gate refused {name} v{version}: it is registered but not promoted.\n"
        + "".join(f"  - {reason}\n" for reason in failures)
        + f"  inspect it: dapt models show {name} --version {version}\n"
        + f"  compare:    dapt models list {name}\n"
        + f'  force it:   dapt models promote {name} {version} --force "reason"',
        exit_code=ExitCode.GATE_REFUSED,
    )


@app.command()
def run(recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/demo.yaml")) -> None:
    """Run the whole flow: validate → adapt → fine-tune → evaluate → export → register → promote.

    Exit code 3 when the new version is registered but the promotion gate refused it.

    Example: dapt run recipes/demo.yaml
    """
    refuse_unless_promoted(run_recipe(recipe))


@app.command()
def validate(recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/demo.yaml")) -> None:
    """Validate the recipe's data with the Great Expectations suites; exit 1 when a check fails.

    Example: dapt validate recipes/demo.yaml
    """
    parsed = read_recipe(recipe)
    from dapt.progress_view import watched
    from models.settings import runs_dir

    out = runs_dir() / f"validate-{time.strftime('%Y%m%dT%H%M%S')}-{parsed.name}"
    with watched(err):
        from expectations.runner import validate_recipe_data  # Great Expectations: a slow import

        report = validate_recipe_data(parsed, out, reference_profile=_production_profile(parsed.name))
    report.render(console)
    console.print(
        f"Validation report (opens offline): {report.write_html(out / 'report.html', f'Data validation — {parsed.name}')}"
    )
    if not report.success:
        raise typer.Exit(ExitCode.FAILURE)


def _production_profile(name: str) -> dict | None:
    from models.registry.store import Registry, RegistryError

    try:
        version = Registry().get_version(name, alias="production")
    except RegistryError:
        return None
    return (version.evidence or {}).get("profile") if version else None


def _resolve_served_version(name: str | None, alias: str, version: int | None):
    from models.registry.store import Registry, RegistryError

    registry = Registry()
    try:
        if name is None:
            names = sorted({v.name for v in registry.list_versions()})
            if not names:
                raise UserError("the registry is empty: run `dapt run recipes/demo.yaml` first")
            if len(names) > 1:
                raise UserError(f"several models are registered ({', '.join(names)}): choose one with --name")
            name = names[0]
        chosen = (
            registry.get_version(name, version=version)
            if version
            else registry.get_version(name, alias=alias)
        )
        path = registry.load_path(name, version=chosen.version, verify=True)
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    return chosen, path


def _split_at(value: str, option: str) -> tuple[str | None, str]:
    """``NAME@REST`` -> (NAME, REST); ``REST`` -> (None, REST); UserError for an empty part."""
    if "@" not in value:
        return None, value.strip()
    name, _, rest = value.partition("@")
    if not name.strip() or not rest.strip():
        raise UserError(f"{option} {value!r}: write NAME@ALIAS (e.g. finsent@production)")
    return name.strip(), rest.strip()


def _shadow_target(spec: str, served: list) -> dict:
    """The shadow's {name, version, bundle_dir, alias} from ``[NAME@]ALIAS|VERSION`` (digits: a version)."""
    from models.registry.store import Registry, RegistryError

    name, target = _split_at(spec, "--shadow")
    names = [chosen.name for chosen, _ in served]
    if name is None:
        if len(names) > 1:
            raise UserError(
                f"--shadow {spec!r}: several models are served ({', '.join(names)}); say whose version shadows "
                f"with NAME@ALIAS or NAME@VERSION, e.g. --shadow {names[0]}@{target}"
            )
        name = names[0]
    elif name not in names:
        raise UserError(
            f"--shadow {spec!r}: {name} is not served (served: {', '.join(names)}); add --name {name}"
        )
    registry = Registry()
    version = int(target) if target.isdigit() else None
    alias = None if version is not None else target
    try:
        chosen = registry.get_version(name, version=version, alias=alias)
        path = registry.load_path(name, version=chosen.version, verify=True)
    except RegistryError as exc:
        raise UserError(f"--shadow {spec!r}: {exc}") from None
    production = next(c for c, _ in served if c.name == name)
    task = (chosen.evidence or {}).get("recipe", {}).get("task")
    production_task = (production.evidence or {}).get("recipe", {}).get("task")
    if task and production_task and task != production_task:
        raise UserError(
            f"--shadow {spec!r}: v{chosen.version} is a {task} model and production a {production_task} one"
        )
    return {"name": name, "version": chosen.version, "bundle_dir": str(path), "alias": alias}


def _set_prediction_log(mode: str) -> None:
    """The server inherits the environment: DAPT_PREDICTION_LOG is how services/prediction_log.py reads it."""
    import os

    from models.settings import PREDICTION_LOG_ENV

    if mode not in ("off", "hash", "text"):
        raise UserError(f"--log-predictions {mode!r}: use off, hash (the text's sha256 only) or text")
    os.environ[PREDICTION_LOG_ENV] = mode


@app.command()
def serve(
    name: list[str] = typer.Option(
        None,
        help="Registered model to serve, NAME or NAME@ALIAS; repeat to serve several in one service "
        "(default: the only one registered).",
    ),
    alias: str = typer.Option("production", help="Alias to serve (for each --name without @ALIAS)."),
    version: int = typer.Option(None, help="Serve this version instead of the alias (one --name only)."),
    shadow: str = typer.Option(
        None,
        help="Also load this version of the served model, ALIAS or VERSION (NAME@... when several are "
        "served), and send it a copy of every request; its agreement is shown in /metadata and recorded "
        "in the registry.",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(3000, help="Port to bind."),
    log_predictions: str = typer.Option(
        None, help="Prediction log under DAPT_HOME/predictions: off, hash (text's sha256 only) or text."
    ),
) -> None:
    """Serve registered versions over HTTP with BentoML + ONNX Runtime (checksums verified first).

    Examples: dapt serve --alias production --port 3000;
    dapt serve --name finsent --name finner@production;
    dapt serve --name finsent --shadow candidate
    """
    if log_predictions is not None:
        _set_prediction_log(log_predictions)
    specs = [_split_at(value, "--name") for value in name or []]
    if version is not None and len(specs) > 1:
        raise UserError("--version serves one model: use NAME@ALIAS forms when serving several")
    wanted: list[tuple[str | None, str]] = [
        (base or rest, alias if base is None else rest) for base, rest in specs
    ] or [(None, alias)]
    seen = [n for n, _ in wanted]
    if len(set(seen)) < len(seen):
        raise UserError(
            "a model is named twice: serve each model once; a second version of a model is a --shadow"
        )
    served = []
    for model_name, model_alias in wanted:
        chosen, path = _resolve_served_version(model_name, model_alias, version)
        served.append((chosen, path))
    following = [None if version else model_alias for _, model_alias in wanted]
    shadow_target = _shadow_target(shadow, served) if shadow else None
    (first, first_path), *more = served
    for (chosen, path), follows in zip(served, following, strict=True):
        console.print(
            f"serving {chosen.name} v{chosen.version}"
            + (f" ('{follows}')" if follows else "")
            + f" from {path} on http://{host}:{port}"
        )
    if shadow_target:
        console.print(
            f"shadow: {shadow_target['name']} v{shadow_target['version']} answers a copy of every request"
        )
    extra = [
        {"name": c.name, "version": c.version, "bundle_dir": str(p), "alias": follows}
        for (c, p), follows in zip(more, following[1:], strict=True)
    ]
    process = start_server(
        first_path,
        first.name,
        first.version,
        host,
        port,
        alias=following[0],
        extra_models=extra,
        shadow=shadow_target,
    )
    code = serve_until_stopped(process)
    if code:
        raise typer.Exit(code)


@app.command()
def demo(
    recipe: Path = typer.Argument(Path("recipes/demo.yaml"), help="Recipe YAML"),
    text: list[str] = typer.Option(
        None, "--text", help="Text(s) to classify at the end (default: two sample headlines)."
    ),
) -> None:
    """The whole product in one command: run the flow, serve production on loopback, predict over HTTP, stop.

    Example: dapt demo recipes/demo.yaml
    """
    import httpx

    summary = run_recipe(recipe)
    refuse_unless_promoted(summary)
    chosen, path = _resolve_served_version(summary["name"], "production", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    console.print(f"starting the service for {chosen.name} v{chosen.version} on {url} ...")
    process = start_server(path, chosen.name, chosen.version, "127.0.0.1", port)
    try:
        try:
            wait_ready(url, process)
        except ServerError as exc:
            raise UserError(str(exc)) from None
        task = (chosen.evidence or {}).get("recipe", {}).get("task", "classification")
        texts = text or (
            [
                "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn a year earlier.",
                "The company warned that net sales will fall sharply in 2009.",
            ]
            if task == "classification"
            else ["Nokia posted net sales of EUR 1.2 bn in the third quarter of 2008."]
        )
        endpoint = "classify" if task == "classification" else "entities"
        response = httpx.post(f"{url}/{endpoint}", json={"texts": texts}, timeout=60)
        console.print(f"POST {url}/{endpoint} -> {response.status_code}")
        console.print_json(json.dumps(response.json()))
        if response.status_code != 200:
            raise UserError(
                f"the prediction request failed with HTTP {response.status_code}", exit_code=ExitCode.FAILURE
            )
    finally:
        stop_server(process)
        console.print("server stopped")


@bento_app.command("build")
def bento_build(
    name: str = typer.Option(None, help="Registered model name (default: the only one registered)."),
    alias: str = typer.Option("production", help="Alias whose version is packaged."),
    version: int = typer.Option(None, help="Package this version instead of the alias."),
    cpu: bool = typer.Option(
        False,
        "--cpu",
        help="CPU image (python:3.11-slim, onnxruntime) instead of the GPU one (CUDA 12.8 base).",
    ),
) -> None:
    """Import a registered version into the BentoML store and build a Bento with its Dockerfile (offline).

    The image is the GPU one from bentofile.yaml (it falls back to CPU on a host without a GPU); --cpu builds
    the smaller CPU-only image from bentofile.cpu.yaml.

    Example: dapt bento build --alias production --cpu
    """
    from dapt.bento import build_bento, import_bundle_to_bentoml

    chosen, path = _resolve_served_version(name, alias, version)
    tag = import_bundle_to_bentoml(path, chosen.name, chosen.version, {"metrics": chosen.metrics})
    bento_tag, dockerfile = build_bento(tag, cpu=cpu)
    console.print(f"model {tag} → bento {bento_tag} ({'CPU' if cpu else 'GPU'} image)")
    console.print(f"Dockerfile: {dockerfile}")
    console.print(f"container: `bentoml containerize {bento_tag}` on a machine with Docker")
    if not cpu:
        console.print(
            "run it with `docker run --gpus all ...` to serve on CUDA (it uses the CPU without a GPU)"
        )


@app.command()
def schedule(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/demo.yaml"),
    cron: str = typer.Option(..., help="Cron expression, e.g. '0 3 * * *' (03:00 daily)."),
    deployment: str = typer.Option(None, help="Deployment name (default: <model>-scheduled)."),
) -> None:
    """Serve the retrain flow as a scheduled Prefect deployment against a running Prefect server. Blocks.

    Example: PREFECT_API_URL=http://127.0.0.1:4200/api dapt schedule recipes/demo.yaml --cron "0 3 * * *"
    """
    parsed = read_recipe(recipe)
    from flows.deploy import ScheduleError, serve_retraining

    try:
        serve_retraining(parsed, cron, deployment)
    except ScheduleError as exc:
        raise UserError(str(exc)) from None


app.add_typer(models_app, name="models", help="List, inspect, promote and roll back registered versions.")
register_stage_commands(app)
register_ui_command(app)
register_watch_command(app)
register_monitor_command(app)


def _click_classes() -> dict[str, tuple[type[BaseException], ...]]:
    """Exit, abort and usage-error classes of both click flavours: Typer 0.29 raises its own bundled copy of
    click (``typer._click``), while a library called by a command may still raise the real ``click`` ones."""
    found: dict[str, list[type[BaseException]]] = {
        "exit": [typer.Exit],
        "abort": [typer.Abort],
        "usage": [],
    }
    try:
        from typer._click.exceptions import ClickException as BundledClickException
    except ImportError:  # a Typer built on the real click package
        pass
    else:
        found["usage"].append(BundledClickException)
    try:
        import click
    except ImportError:  # Typer 0.29 does not need it
        pass
    else:
        found["exit"].append(click.exceptions.Exit)
        found["abort"].append(click.exceptions.Abort)
        found["usage"].append(click.exceptions.ClickException)
    return {kind: tuple(classes) for kind, classes in found.items()}


def run_cli(args: list[str] | None = None) -> int:
    """Run the app and return its exit code (see dapt/exit_codes.py) instead of exiting."""
    classes = _click_classes()
    try:
        # standalone_mode=False lets UserError reach us; in exchange Typer hands back the code of a
        # `typer.Exit` as the return value instead of exiting with it, so that value must be used.
        returned = app(args=args, prog_name="dapt", standalone_mode=False)
    except UserError as exc:
        from rich.markup import escape

        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except classes["exit"] as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except classes["abort"]:
        err.print("aborted")
        return ExitCode.INTERRUPTED
    except KeyboardInterrupt:
        err.print("interrupted")
        return ExitCode.INTERRUPTED
    except classes["usage"] as exc:
        exc.show()  # type: ignore[attr-defined]  # click's usual "Usage: ... Try 'dapt ... --help' ... Error: ..." on stderr
        return int(getattr(exc, "exit_code", ExitCode.USAGE))
    # Commands return None; an int here is the code of a `typer.Exit` raised inside a command.
    if isinstance(returned, int) and not isinstance(returned, bool):
        return returned
    return ExitCode.OK


def main() -> None:
    """Console entry point: exits with the command's code; user mistakes are one readable line, not a stack
    trace. Unexpected exceptions keep their traceback and exit 1 (a bug to report).

    Under ``torchrun`` / ``accelerate launch`` with several processes, rank 0 runs the command and the other
    ranks follow it into the training stages (models/distributed.py), so ``dapt run RECIPE`` trains
    data-parallel while rank 0 alone validates, evaluates, exports and registers."""
    from models.distributed import lead_or_follow
    from models.settings import world_size

    if world_size() > 1:
        configure_environment()  # the followers run no command, so no command's callback sets it for them
    sys.exit(int(lead_or_follow(run_cli)))


if __name__ == "__main__":
    main()

"""`dapt models ...`: list, inspect, diff, promote, roll back and archive registered versions; alias history.

Mounted by dapt/cli/app.py as ``app.add_typer(models_app, name="models")``. Registry errors print one red line and
exit with code 1 (no traceback). The registry module is imported inside commands so ``--help`` stays instant.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console

from dapt.exit_codes import ExitCode
from models.settings import configure_environment

if TYPE_CHECKING:
    from models.registry.store import ModelVersion, Registry

console = Console()
err = Console(stderr=True)
KEY_METRICS = ("macro_f1", "accuracy", "f1", "eval_loss")  # shown in `list`, first three present

models_app = typer.Typer(
    help="List, inspect, compare, promote, roll back and archive registered model versions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_F = TypeVar("_F", bound=Callable[..., Any])


@models_app.callback()
def _setup() -> None:
    configure_environment()
    if not console.is_terminal:
        # Piped or redirected: tables keep their natural width instead of cutting cells at 80 columns.
        console.width = 100_000


JSON_OPTION = typer.Option(False, "--json", help="Print JSON (for scripts) instead of tables.")


def _print_json(value: Any) -> None:
    import sys

    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def _version_json(version: ModelVersion, evidence: bool = False) -> dict[str, Any]:
    data = {
        "name": version.name,
        "version": version.version,
        "uri": version.uri,
        "status": version.status,
        "created_at": version.created_at.isoformat(),
        "aliases": version.aliases,
        "metrics": version.metrics,
        "data_sha256": version.data_sha256,
        "base_model": version.base_model,
        "code_revision": version.code_revision,
        "manifest_sha256": version.manifest_sha256,
        "size_bytes": version.size_bytes,
        "file_count": version.file_count,
        "path": str(version.path),
        "location": version.location,
    }
    if evidence:
        data["evidence"] = version.evidence
    return data


def _registry() -> Registry:
    from models.registry.store import Registry

    return Registry()


def _friendly_errors(command: _F) -> _F:
    """Registry errors become one red line and exit code 1 (3 when the promotion gate refused)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from models.registry.store import GateRefused, RegistryError

        try:
            return command(*args, **kwargs)
        except RegistryError as error:
            err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            code = ExitCode.GATE_REFUSED if isinstance(error, GateRefused) else ExitCode.FAILURE
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _validation_summary(validation: dict | None) -> dict | None:
    """The validation evidence in a few readable rows: its checks and data profile are long JSON (thousands of
    characters) that made one giant cell; every field stays in `--json` and the UI's validation page."""
    if not validation:
        return validation
    checks = validation.get("checks") or []
    others = [
        f"{c.get('name')} ({c.get('suite')}): {c.get('status')}" for c in checks if c.get("status") != "pass"
    ]
    shown = {key: value for key, value in validation.items() if key not in ("checks", "profile", "drift")}
    shown["checks"] = f"{len(checks)} (each with its numbers: --json)"
    shown["checks not passed"] = "; ".join(others) or "none"
    drift = validation.get("drift")
    shown["drift"] = (drift.get("summary") if isinstance(drift, dict) else None) or (
        "-" if not drift else "see --json"
    )
    if validation.get("profile"):
        shown["profile"] = "see --json"
    return shown


def _status(version: ModelVersion) -> str:
    return "[dim]archived[/dim]" if version.archived else "[green]ready[/green]"


@models_app.command("list")
@_friendly_errors
def list_command(
    name: str = typer.Argument(None, help="Only this model (default: every model)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Registered versions with their aliases and key metrics.

    Example: dapt models list finsent   (or --json for scripts)
    """
    from rich.table import Table

    versions = _registry().list_versions(name)
    if as_json:
        _print_json([_version_json(version) for version in versions])
        return
    if not versions:
        where = f"of '{name}' " if name else ""
        console.print(f"no versions {where}registered yet; run `dapt run recipes/demo.yaml` to make one")
        return
    metrics = [key for key in KEY_METRICS if any(key in v.metrics for v in versions)][:3]
    table = Table(title="registered versions")
    for column in ("name", "version", "created (UTC)", "aliases", *metrics, "status"):
        table.add_column(column, justify="right" if column in metrics or column == "version" else "left")
    for version in versions:
        table.add_row(
            version.name,
            str(version.version),
            version.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            ", ".join(version.aliases) or "-",
            *(_fmt(version.metrics.get(key)) for key in metrics),
            _status(version),
        )
    console.print(table)


@models_app.command("show")
@_friendly_errors
def show_command(
    name: str = typer.Argument(..., help="Model name."),
    version: int = typer.Option(None, "--version", "-v", help="Version number (default: newest)."),
    alias: str = typer.Option(None, "--alias", "-a", help="Alias such as production or staging."),
    verify: bool = typer.Option(False, "--verify", help="Also check every file against the sha256 manifest."),
    as_json: bool = JSON_OPTION,
) -> None:
    """One version: metrics, forgetting, parity, validation, lineage and where its files are.

    Example: dapt models show finsent --alias production --verify
    """
    from rich.table import Table

    registry = _registry()
    chosen = registry.get_version(name, version=version, alias=alias)
    if as_json:
        if verify:
            registry.verify(chosen)
        _print_json(_version_json(chosen, evidence=True) | ({"verified": True} if verify else {}))
        return
    console.print(
        f"[bold]{chosen.name} v{chosen.version}[/bold]  {_status(chosen)}  aliases: {', '.join(chosen.aliases) or '-'}"
    )
    console.print(f"created {chosen.created_at:%Y-%m-%d %H:%M:%S} UTC   path {chosen.path}")
    console.print(
        f"base model {chosen.base_model or '-'}   data sha256 {(chosen.data_sha256 or '-')[:16]}   "
        f"code {chosen.code_revision or '-'}   {chosen.file_count or 0} files, {(chosen.size_bytes or 0) / 1e6:.1f} MB"
    )
    from models.registry.evidence import Evidence

    evidence = Evidence.from_record(chosen.evidence)
    sections = (
        ("metrics", evidence.metrics),
        ("forgetting", evidence.forgetting.model_dump(exclude_unset=True)),
        ("validation", _validation_summary(evidence.validation)),
        ("lineage", evidence.lineage.model_dump(exclude_unset=True) if evidence.lineage else None),
    )
    for title, values in sections:
        if values:
            table = Table(title=title, show_header=False)
            table.add_column("key")
            table.add_column("value", overflow="fold")
            for key, value in sorted(values.items()):
                table.add_row(str(key), _fmt(value))
            console.print(table)
    parity = evidence.parity_results()
    if parity:
        table = Table(title="parity (ONNX vs PyTorch)")
        for column in ("variant", "max abs diff", "label agreement", "passed"):
            table.add_column(column)
        for variant, result in sorted(parity.items()):
            table.add_row(
                variant, _fmt(result.max_abs_diff), _fmt(result.label_agreement), _fmt(result.passed)
            )
        console.print(table)
    if verify:
        registry.verify(chosen)
        console.print(f"[green]verified[/green]: every file matches {chosen.path / 'manifest.json'}")


@models_app.command("diff")
@_friendly_errors
def diff_command(
    name: str = typer.Argument(..., help="Model name."),
    v1: int = typer.Argument(..., help="First version."),
    v2: int = typer.Argument(..., help="Second version."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Metric deltas and every evidence field that differs between two versions.

    Example: dapt models diff finsent 3 4
    """
    from rich.table import Table

    difference = _registry().diff(name, v1, v2)
    if as_json:
        _print_json(
            {
                "name": name,
                "v1": v1,
                "v2": v2,
                "metrics": {m: {"v1": a, "v2": b, "delta": d} for m, (a, b, d) in difference.metrics.items()},
                "evidence": {key: {"v1": a, "v2": b} for key, (a, b) in difference.evidence.items()},
            }
        )
        return
    table = Table(title=f"{name}: metrics v{v1} -> v{v2}")
    for column in ("metric", f"v{v1}", f"v{v2}", "delta"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for metric, (a, b, delta) in difference.metrics.items():
        colour = "" if not delta else ("green" if delta > 0 else "red")
        shown = _fmt(delta) if delta is None else f"{delta:+.4f}"
        table.add_row(metric, _fmt(a), _fmt(b), f"[{colour}]{shown}[/{colour}]" if colour else shown)
    console.print(table)
    changed = {k: v for k, v in difference.evidence.items() if not k.startswith("metrics.")}
    if changed:
        table = Table(title="other evidence that differs")
        for column in ("field", f"v{v1}", f"v{v2}"):
            table.add_column(column, overflow="fold")
        for key, (a, b) in changed.items():
            table.add_row(key, _fmt(a), _fmt(b))
        console.print(table)


@models_app.command("promote")
@_friendly_errors
def promote_command(
    name: str = typer.Argument(..., help="Model name."),
    version: int = typer.Argument(..., help="Version to promote."),
    alias: str = typer.Option("production", "--alias", "-a", help="Alias to move."),
    force: str = typer.Option(None, "--force", help="Move even if the gate refuses; the reason is audited."),
    metric: str = typer.Option("macro_f1", help="Gate metric (higher is better)."),
    min_value: float = typer.Option(0.0, help="Absolute floor for the metric."),
    tolerance: float = typer.Option(0.0, help="How far below the current holder the candidate may be."),
    max_forgetting: float = typer.Option(None, help="Budget for the rise of general-text MLM loss."),
    require_parity: bool = typer.Option(True, help="Require every ONNX variant to have passed parity."),
    min_shadow_requests: int = typer.Option(
        None, help="Require this many shadow requests beside production (`dapt serve --shadow`)."
    ),
    min_shadow_agreement: float = typer.Option(
        None, help="Require this shadow agreement with production (label agreement; span F1 for NER)."
    ),
) -> None:
    """Gate a version against the alias's current holder and move the alias if it passes.

    Example: dapt models promote finsent 4 --alias production --tolerance 0.01
    """
    from models.recipe import GateConfig
    from models.registry.store import GateRefused, RegistryError

    try:
        gate = GateConfig(
            metric=metric,
            min_value=min_value,
            tolerance=tolerance,
            max_forgetting=max_forgetting,
            require_parity=require_parity,
            min_shadow_requests=min_shadow_requests,
            min_shadow_agreement=min_shadow_agreement,
            alias=alias,
        )
    except ValueError as error:  # pydantic's ValidationError names the option
        first = error.errors()[0] if hasattr(error, "errors") else {}
        field = ".".join(str(part) for part in first.get("loc", ())) or "gate"
        raise RegistryError(f"invalid --{field.replace('_', '-')}: {first.get('msg', error)}") from None
    registry = _registry()
    decision = registry.promote(name, version, alias=alias, gate=gate, force_reason=force)
    for reason in decision.reasons:
        mark = "[red]✗[/red]" if reason in decision.failures else "[green]✓[/green]"
        console.print(f"  {mark} {reason}", highlight=False)
    if not decision.passed and force is None:
        raise GateRefused(decision, name, version, alias)
    holder = registry.aliases(name).get(alias)
    verb = "forced" if not decision.passed else "promoted"
    console.print(f"[green]{verb}[/green]: '{alias}' of {name} now points at v{holder}")


@models_app.command("rollback")
@_friendly_errors
def rollback_command(
    name: str = typer.Argument(..., help="Model name."),
    alias: str = typer.Option("production", "--alias", "-a", help="Alias to move back."),
) -> None:
    """Move an alias back to the version it pointed at before its last move.

    Example: dapt models rollback finsent --alias production
    """
    move = _registry().rollback(name, alias=alias)
    console.print(
        f"[green]rolled back[/green]: '{alias}' of {name} v{move.from_version} -> v{move.to_version}"
    )


@models_app.command("archive")
@_friendly_errors
def archive_command(
    name: str = typer.Argument(..., help="Model name."),
    version: int = typer.Argument(..., help="Version to archive."),
) -> None:
    """Archive a version: it stays loadable by number but can no longer take aliases.

    Example: dapt models archive finsent 2
    """
    archived = _registry().archive(name, version)
    console.print(f"archived {archived.name} v{archived.version}")


@models_app.command("audit")
@_friendly_errors
def audit_command(
    name: str = typer.Argument(..., help="Model name."),
    alias: str = typer.Option(None, "--alias", "-a", help="Only this alias."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The audit log of alias moves (and refused promotions): from, to, kind, reason, actor, time.

    Example: dapt models audit finsent
    """
    from rich.table import Table

    registry = _registry()
    if not registry.list_versions(name):
        registry.get_version(name)  # raises a clear ModelNotFound
    moves = registry.audit_log(name, alias)
    if as_json:
        _print_json(
            [
                {
                    "id": m.id,
                    "alias": m.alias,
                    "kind": m.kind,
                    "from_version": m.from_version,
                    "to_version": m.to_version,
                    "reason": m.reason,
                    "actor": m.actor,
                    "created_at": m.created_at.isoformat(),
                    "decision": m.decision,
                }
                for m in moves
            ]
        )
        return
    if not moves:
        console.print(f"no alias moves for '{name}' yet; run `dapt models promote {name} <version>`")
        return
    table = Table(title=f"{name}: alias audit log")
    for column in ("#", "time (UTC)", "alias", "kind", "from", "to", "actor", "reason"):
        table.add_column(column, overflow="fold")
    for move in moves:
        kind = move.kind if move.kind != "refused" else "[yellow]refused[/yellow]"
        table.add_row(
            str(move.id),
            move.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            move.alias,
            kind,
            "-" if move.from_version is None else f"v{move.from_version}",
            f"v{move.to_version}",
            move.actor,
            move.reason,
        )
    console.print(table)


@models_app.command("register")
@_friendly_errors
def register_command(
    name: str = typer.Argument(..., help="Model name (lowercase letters, digits, '-' or '_')."),
    bundle_dir: str = typer.Argument(
        ..., help="A serving bundle: what `dapt export` writes, or another trainer's."
    ),
    evidence_file: str = typer.Option(
        None,
        "--evidence",
        help="Evidence JSON to register with (default: the bundle's evidence.json, if any).",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Import an exported bundle as the next version of NAME, with its evidence; no alias moves.

    Example: dapt models register finsent runs/export/bundle   (then: dapt models promote finsent N)
    """
    from pathlib import Path

    from models.registry.imports import imported_evidence
    from models.registry.store import BundleError, InvalidName, check_name

    try:
        check_name(name)
        bundle = Path(bundle_dir).expanduser().resolve()
        evidence = imported_evidence(bundle, Path(evidence_file).expanduser() if evidence_file else None)
        registered = _registry().register(name, bundle, evidence.record)
    except (BundleError, InvalidName) as error:  # the input is wrong: fix the command (exit 2)
        err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.USAGE) from None
    if as_json:
        _print_json(
            _version_json(registered)
            | {"evidence_source": evidence.source, "evidence_missing": evidence.missing}
        )
        return
    console.print(
        f"[green]registered[/green] {registered.name} v{registered.version} from {bundle} "
        f"({registered.file_count} files, {(registered.size_bytes or 0) / 1e6:.1f} MB) at {registered.location}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"evidence: {evidence.source}", highlight=False, soft_wrap=True)
    if evidence.missing:
        console.print(
            f"[yellow]note:[/yellow] not a complete dapt Evidence (missing or invalid: {', '.join(evidence.missing)}); "
            "the gate judges the metrics and parity it has",
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"next: `dapt models promote {registered.name} {registered.version}`", highlight=False)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s"


@models_app.command("history")
@_friendly_errors
def history_command(
    name: str = typer.Argument(..., help="Model name."),
    alias: str = typer.Option(None, "--alias", "-a", help="Only this alias (default: every alias)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Which version held each alias, from when to when, and who or what moved it and why.

    "how" is manual, manual (gate overridden), gate, rollback or automatic rollback (`dapt watch`).
    Example: dapt models history finsent --alias production
    """
    from datetime import datetime, timezone

    from rich.table import Table

    from models.registry.history import alias_history
    from models.registry.store import check_name

    registry = _registry()
    if alias is not None:
        check_name(alias, "alias")
    if not registry.list_versions(name):
        registry.get_version(name)  # raises a clear ModelNotFound
    history = alias_history(registry, name, alias)
    if as_json:
        _print_json([tenure.to_dict() for tenure in history])
        return
    if not history:
        which = f"alias '{alias}'" if alias else "any alias"
        console.print(
            f"no version of '{name}' has held {which} yet; run `dapt models promote {name} <version>`"
        )
        return
    now = datetime.now(timezone.utc)
    table = Table(title=f"{name}: alias history (UTC)")
    for column in ("alias", "version", "from", "until", "held", "how", "actor", "reason", "ended by"):
        table.add_column(column, overflow="fold")
    for tenure in history:
        how = tenure.how if tenure.kind != "auto-rollback" else f"[yellow]{tenure.how}[/yellow]"
        ended = "-" if tenure.ended_by is None else f"{tenure.ended_by}: {tenure.ended_reason}"
        table.add_row(
            tenure.alias,
            f"v{tenure.version}",
            tenure.since.strftime("%Y-%m-%d %H:%M:%S"),
            "[green]now[/green]" if tenure.current else f"{tenure.until:%Y-%m-%d %H:%M:%S}",
            _duration(tenure.held_s(now)),
            how,
            tenure.actor,
            tenure.reason,
            ended,
        )
    console.print(table)

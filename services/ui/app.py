"""The registry UI as a Starlette app: models, versions, evidence, diffs, audit log, validation and run reports.

Every page is rendered on the server from the same registry the CLI uses (``models.registry.store.Registry``);
nothing is fetched from outside the machine (one local stylesheet, images served from the version's files,
a Content-Security-Policy that allows only this origin). Files are read through the registry's artifact store
(a local folder or S3: services/ui/files.py) and served only when the manifest lists them and their sha256
still matches (the manifest itself is checked against the database first).

Promote and rollback exist only when an admin token is configured (``DAPT_ADMIN_TOKEN``): POST forms carry
the token, typed by the user, and a CSRF value that must match a SameSite=Strict cookie.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from models import settings
from models.htmlpage import STYLE, markdown_to_html, split_front_matter
from models.registry.evidence import Evidence
from models.registry.store import (
    MODEL_CARD,
    ChecksumError,
    ModelNotFound,
    ModelVersion,
    Registry,
    RegistryError,
    VersionNotFound,
    check_name,
)
from services.ui.files import manifest_files, verified_bytes

TEMPLATES = Path(__file__).with_name("templates")
CSRF_COOKIE = "dapt_ui_csrf"
PREFERRED_METRICS = ("macro_f1", "accuracy", "entity_f1", "weighted_f1", "ece", "eval_loss")
LOWER_IS_BETTER = ("loss", "ece")
SERVABLE = {".png": "image/png", ".json": "application/json", ".md": "text/plain; charset=utf-8"}
# Files of the run folder (outside the registry) the UI links to; nothing else there is served.
RUN_FILES = {
    "report.html": "text/html; charset=utf-8",
    "report.md": "text/plain; charset=utf-8",
    "validation/report.html": "text/html; charset=utf-8",
}
CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
GATE_KINDS = ("promote", "force", "refused")


# ------------------------------------------------------------------------------------------------ formatting
def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def fmt_time(value: datetime | str | None) -> str:
    if isinstance(value, str):
        try:
            moment: datetime | None = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        moment = value
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def delta_class(metric: str, delta: float | None) -> str:
    if not delta:
        return ""
    better = delta < 0 if any(word in metric for word in LOWER_IS_BETTER) else delta > 0
    return "delta-up" if better else "delta-down"


def shown_metrics(versions: list[ModelVersion], limit: int = 6) -> list[str]:
    """The metric columns: the usual ones first, then others that every table can hold."""
    present: list[str] = []
    for mv in versions:
        for key, value in mv.metrics.items():
            if key not in present and isinstance(value, int | float) and not isinstance(value, bool):
                present.append(key)
    ordered = [m for m in PREFERRED_METRICS if m in present] + sorted(
        m for m in present if m not in PREFERRED_METRICS
    )
    return ordered[:limit]


def short(value: Any, length: int = 12) -> str:
    text = str(value or "")
    return text[:length] if text else "—"


# ------------------------------------------------------------------------------------------------ evidence
def evaluation_tables(evidence: Evidence) -> dict[str, dict[str, dict[str, Any]]]:
    """Per-class (or per entity type) and per-slice tables from the stored evaluation."""
    evaluation = evidence.evaluation
    tables = {}
    for key, title in (
        ("per_class", "per class"),
        ("per_type", "per entity type"),
        ("per_slice", "per slice"),
    ):
        table = evaluation.get(key)
        if isinstance(table, dict) and table:
            tables[title] = {str(k): v for k, v in table.items() if isinstance(v, dict)}
    return tables


def table_columns(rows: dict[str, dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows.values():
        for key in row:
            if key not in columns:
                columns.append(key)
    return columns


def adaptation_gain(evidence: Evidence) -> dict[str, Any] | None:
    """What adaptation did: the domain MLM loss before/after, and its measured gain on the task (the base vs
    the adapted encoder, models/evaluation/adaptation_gain.py) with which encoder was kept, when measured."""
    before, after = evidence.forgetting.domain_loss_before, evidence.forgetting.domain_loss_after
    task = evidence.adaptation_gain or None
    if (before is None or after is None) and not task:
        return None
    return {
        "domain_loss_before": before if after is not None else None,
        "domain_loss_after": after if before is not None else None,
        "gain": before - after if before is not None and after is not None else None,
        "task": task,
    }


def validation_summary(evidence: Evidence) -> dict[str, Any] | None:
    validation = evidence.validation
    if not validation:
        return None
    checks = validation.get("checks") or []
    counts = {"pass": 0, "warn": 0, "fail": 0}
    for check in checks:
        status = check.get("status") or ("pass" if check.get("success") else "fail")
        counts[status] = counts.get(status, 0) + 1
    return {
        "success": validation.get("success"),
        "summary": validation.get("summary"),
        "counts": counts,
        "checks": len(checks),
        "drift": validation.get("drift"),
        "has_checks": bool(checks),
    }


def gate_decisions(registry: Registry, name: str) -> dict[int, Any]:
    """version -> the latest gate event (promote, force or refused) about it."""
    decisions: dict[int, Any] = {}
    for move in registry.audit_log(name):
        if move.kind in GATE_KINDS:
            decisions[move.to_version] = move
    return decisions


# ------------------------------------------------------------------------------------------------ files
def run_dir(mv: ModelVersion) -> Path | None:
    lineage = Evidence.from_record(mv.evidence).lineage
    folder = lineage.run_dir if lineage else None
    return Path(folder) if folder else None


def run_files(mv: ModelVersion) -> list[str]:
    folder = run_dir(mv)
    return [rel for rel in RUN_FILES if folder and (folder / rel).is_file()]


# ------------------------------------------------------------------------------------------------ app
class SecurityHeaders:
    """Every response says: load nothing from another origin, post forms only here, never be framed."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", CSP)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class _Ui:
    """What every route of one app shares: the registry, the admin token and the page templates."""

    registry: Registry
    token: str | None
    env: Environment

    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        body = self.env.get_template(template).render(request=request, csrf=csrf, **context)
        response = HTMLResponse(body, status_code=status)
        if self.token and request.cookies.get(CSRF_COOKIE) != csrf:
            response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict")
        return response

    def version_of(self, name: str, version: str) -> ModelVersion:
        if not version.isdigit() or int(version) < 1:
            raise HTTPException(400, f"version must be a positive number, got {version!r}")
        return self.registry.get_version(name, int(version))


def _listing_routes(ui: _Ui) -> list[Route]:
    """``/`` (every model) and ``/models/{name}`` (its versions, sortable by any shown metric)."""
    registry = ui.registry

    def index(request: Request) -> Response:
        versions = registry.list_versions()
        models: dict[str, list[ModelVersion]] = {}
        for mv in versions:
            models.setdefault(mv.name, []).append(mv)
        rows = []
        for name, items in sorted(models.items()):
            live = [mv for mv in items if not mv.archived]
            latest = (live or items)[-1]
            rows.append(
                {
                    "name": name,
                    "latest": latest,
                    "count": len(items),
                    "archived": len(items) - len(live),
                    "aliases": registry.aliases(name),
                }
            )
        return ui.page(request, "index.html", models=rows, metrics=shown_metrics(versions, 4))

    def model(request: Request) -> Response:
        name = check_name(request.path_params["name"])
        versions = registry.list_versions(name)
        if not versions:
            registry.get_version(name)  # raises ModelNotFound with the registry's message
        metrics = shown_metrics(versions)
        sort = request.query_params.get("sort", "version")
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise HTTPException(400, f"order must be 'asc' or 'desc', got {order!r}")
        keys = {"version": lambda mv: mv.version, "created": lambda mv: mv.created_at}
        if sort in keys:
            key = keys[sort]
        elif sort in metrics:
            # versions without the metric sort last either way
            def key(mv: ModelVersion, metric: str = sort) -> Any:
                value = mv.metrics.get(metric)
                missing = not isinstance(value, int | float)
                return (missing if order == "asc" else not missing, value if not missing else 0)
        else:
            raise HTTPException(
                400, f"cannot sort by {sort!r}: use one of {', '.join(['version', 'created', *metrics])}"
            )
        ordered = sorted(versions, key=key, reverse=order == "desc")
        return ui.page(
            request,
            "model.html",
            name=name,
            versions=ordered,
            metrics=metrics,
            sort=sort,
            order=order,
            aliases=registry.aliases(name),
            gates=gate_decisions(registry, name),
            audit=list(reversed(registry.audit_log(name))),
            message=request.query_params.get("message"),
        )

    return [Route("/", index), Route("/models/{name}", model)]


def _version_routes(ui: _Ui) -> list[Route]:
    """``/models/{name}/{version}`` (evidence, card, plots, files, events) and its validation report."""

    def version_page(request: Request) -> Response:
        name = check_name(request.path_params["name"])
        mv = ui.version_of(name, request.path_params["version"])
        evidence = Evidence.from_record(mv.evidence)
        files = manifest_files(ui.registry, mv)
        card_meta, card_body, card_error = "", "", ""
        if MODEL_CARD in files:
            try:  # the card is shown only as registered (same check as every served file)
                text = verified_bytes(ui.registry, mv, MODEL_CARD).decode("utf-8", "replace")
            except HTTPException as error:
                card_error = str(error.detail)
            else:
                card_meta, text = split_front_matter(text)
                card_body = markdown_to_html(text, image_prefix=f"/models/{name}/{mv.version}/files/")
        return ui.page(
            request,
            "version.html",
            mv=mv,
            ev=evidence,
            forgetting=evidence.forgetting.model_dump(exclude_unset=True),
            lineage=evidence.lineage.model_dump(exclude_unset=True) if evidence.lineage else {},
            tables=evaluation_tables(evidence),
            table_columns=table_columns,
            gain=adaptation_gain(evidence),
            validation=validation_summary(evidence),
            plots=[f for f in files if f.endswith(".png")],
            files=files,
            run_files=run_files(mv),
            events=[m for m in ui.registry.audit_log(name) if m.to_version == mv.version],
            card_meta=card_meta,
            card_body=card_body,
            card_error=card_error,
            metrics=shown_metrics([mv], limit=100),
        )

    def validation_page(request: Request) -> Response:
        from expectations.report import render_validation_html

        name = check_name(request.path_params["name"])
        mv = ui.version_of(name, request.path_params["version"])
        validation = Evidence.from_record(mv.evidence).validation
        if "checks" not in validation:
            raise HTTPException(404, f"{name} v{mv.version} has no recorded validation checks")
        body = render_validation_html(validation, title=f"Data validation — {name} v{mv.version}")
        return ui.page(request, "validation.html", mv=mv, body=body)

    return [
        Route("/models/{name}/{version}", version_page),
        Route("/models/{name}/{version}/validation", validation_page),
    ]


def _diff_routes(ui: _Ui) -> list[Route]:
    """``/models/{name}/compare`` (the form) and ``/models/{name}/diff/{a}/{b}`` (two versions side by side)."""

    def diff_page(request: Request) -> Response:
        name = check_name(request.path_params["name"])
        a = ui.version_of(name, request.path_params["a"])
        b = ui.version_of(name, request.path_params["b"])
        diff = ui.registry.diff(name, a.version, b.version)
        ta = evaluation_tables(Evidence.from_record(a.evidence))
        tb = evaluation_tables(Evidence.from_record(b.evidence))
        side_tables = {}
        for title in dict.fromkeys([*ta, *tb]):
            rows = dict.fromkeys([*(ta.get(title) or {}), *(tb.get(title) or {})])
            side_tables[title] = [
                (row, (ta.get(title) or {}).get(row) or {}, (tb.get(title) or {}).get(row) or {})
                for row in rows
            ]
        evidence = {
            key: values
            for key, values in diff.evidence.items()
            if not key.startswith(("evaluation.calibration_bins", "validation.checks", "created_at"))
        }
        return ui.page(
            request,
            "diff.html",
            name=name,
            a=a,
            b=b,
            diff=diff,
            evidence=evidence,
            side_tables=side_tables,
            plots=sorted(
                set(f for f in manifest_files(ui.registry, a) if f.endswith(".png"))
                | set(f for f in manifest_files(ui.registry, b) if f.endswith(".png"))
            ),
            files_a=set(manifest_files(ui.registry, a)),
            files_b=set(manifest_files(ui.registry, b)),
        )

    def diff_form(request: Request) -> Response:
        name = check_name(request.path_params["name"])
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        if not a.isdigit() or not b.isdigit():
            raise HTTPException(400, "choose two versions to compare (query parameters a and b)")
        return RedirectResponse(f"/models/{name}/diff/{a}/{b}", status_code=303)

    # compare before the version page: /models/{name}/{version} would take "compare" as a version
    return [Route("/models/{name}/compare", diff_form), Route("/models/{name}/diff/{a}/{b}", diff_page)]


def _file_routes(ui: _Ui) -> list[Route]:
    """The stylesheet, a version's files (manifest-checked) and the run folder's reports."""

    def version_file(request: Request) -> Response:
        name = check_name(request.path_params["name"])
        mv = ui.version_of(name, request.path_params["version"])
        rel = request.path_params["path"]
        media = SERVABLE.get(Path(rel).suffix.lower())
        if media is None:
            raise HTTPException(404, f"only {', '.join(SERVABLE)} files are served, not {rel!r}")
        data = verified_bytes(ui.registry, mv, rel)
        return Response(data, media_type=media, headers={"Cache-Control": "no-cache"})

    def run_file(request: Request) -> Response:
        name = check_name(request.path_params["name"])
        mv = ui.version_of(name, request.path_params["version"])
        rel = request.path_params["path"]
        folder = run_dir(mv)
        if rel not in RUN_FILES or folder is None or not (folder / rel).is_file():
            raise HTTPException(404, f"{name} v{mv.version} has no run file {rel!r}")
        return Response((folder / rel).read_bytes(), media_type=RUN_FILES[rel])

    def stylesheet(request: Request) -> Response:
        return Response(STYLE, media_type="text/css")

    return [
        Route("/static/style.css", stylesheet),
        Route("/models/{name}/{version}/files/{path:path}", version_file),
        Route("/models/{name}/{version}/run/{path:path}", run_file),
    ]


def _admin_routes(ui: _Ui) -> list[Route]:
    """POST promote and rollback: only with an admin token, from this origin, with the CSRF cookie's value."""
    registry, token = ui.registry, ui.token

    async def admin_form(request: Request) -> dict[str, str]:
        if not token:
            raise HTTPException(403, "admin actions are disabled: start `dapt ui` with DAPT_ADMIN_TOKEN set")
        origin = request.headers.get("origin")
        host = request.headers.get("host")
        if origin and origin not in (f"http://{host}", f"https://{host}"):
            raise HTTPException(403, f"cross-origin form post from {origin} refused")
        body = (await request.body()).decode("utf-8", "replace")
        form = {key: values[-1] for key, values in parse_qs(body, keep_blank_values=True).items()}
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not cookie or not hmac.compare_digest(cookie, form.get("csrf", "")):
            raise HTTPException(403, "CSRF check failed: reload the page and submit the form again")
        if not hmac.compare_digest(form.get("token", "").encode(), token.encode()):
            raise HTTPException(403, "wrong admin token (DAPT_ADMIN_TOKEN)")
        return form

    def done(name: str, message: str) -> Response:
        return RedirectResponse(f"/models/{name}?message={quote(message)}", status_code=303)

    async def promote(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        name = check_name(request.path_params["name"])
        form = await admin_form(request)
        version = form.get("version", "")
        if not version.isdigit():
            raise HTTPException(400, f"version must be a positive number, got {version!r}")
        alias = check_name(form.get("alias") or "production", "alias")
        force = form.get("force_reason", "").strip() or None
        actor = f"ui:{request.client.host if request.client else 'unknown'}"
        decision = await run_in_threadpool(registry.promote, name, int(version), alias, None, force, actor)
        if not decision.passed and force is None:
            raise HTTPException(409, f"gate refused {name} v{version} for '{alias}': {decision.summary()}")
        return done(name, f"{alias} -> v{version}: {decision.summary()}")

    async def rollback(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        name = check_name(request.path_params["name"])
        form = await admin_form(request)
        alias = check_name(form.get("alias") or "production", "alias")
        actor = f"ui:{request.client.host if request.client else 'unknown'}"
        move = await run_in_threadpool(registry.rollback, name, alias, actor)
        return done(name, f"{alias} rolled back v{move.from_version} -> v{move.to_version}")

    return [
        Route("/models/{name}/promote", promote, methods=["POST"]),
        Route("/models/{name}/rollback", rollback, methods=["POST"]),
    ]


def _error_handlers(ui: _Ui) -> dict[Any, Any]:
    """Every error as the error page: HTTP errors with their status, registry errors as 404, 409 or 400."""

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", str(exc))
        return ui.page(request, "error.html", status=status, status_code=status, detail=detail)

    async def registry_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ModelNotFound | VersionNotFound):
            status = 404
        elif isinstance(exc, ChecksumError):
            status = 409
        else:
            status = 400
        return ui.page(request, "error.html", status=status, status_code=status, detail=str(exc))

    return {HTTPException: http_error, RegistryError: registry_error}


def create_app(registry: Registry | None = None, admin_token: str | None = None) -> Starlette:
    """The UI over ``registry`` (default: the one models.settings points at). ``admin_token`` (default:
    ``DAPT_ADMIN_TOKEN``) enables promote and rollback; without it the UI is read-only."""
    registry = registry or Registry()
    token = admin_token if admin_token is not None else settings.admin_token()
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    env.filters.update(fmt=fmt, fmt_time=fmt_time, short=short, q=lambda v: quote(str(v), safe=""))
    env.globals.update(delta_class=delta_class, admin=bool(token))
    ui = _Ui(registry, token, env)
    # Starlette tries routes in order: the fixed paths under /models/{name}/ come before the version page.
    routes = [
        *_listing_routes(ui),
        *_diff_routes(ui),
        *_admin_routes(ui),
        *_version_routes(ui),
        *_file_routes(ui),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers=_error_handlers(ui),
        middleware=[Middleware(SecurityHeaders)],
    )
    app.state.registry = registry
    return app


__all__ = ["create_app"]

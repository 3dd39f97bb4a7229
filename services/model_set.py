"""The models one service answers with: where each comes from, which one answers a request, and the shadow.

    models = ModelSet.from_environment(bento_model, metrics, poll_s)   # loads, verifies, warms up every model
    slot, problem = models.choose(request_model, "classification")   # the slot, or an error response
    models.start() / models.stop()                                      # alias pollers and the shadow thread

The first model comes from ``DAPT_BUNDLE_DIR`` (or the bento's BentoML model) and keeps /metadata's top fields;
``DAPT_EXTRA_MODELS`` (a JSON list of ``{"name", "version"?, "bundle_dir", "alias"?}``) adds others by name;
``DAPT_SHADOW`` (one such entry) loads another version of a served model as its shadow (services/shadow.py).
A model that follows an alias starts on the alias's version in the registry now, not the folder it was given.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.settings import (
    ALIAS_ENV,
    BENTO_MODEL_ENV,
    BUNDLE_ENV,
    EXTRA_MODELS_ENV,
    MODEL_NAME_ENV,
    MODEL_VERSION_ENV,
    SHADOW_ENV,
    SHADOW_EVIDENCE_S_ENV,
    SHADOW_QUEUE_ENV,
    env_text,
)
from services.reloader import ModelSlot, ReloadFailed, load_model
from services.shadow import DEFAULT_EVIDENCE_S, DEFAULT_QUEUE, Shadow
from services.validation import TASK_KINDS, error_response, float_env, int_env

logger = logging.getLogger("dapt.service")


def resolve_bundle_dir(bento_model: Any = None) -> tuple[Path, dict[str, str]]:
    """The bundle folder to serve and the labels that name it (from the BentoML model, when used)."""
    configured = env_text(BUNDLE_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not path.is_dir():
            raise RuntimeError(
                f"{BUNDLE_ENV}={configured} does not exist; point it at an exported bundle folder"
            )
        return path, {}
    if bento_model is not None:
        return Path(bento_model.path), {k: str(v) for k, v in (bento_model.info.labels or {}).items()}
    raise RuntimeError(
        f"no model to serve: set {BUNDLE_ENV} to a bundle folder (or {BENTO_MODEL_ENV} to a BentoML model tag "
        "when building the bento), e.g. DAPT_BUNDLE_DIR=.dapt/artifacts/<name>/<version>"
    )


def json_env(name: str, kind: type) -> Any:
    """A JSON variable of the expected kind (list or dict), empty when unset."""
    raw = env_text(name)
    if not raw:
        return kind()
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise RuntimeError(f"{name} is not valid JSON ({exc}); `dapt serve` writes it for you") from None
    if not isinstance(value, kind):
        raise RuntimeError(f"{name} must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def model_entry(entry: Any, variable: str) -> tuple[str, Path, str, str | None]:
    """(name, bundle folder, version, alias) of one ``{"name", "bundle_dir", "version"?, "alias"?}`` entry; with
    an alias, the alias's version in the registry now (as for the first model)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry.get("bundle_dir"):
        raise RuntimeError(f'{variable}: each model needs "name" and "bundle_dir", got {entry!r}')
    bundle_dir = Path(str(entry["bundle_dir"])).expanduser()
    if not bundle_dir.is_dir():
        raise RuntimeError(f"{variable}: {bundle_dir} does not exist; point it at an exported bundle folder")
    name = entry["name"]
    version = str(entry.get("version") or bundle_name_and_version(bundle_dir)[1])
    alias = entry.get("alias") or None
    if alias:
        bundle_dir, version = alias_target(name, str(alias), bundle_dir, version)
    return name, bundle_dir, version, alias


def alias_target(name: str, alias: str, bundle_dir: Path, version: str) -> tuple[Path, str]:
    """The alias's version in the registry now (checksums verified), or the start-up folder when the registry
    cannot say (the alias poller catches up once it can)."""
    from models.registry.store import Registry

    try:
        registry = Registry()
        target = registry.get_version(name, alias=alias)
        if str(target.version) == str(version):
            return bundle_dir, version
        path = registry.load_path(name, version=target.version, verify=True)
    except Exception as exc:  # registry unreachable, alias gone, checksum mismatch: serve what we were given
        logger.warning(
            "cannot resolve alias '%s' of %s at start (%s); serving v%s", alias, name, exc, version
        )
        return bundle_dir, version
    logger.info("alias '%s' of %s is at v%s now (started with v%s)", alias, name, target.version, version)
    return Path(path), str(target.version)


def bundle_name_and_version(bundle_dir: Path) -> tuple[str, str]:
    from models.registry.bundle import ServingSpec

    spec = ServingSpec.read(bundle_dir)
    return spec.name, str(spec.extra.get("version", "unversioned"))


def first_model(bento_model: Any = None) -> tuple[str, Path, str, str | None]:
    """(name, bundle folder, version, alias) of the first model: the environment's names win over the bundle's."""
    bundle_dir, labels = resolve_bundle_dir(bento_model)
    spec_name, spec_version = bundle_name_and_version(bundle_dir)
    name = env_text(MODEL_NAME_ENV) or labels.get("name") or spec_name
    version = env_text(MODEL_VERSION_ENV) or labels.get("version") or spec_version
    alias = env_text(ALIAS_ENV) or None
    if alias:
        # A worker restarted by the process manager gets the environment of the first start: the alias's
        # version now is the one to serve, not the folder named then.
        bundle_dir, version = alias_target(name, alias, bundle_dir, version)
    return name, bundle_dir, version, alias


@dataclass
class ModelSet:
    """Every served model by name, the first first (it keeps /metadata's top fields), and the shadow if any."""

    slots: dict[str, ModelSlot]
    shadow: Shadow | None = None

    @property
    def first(self) -> ModelSlot:
        return next(iter(self.slots.values()))

    @classmethod
    def from_environment(cls, bento_model: Any, metrics: Any, poll_s: float) -> ModelSet:
        """Load, verify the manifest checksums, warm up and probe every model (nothing is started yet)."""

        def slot(bundle_dir: Path, name: str, version: str, alias: str | None) -> ModelSlot:
            return ModelSlot(
                load_model(bundle_dir, name, version),
                alias=alias,
                poll_s=poll_s,
                on_reload=metrics.record_reload,
            )

        name, bundle_dir, version, alias = first_model(bento_model)
        slots = {name: slot(bundle_dir, name, version, alias)}
        for entry in json_env(EXTRA_MODELS_ENV, list):
            extra_name, extra_dir, extra_version, extra_alias = model_entry(entry, EXTRA_MODELS_ENV)
            if extra_name in slots:
                raise RuntimeError(
                    f"{EXTRA_MODELS_ENV} names {extra_name!r} twice: serve each model once (a second version of "
                    "the same model is a shadow: DAPT_SHADOW / dapt serve --shadow)"
                )
            slots[extra_name] = slot(extra_dir, extra_name, extra_version, extra_alias)
        models = cls(slots)
        shadow_entry = json_env(SHADOW_ENV, dict)
        if shadow_entry:
            models.shadow = models.load_shadow(shadow_entry, slot, metrics)
        return models

    def load_shadow(
        self, entry: dict[str, Any], load: Callable[[Path, str, str, str | None], ModelSlot], metrics: Any
    ) -> Shadow:
        """The :class:`Shadow` of a served model: another version, answering the same task."""
        name, bundle_dir, version, alias = model_entry(entry, SHADOW_ENV)
        production = self.slots.get(name)
        if production is None:
            raise RuntimeError(
                f"{SHADOW_ENV} shadows {name!r}, which is not served here (served: {', '.join(self.slots)})"
            )
        slot = load(bundle_dir, name, version, alias)
        if slot.current.task != production.current.task:
            raise RuntimeError(
                f"the shadow {name} v{version} is a {slot.current.task} model and production a "
                f"{production.current.task} model: a shadow must answer the same requests"
            )
        return Shadow(
            slot,
            metrics=metrics,
            queue_size=int_env(SHADOW_QUEUE_ENV, DEFAULT_QUEUE),
            evidence_every_s=float_env(SHADOW_EVIDENCE_S_ENV, DEFAULT_EVIDENCE_S),
            record_evidence=entry.get("record_evidence", True) is not False,
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for slot in self.slots.values():
            slot.start()
        if self.shadow is not None:
            self.shadow.slot.start()
            self.shadow.start()

    def stop(self) -> None:
        for slot in self.slots.values():
            slot.stop()
        if self.shadow is not None:
            self.shadow.slot.stop()
            self.shadow.stop()  # writes the shadow's summary to the registry once more

    # ------------------------------------------------------------------ which model answers

    def choices(self) -> str:
        return ", ".join(f"{name} ({slot.current.task})" for name, slot in self.slots.items())

    def choose(self, model: str | None, task: str) -> tuple[ModelSlot | None, Any]:
        """(the slot that answers, None), or (None, an error response) for an unknown or ambiguous model."""
        if model is not None:
            slot = self.slots.get(model)
            if slot is None:
                return None, error_response(
                    404,
                    f"model {model!r} is not served here; choose one of: {self.choices()}",
                    field="model",
                    choices=list(self.slots),
                )
            return slot, None
        if len(self.slots) == 1:
            return self.first, None
        if task == "embedding":
            fitting = [s for s in self.slots.values() if s.current.predictor.embedding_session is not None]
        else:
            fitting = [s for s in self.slots.values() if s.current.task == task]
        if len(fitting) == 1:
            return fitting[0], None
        if not fitting:
            return None, error_response(
                400,
                f"no {TASK_KINDS[task]} model is served here (served: {self.choices()}); call the endpoint of "
                "the model's task",
                field="model",
                choices=list(self.slots),
            )
        names = [s.current.name for s in fitting]
        return None, error_response(
            400,
            f'several {TASK_KINDS[task]} models are served here: send "model": one of {", ".join(names)}',
            field="model",
            choices=names,
        )

    def admin_slot(self, model: str | None) -> ModelSlot:
        """The slot an admin reload acts on; ReloadFailed (400/404) when ``model`` is unknown or needed."""
        if model is None:
            if len(self.slots) == 1:
                return self.first
            raise ReloadFailed(
                f'several models are served: send {{"model": NAME}} with one of {", ".join(self.slots)}', 400
            )
        if model not in self.slots:
            raise ReloadFailed(
                f"model {model!r} is not served here; choose one of: {', '.join(self.slots)}", 404
            )
        return self.slots[model]

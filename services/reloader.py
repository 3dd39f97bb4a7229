"""Serve one model version and swap to another with no downtime: load, verify, warm up and probe first.

    slot = ModelSlot(load_model(bundle_dir, "demo", "3"), alias="production", poll_s=10)
    slot.start()                        # background thread: follows the alias when it moves in the registry
    served = slot.current               # read once per batch; the model that answers it, whatever happens next
    slot.reload(version=4, reason="admin")   # the same path by hand; raises ReloadFailed with an HTTP status

A reload builds a complete new :class:`ServedModel` beside the one serving (registry checksums verified by
``Registry().load_path(verify=True)``, the bundle manifest verified again by the predictor, one warm-up
inference, then :meth:`OnnxPredictor.self_check` on probe texts) and only then replaces ``slot.current``: one
reference assignment, atomic under the GIL. Calls already running keep their reference to the old model and
finish on it; it is freed when the last one returns. When any step fails the old model keeps serving, the
error is logged and kept in :meth:`ModelSlot.status` (``last_reload_error``: ``/metadata`` shows what failed
and when; the raw error, which names files and hosts, only in the log and ``GET /admin/status``). Two
versions are in memory for the length of a swap.

A reload to a given version (``POST /admin/reload {"version": N}``) pins it: the alias poller stops following
the alias until a reload without a version (``POST /admin/reload`` with no body) unpins and goes back to the
alias's version. A pin lasts as long as the process: a restarted worker starts from the alias again.

Imports ONNX Runtime/tokenizers through services.predictor and, when a reload runs, models.registry.store
(standard library + SQLAlchemy); never torch or training code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from services.heap import freeze_long_lived_objects
from services.predictor import BundleError, OnnxPredictor

logger = logging.getLogger("dapt.service")

# A version whose reload failed is not retried by the poller for this long (a corrupt artifact stays corrupt;
# retrying every poll would only fill the log). An admin reload retries at once.
FAILED_VERSION_BACKOFF_S = 300.0


class ReloadFailed(RuntimeError):
    """A reload did not happen; ``status`` is the HTTP status the admin endpoint answers with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# What /metadata may say about a failed reload, by status (the full message is for the operator).
PUBLIC_REASONS = {
    404: "that version or alias is not in the registry",
    409: "another reload was running",
    422: "the candidate failed verification, warm-up or the probe",
    503: "the registry could not be reached",
}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ServedModel:
    """One loaded, verified and warmed-up model version and the name/version it answers as."""

    predictor: OnnxPredictor
    name: str
    version: str
    bundle_dir: Path
    loaded_at: str = field(default_factory=_now)

    @property
    def task(self) -> str:
        return self.predictor.spec.task


def load_model(bundle_dir: str | Path, name: str, version: str) -> ServedModel:
    """Load a bundle for serving: checksums (manifest), ONNX session, warm-up, probe. Raises BundleError."""
    started = time.perf_counter()
    predictor = OnnxPredictor(bundle_dir)
    predictor.warmup()
    predictor.self_check()
    logger.info("%s v%s ready in %.2f s (%s)", name, version, time.perf_counter() - started, bundle_dir)
    return ServedModel(predictor=predictor, name=name, version=str(version), bundle_dir=Path(bundle_dir))


class ModelSlot:
    """The served model, swapped atomically by :meth:`reload` (by hand or when the followed alias moves)."""

    def __init__(
        self,
        served: ServedModel,
        *,
        alias: str | None = None,
        poll_s: float = 10.0,
        registry: Any = None,
        loader: Callable[[Path, str, str], ServedModel] = load_model,
        on_reload: Callable[[str, str], None] | None = None,
    ) -> None:
        self._served = served
        self.alias = alias or None
        self.poll_s = poll_s
        self._registry_instance = registry
        self._loader = loader
        self._on_reload = on_reload  # (model name, "swapped" | "failed"), e.g. a metrics counter
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_reload: dict[str, Any] | None = None
        self.last_reload_error: dict[str, Any] | None = None
        self.last_poll_error: str | None = None
        self._failed: tuple[int, float] | None = None  # (version, monotonic time) of the last failed reload
        self.pinned_version: str | None = None  # set by a reload to a given version: the poller stands still

    @property
    def current(self) -> ServedModel:
        return self._served

    # ------------------------------------------------------------------ registry

    def _registry(self):
        if self._registry_instance is None:
            from models.registry.store import Registry

            self._registry_instance = Registry()
        return self._registry_instance

    # ------------------------------------------------------------------ reload

    def reload(self, version: int | None = None, *, reason: str) -> dict[str, Any]:
        """Serve ``version`` (default: the alias's version) after it passed every check; see the module doc.

        Returns what happened (``swapped`` False when that version already serves). Raises ReloadFailed:
        409 while another reload runs, 404 for an unknown version/alias, 422 when nothing says what to load
        or the candidate fails verification, warm-up or the probe (the old model keeps serving).
        """
        return self._locked(version, reason)

    def pin(self, version: int | None, *, reason: str) -> dict[str, Any]:
        """An operator's reload: to ``version`` and stay there (the poller stops following the alias), or with
        None back to the alias's version and following it again. Raises ReloadFailed like :meth:`reload`."""
        result = self._locked(version, reason, pin=True)
        return {**result, "pinned_version": self.pinned_version, "following_alias": self.following}

    def _locked(self, version: int | None, reason: str, pin: bool = False, poll: bool = False):
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadFailed("a reload is already running; try again when it has finished", 409)
        try:
            if poll and self.pinned_version is not None:  # pinned while this poll looked at the alias
                return None
            result = self._reload_locked(version, reason)
            if pin:  # under the lock, so no poll can slip in between the swap and the pin
                self.pinned_version = str(version) if version is not None else None
            return result
        finally:
            self._reload_lock.release()

    @property
    def following(self) -> bool:
        return self.alias is not None and self.poll_s > 0 and self.pinned_version is None

    def _reload_locked(self, version: int | None, reason: str) -> dict[str, Any]:
        from models.registry.store import RegistryError, VersionNotFound

        started = time.perf_counter()
        old = self._served
        if version is None and self.alias is None:
            raise ReloadFailed(
                'nothing to reload to: send {"version": N}, or serve with an alias (DAPT_MODEL_ALIAS) to follow',
                422,
            )
        registry = self._registry()
        wanted = f"v{version}" if version is not None else f"alias '{self.alias}'"
        try:
            target = registry.get_version(old.name, version=version, alias=None if version else self.alias)
        except VersionNotFound as exc:  # also AliasNotFound
            raise self._failure(
                wanted, reason, f"{old.name} {wanted} is not in the registry: {exc}", 404
            ) from exc
        except RegistryError as exc:
            raise self._failure(wanted, reason, f"cannot look up {old.name} {wanted}: {exc}", 404) from exc
        except Exception as exc:  # database unreachable, ...
            raise self._failure(wanted, reason, f"registry error: {exc}", 503) from exc

        new_version = str(target.version)
        if new_version == old.version:
            return {"swapped": False, "version": old.version, "message": f"v{old.version} is already serving"}
        try:
            path = registry.load_path(old.name, version=target.version, verify=True)
            candidate = self._loader(path, old.name, new_version)
            if candidate.task != old.task:
                raise BundleError(
                    f"v{new_version} is a {candidate.task} model and v{old.version} a {old.task} model; a task "
                    "change needs a new deployment (the endpoints differ)"
                )
        except Exception as exc:
            self._failed = (target.version, time.monotonic())
            raise self._failure(
                f"v{new_version}",
                reason,
                f"v{new_version} was not served (v{old.version} keeps serving): {exc}",
                422,
            ) from exc

        self._served = candidate  # the swap: requests that already hold `old` finish on it
        freeze_long_lived_objects()  # the new model too; `old` is still freed when its last request ends
        seconds = round(time.perf_counter() - started, 3)
        self.last_reload = {
            "from_version": old.version,
            "to_version": new_version,
            "reason": reason,
            "at": candidate.loaded_at,
            "seconds": seconds,
        }
        self.last_reload_error = None
        self._failed = None
        logger.info(
            "swapped %s v%s -> v%s in %.2f s (%s)", old.name, old.version, new_version, seconds, reason
        )
        if self._on_reload:
            self._on_reload(old.name, "swapped")
        return {"swapped": True, **self.last_reload}

    def _failure(self, wanted: str, reason: str, message: str, status: int) -> ReloadFailed:
        self.last_reload_error = {
            "version": wanted,
            "reason": reason,
            "error": message,
            "status": status,
            "at": _now(),
        }
        logger.error("reload of %s %s failed: %s", self._served.name, wanted, message)
        if self._on_reload:
            self._on_reload(self._served.name, "failed")
        return ReloadFailed(message, status)

    # ------------------------------------------------------------------ following the alias

    def start(self) -> None:
        """Start following the alias (no-op without an alias or with poll_s <= 0)."""
        if self.alias is None or self.poll_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._follow_alias, name="dapt-model-reload", daemon=True)
        self._thread.start()
        logger.info("following alias '%s' of %s every %.1f s", self.alias, self._served.name, self.poll_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def _follow_alias(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll_once()
            except Exception:  # the thread must survive anything; the failure is logged and in status()
                logger.exception("alias poll failed")

    def poll_once(self) -> dict[str, Any] | None:
        """One look at the alias; reload when it points at another version. Returns the reload's result."""
        assert self.alias is not None
        if self.pinned_version is not None:  # an operator chose the version: leave it until unpinned
            return None
        try:
            target = self._registry().get_version(self._served.name, alias=self.alias).version
        except Exception as exc:
            message = f"cannot read alias '{self.alias}' of {self._served.name}: {exc}"
            if message != self.last_poll_error:  # log a lasting problem once, not every poll
                logger.warning(message)
            self.last_poll_error = message
            return None
        self.last_poll_error = None
        if str(target) == self._served.version:
            return None
        if (
            self._failed
            and self._failed[0] == target
            and time.monotonic() - self._failed[1] < FAILED_VERSION_BACKOFF_S
        ):
            return None
        try:
            return self._locked(target, f"alias '{self.alias}' moved to v{target}", poll=True)
        except ReloadFailed:
            return None  # logged and kept in last_reload_error

    def status(self, operator: bool = False) -> dict[str, Any]:
        """The reload state; without ``operator`` the raw error texts (file paths, database hosts) are
        replaced by what kind of failure it was (the log has the full text)."""
        error = self.last_reload_error
        if error is not None and not operator:
            public = PUBLIC_REASONS.get(error["status"], "the reload failed")
            error = {
                **{k: error[k] for k in ("version", "reason", "at")},
                "error": f"{public}; v{self._served.version} keeps serving (details in the server log)",
            }
        poll_error = self.last_poll_error
        if poll_error is not None and not operator:
            poll_error = f"cannot read alias '{self.alias}' from the registry (details in the server log)"
        return {
            "alias": self.alias,
            "reload_poll_s": self.poll_s if self.alias else None,
            "following_alias": self.following,
            "pinned_version": self.pinned_version,
            "loaded_at": self._served.loaded_at,
            "reloading": self._reload_lock.locked(),
            "last_reload": self.last_reload,
            "last_reload_error": error,
            "last_poll_error": poll_error,
        }

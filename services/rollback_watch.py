"""Automatic rollback: watch a live service after its alias moves and move the alias back on a regression.

    dapt watch finsent --alias production --url http://127.0.0.1:3000 --window-s 120

A separate process beside the service (``dapt serve`` follows the alias; this moves the alias). Every
``interval_s`` it reads the service's ``/readyz``, ``/metadata`` (which version answers, the last reload error)
and ``/metrics`` (BentoML's ``bentoml_service_request_total`` and ``..._request_duration_seconds`` of the
prediction routes), and the alias in the registry. Request counts, server errors (5xx) and latency between two
readings are credited to the version that answered at both readings (an interval spanning a swap is dropped),
so the watcher keeps a baseline of the serving version's last ``window_s`` seconds of traffic.

When the alias moves (``dapt models promote``, the retrain flow, a manual set) the new version is the candidate:

1. the service must serve it within ``swap_timeout_s``; a reload error for that version (the service refused
   it: checksums, warm-up or probe failed) or the timeout is a regression;
2. then, for ``window_s`` seconds, ``/readyz`` must not fail ``max_unready_probes`` times in a row;
3. at the end of the window, with at least ``min_requests`` prediction requests on it: its server-error rate
   may exceed the previous version's by at most ``max_error_rate_increase``, and its mean latency may be at
   most ``max_latency_ratio`` times the previous version's (and at most ``min_latency_increase_ms`` above it,
   whichever is larger). Without a baseline (the previous version had fewer than ``min_requests`` requests
   while watched) the error rate is compared with 0 and latency is not judged; with too little traffic on the
   candidate only readiness is judged. The verdict says which.

On a regression the alias goes back to the version it left, through the registry (``kind='auto-rollback'``,
the reason names what regressed and both numbers; ``dapt models history`` shows it), only if the alias still
points at the candidate (a concurrent move wins). The service's reloader then follows the alias back (it never
stopped serving the old version when the candidate failed to load). The watcher never judges its own rollback.

Standard library + httpx + prometheus_client's parser; the registry through models.registry.store. No torch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("dapt.watch")

PREDICTION_ROUTES = ("/classify", "/entities", "/embed")
REQUESTS_METRIC = "bentoml_service_request"  # the counter family (samples named ..._total)
DURATION_METRIC = "bentoml_service_request_duration_seconds"
AUTO_ROLLBACK = "auto-rollback"


class WatchError(RuntimeError):
    """The watcher cannot start: the message says what is wrong (service, registry, settings) and the fix."""


@dataclass(frozen=True)
class WatchSettings:
    window_s: float = 120.0
    interval_s: float = 2.0
    swap_timeout_s: float = 90.0
    min_requests: int = 20
    max_error_rate_increase: float = 0.05
    max_latency_ratio: float = 2.0
    min_latency_increase_ms: float = 50.0
    max_unready_probes: int = 3

    def check(self) -> WatchSettings:
        problems = []
        for name in ("window_s", "interval_s", "swap_timeout_s"):
            if not getattr(self, name) > 0:
                problems.append(f"--{name.replace('_', '-')} must be a positive number of seconds")
        if self.interval_s > self.window_s:
            problems.append("--interval-s must not be longer than --window-s")
        if self.min_requests < 1 or self.max_unready_probes < 1:
            problems.append("--min-requests and --max-unready-probes must be at least 1")
        if not 0 <= self.max_error_rate_increase <= 1:
            problems.append("--max-error-rate-increase is a share of requests between 0 and 1")
        if not self.max_latency_ratio >= 1 or self.min_latency_increase_ms < 0:
            problems.append("--max-latency-ratio must be at least 1 and --min-latency-increase-ms at least 0")
        if problems:
            raise WatchError("; ".join(problems))
        return self


@dataclass
class Traffic:
    """Prediction requests, server errors and summed latency (cumulative counters, or a difference of two)."""

    requests: float = 0.0
    errors: float = 0.0
    latency_s: float = 0.0
    timed: float = 0.0  # requests with a latency observation

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(
            self.requests - other.requests,
            self.errors - other.errors,
            self.latency_s - other.latency_s,
            self.timed - other.timed,
        )

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(
            self.requests + other.requests,
            self.errors + other.errors,
            self.latency_s + other.latency_s,
            self.timed + other.timed,
        )

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def mean_ms(self) -> float | None:
        return 1000 * self.latency_s / self.timed if self.timed else None

    def describe(self) -> str:
        mean = "-" if self.mean_ms is None else f"{self.mean_ms:.0f} ms"
        return f"{self.requests:.0f} requests, {self.errors:.0f} server errors, mean latency {mean}"


def parse_traffic(metrics_text: str) -> Traffic:
    """Cumulative prediction-route traffic from a Prometheus exposition (BentoML's request metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    traffic = Traffic()
    for family in text_string_to_metric_families(metrics_text):
        if family.name not in (REQUESTS_METRIC, DURATION_METRIC):
            continue
        for sample in family.samples:
            if sample.labels.get("endpoint") not in PREDICTION_ROUTES:
                continue
            if sample.name == REQUESTS_METRIC + "_total":
                traffic.requests += sample.value
                if str(sample.labels.get("http_response_code", "")).startswith("5"):
                    traffic.errors += sample.value
            elif sample.name == DURATION_METRIC + "_sum":
                traffic.latency_s += sample.value
            elif sample.name == DURATION_METRIC + "_count":
                traffic.timed += sample.value
    return traffic


@dataclass(frozen=True)
class Reading:
    """One look at the service: when, ready or not, which version answered, its last reload error, traffic."""

    at: float
    ready: bool
    version: str | None  # None: unknown (unreachable, or a swap happened while reading)
    reload_error: dict[str, Any] | None
    traffic: Traffic | None
    problem: str | None = None


def served_version(metadata: dict[str, Any], name: str) -> str | None:
    """The version of ``name`` that answers, from /metadata (one model; or a ``models`` list of several)."""
    models = metadata.get("models")
    if isinstance(models, list):
        for entry in models:
            if isinstance(entry, dict) and entry.get("name") == name and entry.get("version") is not None:
                return str(entry["version"])
    if metadata.get("name") == name and metadata.get("version") is not None:
        return str(metadata["version"])
    return None


def _reload_error(metadata: dict[str, Any], name: str) -> dict[str, Any] | None:
    models = metadata.get("models")
    if isinstance(models, list):
        for entry in models:
            if isinstance(entry, dict) and entry.get("name") == name:
                return entry.get("last_reload_error")
    return metadata.get("last_reload_error")


class ServiceProbe:
    """Reads /readyz, /metadata and /metrics of one service over HTTP."""

    def __init__(self, url: str, name: str, timeout_s: float = 5.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.name = name
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def metadata(self) -> dict[str, Any]:
        response = self._client.get("/metadata")
        response.raise_for_status()
        return response.json()

    def read(self) -> Reading:
        import httpx

        now = time.monotonic()
        try:
            ready = self._client.get("/readyz").status_code == 200
        except httpx.HTTPError as error:
            return Reading(now, False, None, None, None, f"/readyz: {type(error).__name__}")
        try:
            before = self.metadata()
            traffic = parse_traffic(self._client.get("/metrics").text)
            after = self.metadata()
        except (httpx.HTTPError, ValueError) as error:
            return Reading(now, ready, None, None, None, f"/metadata or /metrics: {error}")
        version = served_version(before, self.name)
        if served_version(after, self.name) != version:
            version = None  # swapped while reading: these counters belong to neither version alone
        return Reading(now, ready, version, _reload_error(after, self.name), traffic)


@dataclass
class Candidate:
    version: int
    previous: int | None
    moved_at: float
    baseline: Traffic
    swapped_at: float | None = None
    traffic: Traffic = field(default_factory=Traffic)
    unready_in_a_row: int = 0


@dataclass(frozen=True)
class Verdict:
    """What the watcher decided about one alias move."""

    version: int
    previous: int | None
    rolled_back: bool
    reason: str
    candidate: Traffic
    baseline: Traffic

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "previous": self.previous,
            "rolled_back": self.rolled_back,
            "reason": self.reason,
            "candidate": self.candidate.__dict__,
            "baseline": self.baseline.__dict__,
        }


def judge(candidate: Traffic, baseline: Traffic, previous: int | None, settings: WatchSettings) -> str | None:
    """The regression of a candidate's window against its baseline, in words, or None when it held up."""
    if candidate.requests < settings.min_requests:
        return None
    with_baseline = baseline.requests >= settings.min_requests
    reference = baseline.error_rate if with_baseline else 0.0
    if candidate.error_rate > reference + settings.max_error_rate_increase:
        against = f"{reference:.1%} on v{previous}" if with_baseline else "no baseline, compared with 0"
        return (
            f"error-rate regression: {candidate.error_rate:.1%} server errors over {candidate.requests:.0f} "
            f"requests vs {against} (allowed +{settings.max_error_rate_increase:.1%})"
        )
    new_ms, old_ms = candidate.mean_ms, baseline.mean_ms
    if with_baseline and new_ms is not None and old_ms is not None:
        limit = max(old_ms * settings.max_latency_ratio, old_ms + settings.min_latency_increase_ms)
        if new_ms > limit:
            return (
                f"latency regression: mean {new_ms:.0f} ms over {candidate.requests:.0f} requests vs "
                f"{old_ms:.0f} ms on v{previous} (limit {limit:.0f} ms: {settings.max_latency_ratio:g}x, "
                f"at least +{settings.min_latency_increase_ms:g} ms)"
            )
    return None


class RollbackWatcher:
    """The watch loop (see the module doc). ``say`` receives one line per event (the CLI prints them)."""

    def __init__(
        self,
        registry: Any,
        name: str,
        alias: str,
        probe: ServiceProbe,
        settings: WatchSettings | None = None,
        *,
        actor: str | None = None,
        say: Callable[[str], None] = log.info,
    ) -> None:
        self.registry = registry
        self.name = name
        self.alias = alias
        self.probe = probe
        self.settings = (settings or WatchSettings()).check()
        self.actor = actor or "dapt-watch"
        self.say = say
        self.stop_event = threading.Event()
        self.holder: int | None = None
        self.candidate: Candidate | None = None
        self.verdicts: list[Verdict] = []
        self._last: Reading | None = None
        self._intervals: deque[tuple[float, str, Traffic]] = deque()  # (end time, version, traffic)

    # ------------------------------------------------------------------ reading

    def _alias_now(self) -> int | None:
        return self.registry.aliases(self.name).get(self.alias)

    def _credit(self, reading: Reading) -> Traffic | None:
        """Traffic since the previous reading, when one version answered at both and no counter was reset."""
        last, self._last = self._last, reading
        if last is None or last.traffic is None or reading.traffic is None:
            return None
        if last.version is None or reading.version != last.version:
            return None
        delta = reading.traffic - last.traffic
        if min(delta.requests, delta.errors, delta.latency_s, delta.timed) < 0:
            return None  # the service restarted: counters began again
        self._intervals.append((reading.at, reading.version, delta))
        while self._intervals and self._intervals[0][0] < reading.at - self.settings.window_s:
            self._intervals.popleft()
        return delta

    def _baseline(self, version: int | None) -> Traffic:
        total = Traffic()
        for _, served, delta in self._intervals:
            if version is not None and served == str(version):
                total = total + delta
        return total

    # ------------------------------------------------------------------ the loop

    def start(self) -> None:
        """Check the service and the alias before watching; WatchError saying what is wrong."""
        try:
            metadata = self.probe.metadata()
        except Exception as error:
            raise WatchError(
                f"no dapt service answers at {self.probe.url}/metadata ({error}); start it with "
                f"`dapt serve --name {self.name} --alias {self.alias}` or fix --url"
            ) from None
        if served_version(metadata, self.name) is None:
            raise WatchError(
                f"the service at {self.probe.url} does not serve '{self.name}' (its /metadata names "
                f"{metadata.get('name')!r}); point --url at the service of {self.name}"
            )
        self.holder = self._alias_now()
        if self.holder is None:
            self.registry.get_version(self.name)  # ModelNotFound names the model
            raise WatchError(
                f"no version of '{self.name}' holds alias '{self.alias}'; promote one first "
                f"(`dapt models promote {self.name} <version> --alias {self.alias}`)"
            )
        self.say(
            f"watching {self.name} '{self.alias}' (v{self.holder}) on {self.probe.url}: window "
            f"{self.settings.window_s:g} s, every {self.settings.interval_s:g} s"
        )

    def run(self, once: bool = False) -> list[Verdict]:
        """Watch until stopped (or, with ``once``, until the first verdict). Returns the verdicts."""
        if self.holder is None:
            self.start()
        while not self.stop_event.is_set():
            try:
                verdict = self.tick()
            except Exception as error:  # noqa: BLE001 - a daemon: a registry or network hiccup must not end it
                self.say(f"this reading failed and is skipped: {type(error).__name__}: {error}")
                verdict = None
            if verdict is not None and once:
                if verdict.rolled_back:
                    self._await_service(verdict.previous)
                break
            self.stop_event.wait(self.settings.interval_s)
        return self.verdicts

    def tick(self) -> Verdict | None:
        """One reading of the service and the alias; returns a verdict when one was reached."""
        reading = self.probe.read()
        delta = self._credit(reading)
        try:
            alias_now = self._alias_now()
        except Exception as error:  # the registry is unreachable: keep watching, decide nothing
            self.say(f"cannot read alias '{self.alias}' of {self.name}: {error}")
            return None
        candidate = self.candidate
        if candidate is None:
            if alias_now is not None and alias_now != self.holder:
                self._begin(alias_now, reading)
            return None
        if alias_now != candidate.version:
            self.say(
                f"alias '{self.alias}' moved to v{alias_now} while v{candidate.version} was being watched; "
                "judging the new move instead"
            )
            self.candidate, self.holder = None, candidate.version
            if alias_now is not None:
                self._begin(alias_now, reading)
            return None
        return self._evaluate(candidate, reading, delta)

    def _begin(self, version: int, reading: Reading) -> None:
        moves = [m for m in self.registry.audit_log(self.name, self.alias) if m.moved]
        last = moves[-1] if moves else None
        if last is not None and last.to_version == version and last.kind == AUTO_ROLLBACK:
            self.holder = version  # a rollback (ours or another watcher's) is not judged again
            return
        previous = self.holder
        if last is not None and last.to_version == version and last.from_version is not None:
            previous = last.from_version
        baseline = self._baseline(previous)
        self.candidate = Candidate(version, previous, reading.at, baseline)
        self.say(
            f"alias '{self.alias}' moved v{previous} -> v{version}; watching v{version} against "
            f"v{previous} ({baseline.describe()} in the last {self.settings.window_s:g} s)"
        )

    def _evaluate(self, candidate: Candidate, reading: Reading, delta: Traffic | None) -> Verdict | None:
        settings = self.settings
        wanted = str(candidate.version)
        if candidate.swapped_at is None:
            error = reading.reload_error
            if error and str(error.get("version")) == f"v{wanted}":
                return self._rollback(
                    candidate,
                    f"the service could not load v{wanted}: {error.get('error')} (reload at {error.get('at')})",
                )
            if reading.version == wanted:
                candidate.swapped_at = reading.at
                self.say(f"the service answers with v{wanted}; watching it for {settings.window_s:g} s")
            elif reading.at - candidate.moved_at > settings.swap_timeout_s:
                return self._rollback(
                    candidate,
                    f"the service did not serve v{wanted} within {settings.swap_timeout_s:g} s of the alias move "
                    f"(it answers with v{reading.version or '?'})",
                )
            return None
        candidate.unready_in_a_row = 0 if reading.ready else candidate.unready_in_a_row + 1
        if candidate.unready_in_a_row >= settings.max_unready_probes:
            return self._rollback(
                candidate,
                f"readiness regression: /readyz failed {candidate.unready_in_a_row} times in a row "
                f"({reading.problem or 'not ready'})",
            )
        if delta is not None and reading.version == wanted:
            candidate.traffic = candidate.traffic + delta
        if reading.at - candidate.swapped_at < settings.window_s:
            return None
        regression = judge(candidate.traffic, candidate.baseline, candidate.previous, settings)
        if regression is not None:
            return self._rollback(candidate, regression)
        if candidate.traffic.requests < settings.min_requests:
            note = (
                f"only {candidate.traffic.requests:.0f} prediction requests (fewer than {settings.min_requests}): "
                "readiness held; errors and latency not judged"
            )
        elif candidate.baseline.requests < settings.min_requests:
            note = (
                f"{candidate.traffic.describe()}; no baseline for v{candidate.previous}: latency not judged"
            )
        else:
            note = f"{candidate.traffic.describe()} vs v{candidate.previous}: {candidate.baseline.describe()}"
        return self._accept(candidate, note)

    def _accept(self, candidate: Candidate, note: str) -> Verdict:
        verdict = Verdict(
            candidate.version, candidate.previous, False, note, candidate.traffic, candidate.baseline
        )
        self.say(f"v{candidate.version} kept on '{self.alias}': {note}")
        self.holder, self.candidate = candidate.version, None
        self.verdicts.append(verdict)
        return verdict

    def _rollback(self, candidate: Candidate, regression: str) -> Verdict:
        from models.registry.store import RegistryError

        self.candidate = None
        reason = f"automatic rollback of v{candidate.version}: {regression}"
        if candidate.previous is None:
            self.say(
                f"v{candidate.version} regressed but '{self.alias}' had no earlier version: {regression}"
            )
            self.holder = candidate.version
        else:
            try:
                self.registry.set_alias(
                    self.name,
                    self.alias,
                    candidate.previous,
                    reason,
                    self.actor,
                    kind=AUTO_ROLLBACK,
                    expected_from=candidate.version,
                )
            except RegistryError as error:  # moved meanwhile, or the old version was archived
                self.say(f"could not roll '{self.alias}' back to v{candidate.previous}: {error}")
                self.holder = self._alias_now()
            else:
                self.holder = candidate.previous
                self.say(
                    f"rolled '{self.alias}' back v{candidate.version} -> v{candidate.previous}: {regression}"
                )
        verdict = Verdict(
            candidate.version, candidate.previous, True, reason, candidate.traffic, candidate.baseline
        )
        self.verdicts.append(verdict)
        return verdict

    def _await_service(self, version: int | None) -> None:
        """Wait (up to swap_timeout_s) until the service answers with ``version`` again, and say so."""
        if version is None:
            return
        deadline = time.monotonic() + self.settings.swap_timeout_s
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            reading = self.probe.read()
            if reading.version == str(version):
                self.say(f"the service answers with v{version} again")
                return
            self.stop_event.wait(self.settings.interval_s)
        self.say(f"the service did not answer with v{version} within {self.settings.swap_timeout_s:g} s")

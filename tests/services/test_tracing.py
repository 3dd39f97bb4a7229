"""DAPT_TRACING: the prediction endpoints stay out of OpenTelemetry unless asked (BentoML samples no traces by
default, yet built a span per request)."""

from __future__ import annotations

import pytest


def test_prediction_endpoints_are_left_out_of_tracing_unless_it_is_switched_on(monkeypatch):
    from opentelemetry.util.http import ExcludeList

    from services.service import tracing_config

    monkeypatch.delenv("DAPT_TRACING", raising=False)
    excluded = ExcludeList(
        tracing_config()["excluded_urls"]
    )  # as BentoML builds it from tracing.excluded_urls
    for path in ("/classify", "/entities", "/embed"):
        assert excluded.url_disabled(f"http://127.0.0.1:3000{path}")
    for path in ("/metadata", "/admin/reload", "/readyz"):
        assert not excluded.url_disabled(f"http://127.0.0.1:3000{path}")
    monkeypatch.setenv("DAPT_TRACING", "on")
    assert tracing_config() == {}
    monkeypatch.setenv("DAPT_TRACING", "yes please")
    with pytest.raises(RuntimeError, match=r"DAPT_TRACING must be one of off, on; got 'yes please'"):
        tracing_config()


def test_the_service_declares_the_tracing_settings():
    from services.service import DaptService

    assert set(DaptService.config["tracing"]["excluded_urls"]) == {"/classify", "/entities", "/embed"}

"""Tracing's settings keep OpenTelemetry's environment variable names, and tracing off loads nothing of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent_service.config import Settings
from agent_service.tracing import NO_TRACING, tracing_for

ROOT = Path(__file__).resolve().parents[2]


def test_tracing_is_off_without_an_otlp_endpoint():
    settings = Settings(_env_file=None)
    assert not settings.tracing_enabled
    assert tracing_for(settings) is NO_TRACING


def test_the_standard_otel_variables_turn_tracing_on_and_say_where_spans_go(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "agents-eu")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    settings = Settings(_env_file=None)
    assert settings.tracing_enabled
    assert settings.otlp_traces_url == "http://collector:4318/v1/traces"
    assert (settings.otel_service_name, settings.otel_traces_sampler_arg) == ("agents-eu", 0.25)
    # The signal's own endpoint is taken as it is; OTEL_SDK_DISABLED switches everything off
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces.example/otlp/spans")
    assert Settings(_env_file=None).otlp_traces_url == "https://traces.example/otlp/spans"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not Settings(_env_file=None).tracing_enabled


def test_a_worker_and_its_llm_process_with_tracing_off_load_no_tracing_sdk():
    # Every module of both processes imported, and the tracing of a batch asked for as a worker does. (Some of
    # OpenTelemetry's SDK is loaded all the same when it is installed: redis-py and langsmith import parts of it
    # for features of their own that are off; docs/decisions.md, "Traces across the queue".)
    probe = (
        "import sys, agent_service.worker, agent_service.tasks, agent_service.llm.process; "
        "tracing = agent_service.worker.app.services.tracing; "
        "tracing.deliveries([('id', None)], queue='agent_tasks').of('id').traceparent; "
        "wanted = ('opentelemetry.exporter', 'opentelemetry.instrumentation', 'agent_service.tracing.sdk'); "
        "print(sorted(name for name in sys.modules if name.startswith(wanted)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True
    )
    assert loaded.stdout.strip() == "[]", loaded.stderr

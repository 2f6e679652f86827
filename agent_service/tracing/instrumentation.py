"""Celery's OpenTelemetry instrumentation in the process that runs tasks: a span for each task run, which for
agent tasks is a batch (`Tracing.deliveries` links it to each delivery's trace), for the system tasks one run.

Only its run side. The agent-task messages are sent under spans of our own, each in its task's trace
(`TaskTrace.publishing`), and upstream's publish side starts a span it never ends for a task the sending process
has not registered (a group's callback, sent by name), leaving that span current on the thread: every later
span of the thread would hang under it. See docs/decisions.md, "Traces across the queue".
"""

from __future__ import annotations

from typing import Any

from opentelemetry.instrumentation.celery import CeleryInstrumentor

from agent_service.tracing import Tracing
from agent_service.tracing.sdk import SdkTracing


class TaskRunInstrumentor(CeleryInstrumentor):
    """CeleryInstrumentor without its publish side."""

    def _trace_before_publish(self, *args: Any, **kwargs: Any) -> None:
        """Untraced here: see the module's docstring."""

    @staticmethod
    def _trace_after_publish(*args: Any, **kwargs: Any) -> None:
        """Untraced here: see the module's docstring."""


def instrument_celery(tracing: Tracing) -> None:
    """Trace this process's task runs with `tracing`'s provider (once per process; nothing with tracing off)."""
    instrumentor = TaskRunInstrumentor()
    if isinstance(tracing, SdkTracing) and not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=tracing.provider)

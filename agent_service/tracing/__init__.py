"""Traces of tasks across the queue and the processes (OpenTelemetry): one trace per task, from the caller's
`create_agent_task` through the worker's claim, admission, model and tool calls to the settle.

    create_agent_task                    the caller (a child of the caller's own span, if it has one)
      send agent_tasks                   its message published; the message carries W3C `traceparent`
        process agent_tasks              a worker's delivery of it (linked to and from the batch's span)
          claim, admission, settle       in the worker, each timed as the batch's statement or decision
          chat <model>                   in the LLM process (the request carries `traceparent`)
          execute_tool <name>            a tool call of a durable run
          send agent_tasks               its retry, published again: the next delivery hangs under it

A batch serves many tasks, so its span (Celery's instrumentation's `run/worker.process_agent_task`) is the
root of a trace of its own, linked to each of its deliveries.

Off (the default: no OTLP endpoint), `NO_TRACING` answers every call with objects that do nothing, and nothing
imports OpenTelemetry; on, `tracing.sdk` records spans with the SDK and exports them over OTLP/HTTP.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_service.config import Settings

TRACEPARENT = "traceparent"  # the W3C header that carries a span's context to another process
# An attribute's value, as OpenTelemetry takes it.
Value = str | bool | int | float | Sequence[str]
Attributes = Mapping[str, Value]


class Span:
    """A span under way, to add attributes to (this base: tracing off, nothing kept)."""

    def set(self, attributes: Attributes) -> None:
        """Add these attributes."""


class TaskTrace:
    """One task's trace in this process (this base: tracing off, nothing recorded)."""

    traceparent: str | None = None  # the W3C traceparent another process hangs the task's spans under

    def publishing(self, *, queue: str, message_id: str) -> AbstractContextManager[dict[str, str]]:
        """A span for sending the task's message; yields the headers the message carries (W3C traceparent)."""
        return nullcontext({})

    def add_cost(self, cost_usd: float | None) -> None:
        """Count a model call's cost (None: unpriced) in the delivery's `agent_service.task.cost_usd`."""

    def tool_call(self, *, tool: str, call_id: str, future: Future[Any]) -> None:
        """A span for a tool call, ended with its future (whose result has the `status` and `error` of
        `tools.http.ToolOutcome`)."""

    def end(self, attributes: Attributes, *, error: str | None = None) -> None:
        """End the task's span here with these attributes (an error: its status is an error)."""


NO_TRACE = TaskTrace()


class TaskTraces:
    """The traces of the tasks a caller submits or a batch runs, by task id (this base: tracing off)."""

    enabled = False

    def open(self, task_ids: Sequence[uuid.UUID]) -> None:
        """Start a trace for each of these tasks, just submitted (its span began when the submission did)."""

    def of(self, task_id: uuid.UUID | str) -> TaskTrace:
        """The task's trace (NO_TRACE for a task not traced here)."""
        return NO_TRACE

    def at(self, position: int) -> TaskTrace:
        """The trace of a batch's delivery, by its position in the batch."""
        return NO_TRACE

    def spans(
        self, name: str, task_ids: Iterable[uuid.UUID], *, start_ns: int, attributes: Sequence[Attributes] = ()
    ) -> None:
        """A span `name` in each task's trace, from `start_ns` (time.time_ns()) to now: one statement or decision
        made for many tasks at once. `attributes`, when given, are each task's own, in order."""


NO_TRACES = TaskTraces()


class Tracing:
    """This process's tracing (this base: off; `tracing_for` gives the SDK's when the settings turn it on)."""

    enabled = False

    def submission(self, name: str) -> AbstractContextManager[TaskTraces]:
        """The traces of tasks submitted within the with-block, each span `name` starting now; ended (with the
        error, if the block raises) at its end."""
        return nullcontext(NO_TRACES)

    def deliveries(self, messages: Sequence[tuple[str, str | None]], *, queue: str) -> TaskTraces:
        """A batch's deliveries from `queue`, each (task id, its message's traceparent), each with a span under
        the span that published it, linked to and from the batch's span (the current one)."""
        return NO_TRACES

    def span(
        self, name: str, *, traceparent: str | None, attributes: Attributes, client: bool = False
    ) -> AbstractContextManager[Span]:
        """A span under `traceparent` (from another process) for the with-block; an exception leaving the block
        is recorded on it. `client`: a call to a remote service."""
        return nullcontext(NO_SPAN)

    def shutdown(self) -> None:
        """Export the spans not exported yet, then stop (a process about to exit without `atexit` hooks)."""


NO_SPAN = Span()
NO_TRACING = Tracing()


def tracing_for(settings: Settings) -> Tracing:
    """The tracing `settings` ask for: the SDK's, exporting to the OTLP endpoint, or NO_TRACING. Build it in the
    process that records (after any fork): its exporter runs on a thread."""
    if not settings.tracing_enabled:
        return NO_TRACING
    from agent_service.tracing.sdk import SdkTracing  # only here: tracing off never loads OpenTelemetry

    return SdkTracing(settings)

"""Tracing on: spans recorded with the OpenTelemetry SDK, exported in batches over OTLP/HTTP (`TracingSettings`),
and carried between processes as W3C `traceparent` values. Loaded only when tracing is on (`tracing_for`)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.re import parse_env_headers

from agent_service.config import Settings
from agent_service.tracing import NO_TRACE, TRACEPARENT, Attributes, Span, TaskTrace, TaskTraces, Tracing

_W3C = TraceContextTextMapPropagator()
# Messaging attributes (OpenTelemetry's semantic conventions) of the spans that send and process a message.
_DESTINATION, _MESSAGE_ID, _OPERATION = "messaging.destination.name", "messaging.message.id", "messaging.operation.type"
TASK_ID = "agent_service.task.id"


class CallOutcome(Protocol):
    """What a tool call's future ends with, as far as its span is concerned (`tools.http.ToolOutcome`)."""

    status: int | None
    error: str | None


class SdkTracing(Tracing):
    """This process's tracer provider, its exporter thread, and the spans of its tasks."""

    enabled = True

    def __init__(self, settings: Settings) -> None:
        resource = Resource.create({SERVICE_NAME: settings.otel_service_name, "process.pid": os.getpid()})
        self.provider = TracerProvider(resource=resource, sampler=_sampler(settings))
        headers = settings.otel_exporter_otlp_headers
        exporter = OTLPSpanExporter(
            endpoint=settings.otlp_traces_url,
            headers=parse_env_headers(headers.get_secret_value(), liberal=True) if headers else None,
        )
        processor = BatchSpanProcessor(exporter, schedule_delay_millis=settings.otel_bsp_schedule_delay)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("agent_service")

    @contextmanager
    def submission(self, name: str) -> Iterator[TaskTraces]:
        traces = _SubmittedTraces(self.tracer, name, start_ns=time.time_ns())
        try:
            yield traces
        except BaseException as exc:
            traces.end_all(error=exc)
            raise
        traces.end_all()

    def deliveries(self, messages: Sequence[tuple[str, str | None]], *, queue: str) -> TaskTraces:
        batch = trace.get_current_span()  # the batch's span, by Celery's instrumentation (tracing.celery)
        batch.set_attribute("agent_service.batch.size", len(messages))
        batch_link = [Link(batch.get_span_context())] if batch.get_span_context().is_valid else []
        traces: list[TaskTrace] = []
        for task_id, traceparent in messages:
            span = self.tracer.start_span(
                f"process {queue}",
                context=_parent(traceparent),
                kind=SpanKind.CONSUMER,
                attributes={_DESTINATION: queue, _MESSAGE_ID: task_id, _OPERATION: "process", TASK_ID: task_id},
                links=batch_link,
            )
            batch.add_link(span.get_span_context())
            traces.append(_Delivery(self.tracer, span))
        return _BatchTraces([task_id for task_id, _ in messages], traces)

    @contextmanager
    def span(
        self, name: str, *, traceparent: str | None, attributes: Attributes, client: bool = False
    ) -> Iterator[Span]:
        kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
        span = self.tracer.start_span(name, context=_parent(traceparent), kind=kind, attributes=attributes)
        try:
            yield _Recording(span)
        except BaseException as exc:
            _failed(span, exc)
            raise
        finally:
            span.end()

    def shutdown(self) -> None:
        self.provider.shutdown()


class _Recording(Span):
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set(self, attributes: Attributes) -> None:
        self._span.set_attributes(attributes)


class _Trace(TaskTrace):
    """A task's trace, under one of its spans in this process."""

    def __init__(self, tracer: trace.Tracer, span: trace.Span) -> None:
        self._tracer, self.span = tracer, span
        self.context = trace.set_span_in_context(span)
        carrier: dict[str, str] = {}
        _W3C.inject(carrier, context=self.context)
        self.traceparent = carrier.get(TRACEPARENT)

    @contextmanager
    def publishing(self, *, queue: str, message_id: str) -> Iterator[dict[str, str]]:
        attributes = {_DESTINATION: queue, _MESSAGE_ID: message_id, _OPERATION: "send", TASK_ID: message_id}
        span = self._tracer.start_span(
            f"send {queue}", context=self.context, kind=SpanKind.PRODUCER, attributes=attributes
        )
        headers: dict[str, str] = {}
        _W3C.inject(headers, context=trace.set_span_in_context(span))
        try:
            yield headers
        except BaseException as exc:
            _failed(span, exc)
            raise
        finally:
            span.end()

    def tool_call(self, *, tool: str, call_id: str, future: Future[Any]) -> None:
        attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool, "gen_ai.tool.call.id": call_id}
        span = self._tracer.start_span(f"execute_tool {tool}", context=self.context, attributes=attributes)
        future.add_done_callback(lambda done: _end_tool_call(span, done))

    def child(self, name: str, *, start_ns: int, attributes: Attributes | None) -> None:
        """A finished span under this one, from `start_ns` to now."""
        self._tracer.start_span(name, context=self.context, start_time=start_ns, attributes=attributes).end()


class _Delivery(_Trace):
    """A worker's delivery of a task: its span ends when its outcome is known, with the cost of its calls."""

    def __init__(self, tracer: trace.Tracer, span: trace.Span) -> None:
        super().__init__(tracer, span)
        self._lock = threading.Lock()  # model calls of one task end on one thread, but the cost is read on another
        self._cost: float | None = 0.0

    def add_cost(self, cost_usd: float | None) -> None:
        with self._lock:
            # An unpriced call leaves the attempt's cost unknown, as the task row's cost is.
            self._cost = None if cost_usd is None or self._cost is None else self._cost + cost_usd

    def end(self, attributes: Attributes, *, error: str | None = None) -> None:
        if self._cost is not None:
            self.span.set_attribute("agent_service.task.cost_usd", self._cost)
        self.span.set_attributes(attributes)
        if error is not None:
            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end()


class _SubmittedTraces(TaskTraces):
    """The traces of the tasks of one submission, each a span begun with the submission."""

    enabled = True

    def __init__(self, tracer: trace.Tracer, name: str, *, start_ns: int) -> None:
        self._tracer, self._name, self._start_ns = tracer, name, start_ns
        self._traces: dict[str, _Trace] = {}

    def open(self, task_ids: Sequence[uuid.UUID]) -> None:
        for task_id in task_ids:
            attributes = {TASK_ID: str(task_id)}
            span = self._tracer.start_span(self._name, start_time=self._start_ns, attributes=attributes)
            self._traces[str(task_id)] = _Trace(self._tracer, span)

    def of(self, task_id: uuid.UUID | str) -> TaskTrace:
        return self._traces.get(str(task_id), NO_TRACE)

    def end_all(self, *, error: BaseException | None = None) -> None:
        for task_trace in self._traces.values():
            if error is not None:
                _failed(task_trace.span, error)
            task_trace.span.end()


class _BatchTraces(TaskTraces):
    """The traces of a batch's deliveries, by position and by task id (the first delivery of an id)."""

    enabled = True

    def __init__(self, task_ids: list[str], traces: list[TaskTrace]) -> None:
        self._traces = traces
        self._by_id: dict[str, TaskTrace] = {}
        for task_id, task_trace in zip(task_ids, traces, strict=True):
            self._by_id.setdefault(task_id, task_trace)

    def of(self, task_id: uuid.UUID | str) -> TaskTrace:
        return self._by_id.get(str(task_id), NO_TRACE)

    def at(self, position: int) -> TaskTrace:
        return self._traces[position]

    def spans(
        self, name: str, task_ids: Iterable[uuid.UUID], *, start_ns: int, attributes: Sequence[Attributes] = ()
    ) -> None:
        for at, task_id in enumerate(task_ids):
            task_trace = self._by_id.get(str(task_id))
            if isinstance(task_trace, _Trace):
                task_trace.child(name, start_ns=start_ns, attributes=attributes[at] if attributes else None)


def _parent(traceparent: str | None) -> Context | None:
    """The context a W3C traceparent names (None: the current one)."""
    return _W3C.extract({TRACEPARENT: traceparent}) if traceparent else None


def _failed(span: trace.Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_attribute("error.type", type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR, str(error)))


def _end_tool_call(span: trace.Span, future: Future[CallOutcome]) -> None:
    if future.cancelled():
        span.set_status(Status(StatusCode.ERROR, "cancelled"))
    elif (exc := future.exception()) is not None:
        _failed(span, exc)
    else:
        outcome = future.result()
        if outcome.status is not None:
            span.set_attribute("http.response.status_code", outcome.status)
        if outcome.error is not None:
            span.set_attribute("error.type", "tool_error")
            span.set_status(Status(StatusCode.ERROR, outcome.error))
    span.end()


def _sampler(settings: Settings) -> Sampler:
    """OTEL_TRACES_SAMPLER's sampler, with OTEL_TRACES_SAMPLER_ARG's ratio."""
    name, ratio = settings.otel_traces_sampler, settings.otel_traces_sampler_arg
    root: Sampler = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(
        name.removeprefix("parentbased_"), TraceIdRatioBased(ratio)
    )
    return ParentBased(root) if name.startswith("parentbased_") else root

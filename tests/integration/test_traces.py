"""Traces across the queue, as a collector receives them: this process submits (the caller), a real worker
runs the tasks with its LLM process calling the bundled LLM server, and every process exports its spans over
OTLP/HTTP to a receiver on loopback that decodes them with opentelemetry-proto."""

from __future__ import annotations

import gzip
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from pydantic import AnyHttpUrl

from agent_service.config import Settings
from agent_service.devtools.processes import celery_worker
from agent_service.tasks import create_agent_task, create_agent_tasks
from agent_service.worker import create_celery_app
from tests.integration.conftest import LOG_DIR, REDIS_SERVER
from tests.support import add_agent, wait_for_final, wait_until

TRACES_REDIS = f"{REDIS_SERVER}/{os.environ.get('TEST_TRACES_REDIS_DB', '12')}"  # no other worker reads it
BATCH_SPAN = "run/worker.process_agent_task"  # Celery's instrumentation names a task run so


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]
    links: list[tuple[str, str]]  # (trace id, span id)
    pid: int  # of the process that exported it (its resource's process.pid)


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP receiver: POST /v1/traces, protobuf bodies (gzip or not), every span kept."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receiver)
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def named(self, name: str) -> list[ReceivedSpan]:
        with self.lock:
            return [span for span in self.spans if span.name == name]

    def of_task(self, task_id: str) -> list[ReceivedSpan]:
        """The spans of the trace whose create_agent_task span is this task's."""
        (root,) = [span for span in self.named("create_agent_task") if span.attributes[TASK_ID] == task_id]
        with self.lock:
            return [span for span in self.spans if span.trace_id == root.trace_id]


class _Receiver(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        received = [
            _received(span, pid=_pid(resource_spans))
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self.server.lock:
            self.server.spans += received
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        """Quiet."""


TASK_ID = "agent_service.task.id"


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind)


def _received(span: ProtoSpan, *, pid: int) -> ReceivedSpan:
    return ReceivedSpan(
        name=span.name,
        kind=span.kind,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=span.parent_span_id.hex(),
        attributes={attribute.key: _value(attribute.value) for attribute in span.attributes},
        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
        pid=pid,
    )


def _pid(resource_spans) -> int:
    (pid,) = [a.value.int_value for a in resource_spans.resource.attributes if a.key == "process.pid"]
    return pid


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    server = Collector()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def traced_settings(settings: Settings, collector: Collector) -> Settings:
    """Traced, exporting every 100 ms; a broker of its own; tools may reach the bundled tool server on loopback."""
    return settings.model_copy(
        update={
            "redis_url": TRACES_REDIS,
            "otel_exporter_otlp_endpoint": AnyHttpUrl(collector.url),
            "otel_bsp_schedule_delay": 100,
            "tool_allow_private_addresses": True,
        }
    )


@pytest.fixture(scope="module")
def traced_app(traced_settings: Settings):
    redis.Redis.from_url(TRACES_REDIS).flushdb()
    app = create_celery_app(traced_settings)
    yield app
    app.services.tracing.shutdown()
    app.services.engine.dispose()


@pytest.fixture(scope="module")
def traced_worker(traced_app, traced_settings: Settings):
    with celery_worker(env=traced_settings.as_env(), log_path=LOG_DIR / "traced-worker.log", name="traced") as process:
        yield process


def test_each_task_is_one_trace_from_its_submission_through_the_worker_and_its_llm_process_to_its_settle(
    traced_app, traced_worker, session_factory, collector: Collector, llm, tool_url: str, tool_server
):
    # Given a traced caller (this process) and worker; three text tasks submitted together, and one api task
    # whose model asks for the weather tool, then answers
    text_agent = add_agent(session_factory, prefix="traced")
    texts = create_agent_tasks(
        [{"title": f"Traced {n}", "agent_id": str(text_agent.id), "user_id": "u-traces"} for n in range(3)],
        app=traced_app,
    )
    weather = {
        "name": "weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "method": "GET",
        "url": f"{tool_url}/weather",
    }
    api_agent = add_agent(
        session_factory, prefix="traced-api", kind="api", tools=[weather], settings={"allowed_hosts": ["127.0.0.1"]}
    )
    token = f"traced-{uuid.uuid4().hex[:10]}"
    script = llm.add_script(
        token, [{"tool_calls": [{"name": "weather", "arguments": {"city": "Paris"}}]}, {"content": "Sunny."}]
    )
    api = create_agent_task(
        {"title": "Weather", "description": script, "agent_id": str(api_agent.id), "user_id": "u-traces"},
        app=traced_app,
    )
    # When they have run
    rows = wait_for_final(session_factory, [*texts, api])
    assert {row.status.value for row in rows.values()} == {"completed"}
    wait_until(
        lambda: (
            {span.attributes.get(TASK_ID) for span in collector.named("process agent_tasks")} >= {*texts, api}
            and len(collector.named("chat gpt-4o-mini")) >= 5
            and len(collector.named("settle")) >= 4
        ),
        what="spans of every task",
        timeout=30,
    )
    worker_pid = traced_worker.pid
    for task_id in [*texts, api]:
        spans = collector.of_task(task_id)
        by_name: dict[str, list[ReceivedSpan]] = {}
        for span in spans:
            by_name.setdefault(span.name, []).append(span)
        # Then each task is one trace: the caller's submission, the publish, the worker's delivery ...
        (submitted,) = by_name["create_agent_task"]
        (sent,) = by_name["send agent_tasks"]
        (delivery,) = by_name["process agent_tasks"]
        assert sent.parent_id == submitted.span_id
        assert delivery.parent_id == sent.span_id
        assert submitted.pid == sent.pid == os.getpid()
        assert delivery.pid == worker_pid
        assert delivery.attributes[TASK_ID] == task_id
        # ... the claim, admission and settle in the worker under the delivery ...
        for name in ("claim", "admission", "settle"):
            assert by_name[name], name
            assert {(span.parent_id, span.pid) for span in by_name[name]} == {(delivery.span_id, worker_pid)}
        # ... and each model call, made by the LLM process, under the delivery too, with the GenAI attributes
        chats = by_name["chat gpt-4o-mini"]
        assert {span.parent_id for span in chats} == {delivery.span_id}
        assert {span.pid for span in chats}.isdisjoint({worker_pid, os.getpid()})
        row = rows[task_id]
        for chat in chats:
            assert chat.attributes["gen_ai.operation.name"] == "chat"
            assert chat.attributes["gen_ai.provider.name"] == chat.attributes["gen_ai.system"] == "openai"
            assert chat.attributes["gen_ai.request.model"] == "gpt-4o-mini"
        assert sum(chat.attributes["gen_ai.usage.input_tokens"] for chat in chats) == row.prompt_tokens
        assert sum(chat.attributes["gen_ai.usage.output_tokens"] for chat in chats) == row.completion_tokens
        # The delivery's span says how it ended and what its calls cost (the task's cost: one attempt)
        assert delivery.attributes["agent_service.task.status"] == "completed"
        assert delivery.attributes["agent_service.task.cost_usd"] == pytest.approx(float(row.cost_usd))
    # The api task's tool call is a span of its trace, in the worker
    (tool_call,) = [span for span in collector.of_task(api) if span.name == "execute_tool weather"]
    assert tool_call.attributes["gen_ai.tool.name"] == "weather"
    assert tool_call.attributes["http.response.status_code"] == 200
    assert len(collector.named("chat gpt-4o-mini")) >= 5
    # Each batch's span is a trace of its own, linked to the delivery of each task it ran
    deliveries = {
        (span.trace_id, span.span_id)
        for span in collector.named("process agent_tasks")
        if span.attributes[TASK_ID] in rows
    }
    batches = collector.named(BATCH_SPAN)
    linked = {link for batch in batches for link in batch.links}
    assert deliveries <= linked
    assert {batch.trace_id for batch in batches}.isdisjoint({trace_id for trace_id, _ in deliveries})
    assert {batch.pid for batch in batches} == {worker_pid}

"""The bundled LLM server (devtools/llm_server/) as a real subprocess, driven by the real openai and
langchain_openai clients."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

PROJECT_DIR = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 20.0
CLIENT_TIMEOUT_S = 5.0
MODEL = "gpt-4o-mini"


@dataclass(frozen=True)
class RunningServer:
    url: str
    stderr_path: Path

    def control(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return httpx.request(method, self.url + path, json=body, timeout=CLIENT_TIMEOUT_S)

    def add_rule(self, **rule: Any) -> int:
        response = self.control("POST", "/control/faults", rule)
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def logged_requests(self, match: str | None = None) -> list[dict[str, Any]]:
        params = {"match": match} if match else None
        return httpx.get(self.url + "/control/requests", params=params, timeout=CLIENT_TIMEOUT_S).json()["requests"]

    def stats(self) -> dict[str, Any]:
        return self.control("GET", "/control/stats").json()


def start_server(stderr_path: Path, *extra_args: str) -> tuple[subprocess.Popen[str], str]:
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent_service.devtools.llm_server", "--port", "0", *extra_args],
            cwd=PROJECT_DIR,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    ready, _, _ = select.select([process.stdout], [], [], STARTUP_TIMEOUT_S)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("llm_server listening on http://"):
        process.kill()
        raise RuntimeError(f"server did not start: {line!r} {stderr_path.read_text()}")
    return process, line.split()[-1]


def stop_server(process: subprocess.Popen[str]) -> int:
    process.terminate()
    try:
        return process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    stderr_path = tmp_path_factory.mktemp("llm_server") / "stderr.log"
    process, url = start_server(stderr_path, "--seed", "1234")
    try:
        yield RunningServer(url=url, stderr_path=stderr_path)
    finally:
        stop_server(process)


@pytest.fixture(autouse=True)
def clean_server(server: RunningServer) -> None:
    assert server.control("POST", "/control/reset").status_code == 200


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="test", max_retries=0, timeout=CLIENT_TIMEOUT_S)


@pytest.fixture
def chat_model(server: RunningServer) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=server.url + "/v1", api_key="test", max_retries=0, timeout=CLIENT_TIMEOUT_S)


def ask(client: openai.OpenAI, text: str, **options: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], **options)


def with_fault(kind: str, **headers: str) -> dict[str, Any]:
    return {"extra_headers": {"X-Mock-Fault": kind, **headers}}


# ---------------------------------------------------------------- normal answers


def test_chat_completion_answers_last_user_message_with_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "What is two plus two?"},
        ],
    )
    assert completion.model == "gpt-4o"
    assert completion.choices[0].message.content == "Offline answer to: What is two plus two?"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 7
    assert completion.usage.completion_tokens == 8
    assert completion.usage.total_tokens == 15


def test_chat_openai_returns_content_and_usage_metadata(chat_model: ChatOpenAI) -> None:
    message = chat_model.invoke("Summarise the report")
    assert message.content == "Offline answer to: Summarise the report"
    assert message.usage_metadata["input_tokens"] == 3
    assert message.usage_metadata["output_tokens"] == 6


def test_json_object_response_format_returns_parseable_json(client: openai.OpenAI) -> None:
    completion = ask(client, "give json", response_format={"type": "json_object"})
    assert json.loads(completion.choices[0].message.content) == {"answer": "Offline answer to: give json"}


class Verdict(BaseModel):
    label: str
    score: float
    count: int
    urgent: bool
    tags: list[str]


def test_json_schema_structured_output_validates_through_langchain(chat_model: ChatOpenAI) -> None:
    verdict = chat_model.with_structured_output(Verdict, method="json_schema").invoke("classify this")
    assert isinstance(verdict, Verdict)
    assert verdict.label == "Offline answer to: classify this"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def test_tool_call_is_parsed_by_openai_client(client: openai.OpenAI) -> None:
    completion = ask(client, "weather in Paris?", tools=[WEATHER_TOOL, TIME_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert set(json.loads(choice.message.tool_calls[0].function.arguments)) == {"city", "days"}


def test_tool_choice_selects_named_tool_and_none_disables_tools(client: openai.OpenAI) -> None:
    pick_time = {"type": "function", "function": {"name": "get_time"}}
    named = ask(client, "time?", tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=pick_time)
    assert named.choices[0].message.tool_calls[0].function.name == "get_time"
    disabled = ask(client, "time?", tools=[WEATHER_TOOL], tool_choice="none")
    assert disabled.choices[0].message.content == "Offline answer to: time?"


def test_langchain_bind_tools_receives_tool_call_arguments(chat_model: ChatOpenAI) -> None:
    def get_weather(city: str, days: int) -> str:
        """Forecast for a city."""
        return city

    message = chat_model.bind_tools([get_weather]).invoke("weather in Paris?")
    assert message.tool_calls[0]["name"] == "get_weather"
    assert message.tool_calls[0]["args"]["days"] == 1


def test_streaming_yields_several_chunks_then_usage(client: openai.OpenAI) -> None:
    chunks = list(ask(client, "stream this please", stream=True, stream_options={"include_usage": True}))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    pieces = [delta.content for delta in deltas if delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == "Offline answer to: stream this please"
    assert chunks[-1].usage.total_tokens == 3 + 6


def test_streamed_tool_call_reassembles_in_langchain(chat_model: ChatOpenAI) -> None:
    chunks = iter(chat_model.bind_tools([WEATHER_TOOL]).stream("weather?"))
    message = next(chunks)
    for chunk in chunks:
        message += chunk
    assert message.tool_calls[0]["name"] == "get_weather"
    assert message.tool_calls[0]["args"]["city"] == "Offline answer to: weather?"


def test_models_and_health_endpoints(client: openai.OpenAI, server: RunningServer) -> None:
    assert {"gpt-4o-mini", "gpt-4o"} <= {model.id for model in client.models.list()}
    assert server.control("GET", "/health").json() == {"status": "ok"}


# ---------------------------------------------------------------- invalid requests


def test_empty_messages_are_rejected_as_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[])
    assert caught.value.param == "messages"


def test_non_json_body_gets_openai_style_error(server: RunningServer) -> None:
    response = httpx.post(server.url + "/v1/chat/completions", content=b"not json", timeout=CLIENT_TIMEOUT_S)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_missing_model_names_the_param(server: RunningServer) -> None:
    response = server.control("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


# ---------------------------------------------------------------- faults


def test_429_rule_sets_retry_after_and_is_used_up_after_times(client: openai.OpenAI, server: RunningServer) -> None:
    server.add_rule(fault="429", times=2, retry_after=2.5)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            ask(client, "hello")
        assert caught.value.response.headers["retry-after"] == "2.5"
        assert caught.value.code == "rate_limit_exceeded"
    assert ask(client, "hello").choices[0].message.content == "Offline answer to: hello"
    assert server.control("GET", "/control/faults").json() == []


def test_insufficient_quota_is_a_rate_limit_without_retry_after(client: openai.OpenAI, server: RunningServer) -> None:
    server.add_rule(fault="insufficient_quota")
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, "hello")
    assert caught.value.code == "insufficient_quota"
    assert caught.value.type == "insufficient_quota"
    assert "retry-after" not in caught.value.response.headers


@pytest.mark.parametrize(
    ("kind", "error_class"),
    [
        ("500", openai.InternalServerError),
        ("502", openai.InternalServerError),
        ("503", openai.InternalServerError),
        ("400", openai.BadRequestError),
        ("401", openai.AuthenticationError),
        ("403", openai.PermissionDeniedError),
        ("404", openai.NotFoundError),
    ],
)
def test_status_fault_header_raises_matching_openai_error(client: openai.OpenAI, kind: str, error_class: type) -> None:
    with pytest.raises(error_class) as caught:
        ask(client, "hello", **with_fault(kind))
    assert caught.value.status_code == int(kind)


def test_fault_header_carries_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, "hello", **with_fault("429", **{"X-Mock-Retry-After": "0.25"}))
    assert caught.value.response.headers["retry-after"] == "0.25"


def test_401_fault_reports_invalid_api_key(client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(client, "hello", **with_fault("401"))
    assert caught.value.code == "invalid_api_key"


def test_hang_times_out_the_client_and_ends_when_it_disconnects(server: RunningServer) -> None:
    impatient = openai.OpenAI(base_url=server.url + "/v1", api_key="test", max_retries=0, timeout=1)
    with pytest.raises(openai.APITimeoutError):
        ask(impatient, "hello", **with_fault("hang"))
    deadline = time.monotonic() + 3
    while server.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.stats()["in_flight"] == 0
    [entry] = server.logged_requests()
    # Dropped when the client gave up after its 1 s timeout, not at once (the server logs the request a
    # little after the client started its clock, hence the margin).
    assert entry["ended"] == "dropped" and entry["ended_at"] - entry["at"] >= 0.8


def test_drop_closes_connection_without_response(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError) as caught:
        ask(client, "hello", **with_fault("drop"))
    assert not isinstance(caught.value, openai.APITimeoutError)


def test_malformed_body_raises_json_decode_error_in_openai_client(client: openai.OpenAI) -> None:
    # The openai client does not wrap this one: it surfaces the raw decoder error.
    with pytest.raises(json.JSONDecodeError):
        ask(client, "hello", **with_fault("malformed"))


def test_empty_body_has_no_choices_and_langchain_rejects_it(client: openai.OpenAI, chat_model: ChatOpenAI) -> None:
    assert ask(client, "hello", **with_fault("empty")).choices is None
    with pytest.raises(TypeError, match="choices"):
        chat_model.invoke("hello", extra_headers={"X-Mock-Fault": "empty"})


def test_slow_rule_adds_its_delay(client: openai.OpenAI, server: RunningServer) -> None:
    server.add_rule(fault="slow", delay_ms=300)
    started = time.monotonic()
    assert ask(client, "hello").choices[0].message.content == "Offline answer to: hello"
    assert time.monotonic() - started >= 0.3


def test_match_rule_targets_only_requests_containing_token(client: openai.OpenAI, server: RunningServer) -> None:
    server.add_rule(fault="500", match="task-7f3a")
    assert ask(client, "an innocent task").choices[0].message.content
    with pytest.raises(openai.InternalServerError):
        ask(client, "process task-7f3a now")
    assert ask(client, "another innocent task").choices[0].message.content


def test_model_rule_targets_only_requests_for_that_model(client: openai.OpenAI, server: RunningServer) -> None:
    server.add_rule(fault="503", model="gpt-4o")
    assert ask(client, "hello").choices[0].message.content
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello"}])


def test_first_applicable_rule_wins_and_rules_can_be_deleted(client: openai.OpenAI, server: RunningServer) -> None:
    first = server.add_rule(fault="503")
    server.add_rule(fault="401")
    with pytest.raises(openai.InternalServerError):
        ask(client, "hello")
    assert server.control("DELETE", f"/control/faults/{first}").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        ask(client, "hello")
    assert server.control("DELETE", f"/control/faults/{first}").status_code == 404
    assert server.control("DELETE", "/control/faults").json() == {"deleted": 1}


def test_directive_in_message_fails_every_time(client: openai.OpenAI) -> None:
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            ask(client, "poison task [[mock:429 retry_after=2]]")
        assert caught.value.response.headers["retry-after"] == "2"


def test_header_fault_takes_precedence_over_rules(client: openai.OpenAI, server: RunningServer) -> None:
    server.add_rule(fault="500")
    with pytest.raises(openai.AuthenticationError):
        ask(client, "hello", **with_fault("401"))


def test_seeded_rate_rule_applies_to_about_that_fraction(server: RunningServer) -> None:
    server.add_rule(fault="503", rate=0.3)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as http:
        statuses = [http.post("/v1/chat/completions", json=body).status_code for _ in range(200)]
    assert set(statuses) == {200, 503}
    assert 0.15 <= statuses.count(503) / 200 <= 0.45


# ---------------------------------------------------------------- observation and control


def test_request_log_records_requests_and_faults(client: openai.OpenAI, server: RunningServer) -> None:
    ask(client, "first log-token-1")
    with pytest.raises(openai.InternalServerError):
        ask(client, "second log-token-2", **with_fault("500"))
    entries = server.logged_requests()
    outcomes = [(entry["fault"], entry["status"], entry["model"]) for entry in entries]
    assert outcomes == [(None, 200, MODEL), ("500", 500, MODEL)]
    assert entries[0]["seq"] < entries[1]["seq"]
    assert [entry["ended"] for entry in entries] == ["answered", "answered"]
    assert all(entry["at"] <= entry["ended_at"] for entry in entries)
    assert [entry["text"] for entry in server.logged_requests(match="log-token-2")] == ["second log-token-2"]
    assert server.stats() == {"requests": 2, "by_status": {"200": 1, "500": 1}, "in_flight": 0, "rate_limited": 0}
    assert server.control("DELETE", "/control/requests").json() == {"deleted": 2}
    assert server.logged_requests() == []


def test_latency_header_delays_the_reply(client: openai.OpenAI) -> None:
    started = time.monotonic()
    ask(client, "hello", extra_headers={"X-Mock-Latency-Ms": "300"})
    assert time.monotonic() - started >= 0.3


def test_configured_latency_applies_until_reset(client: openai.OpenAI, server: RunningServer) -> None:
    config = server.control("POST", "/control/config", {"latency_ms": 250})
    assert config.json() | {"latency_ms": 250, "latency_jitter_ms": 0} == config.json()
    started = time.monotonic()
    ask(client, "hello")
    assert time.monotonic() - started >= 0.25
    server.control("POST", "/control/reset")
    assert server.control("GET", "/control/config").json()["latency_ms"] == 0


# ---------------------------------------------------------------- enforced rate limits


def limit(server: RunningServer, limits: dict[str, Any], *, burst_seconds: float = 1.0) -> None:
    body = {"rate_limits": limits, "rate_burst_seconds": burst_seconds}
    assert server.control("POST", "/control/config", body).status_code == 200


def test_requests_over_the_model_rpm_get_a_429_with_retry_after_and_are_counted(
    client: openai.OpenAI, server: RunningServer
) -> None:
    # Given 120 requests per minute for the model, a bucket of one second: 2 requests at once, then one per 0.5 s
    limit(server, {MODEL: {"rpm": 120}})
    # When three requests come at once
    first, second = (
        ask(client, "one"),
        client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "two"}]),
    )
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, "three")
    # Then the third is refused like OpenAI refuses it, and the refusal is counted apart
    assert first.choices[0].message.content == "Offline answer to: one"
    assert second.headers["x-ratelimit-limit-requests"] == "120"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    headers = caught.value.response.headers
    assert (caught.value.code, headers["retry-after"]) == ("rate_limit_exceeded", "1")
    assert 0 < int(headers["retry-after-ms"]) <= 500
    assert "requests per minute: Limit 120" in caught.value.message
    assert server.stats()["rate_limited"] == 1 and server.stats()["by_status"]["429"] == 1
    # and once the bucket drained for half a second, a request fits again
    time.sleep(int(headers["retry-after-ms"]) / 1000)
    assert ask(client, "four").choices[0].message.content == "Offline answer to: four"


def test_tokens_per_minute_count_the_tokens_the_answer_reports(client: openai.OpenAI, server: RunningServer) -> None:
    # Given 600 tokens a minute shared by all models: a bucket of 10 tokens
    limit(server, {"*": {"tpm": 600}})
    # When a request of 3 + 6 tokens is answered, then a second one at once
    reply = ask(client, "a b c")
    assert reply.usage.total_tokens == 9
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "d e f"}])
    # Then the second is refused: 9 of 10 tokens are in use, and it needs 9
    assert caught.value.response.headers["x-ratelimit-limit-tokens"] == "600"
    assert "all models on tokens per minute" in caught.value.message


def test_rate_limits_given_on_the_command_line_apply_from_the_start(tmp_path: Path) -> None:
    process, url = start_server(tmp_path / "stderr.log", "--rpm", "60", "--rate-limits", '{"gpt-4o": {"tpm": 1000}}')
    try:
        config = httpx.get(url + "/control/config").json()
        client = openai.OpenAI(base_url=url + "/v1", api_key="test", max_retries=0, timeout=CLIENT_TIMEOUT_S)
        ask(client, "hello")
        with pytest.raises(openai.RateLimitError):
            ask(client, "hello")
    finally:
        stop_server(process)
    assert config["rate_limits"] == {"gpt-4o": {"tpm": 1000.0}, "*": {"rpm": 60.0}}


@pytest.mark.parametrize(
    ("path", "body", "expected_in_message"),
    [
        ("/control/faults", {"fault": "teapot"}, "unknown fault kind"),
        ("/control/faults", {"fault": "429", "rate": 1.5}, "rate"),
        ("/control/faults", {"fault": "429", "times": "twice"}, "times"),
        ("/control/faults", {"fault": "429", "times": 0}, "times"),
        ("/control/faults", {"fault": "429", "retry_after": "soon"}, "retry_after"),
        ("/control/faults", {"fault": "429", "matches": "x"}, "unknown field"),
        ("/control/faults", ["429"], "JSON object"),
        ("/control/config", {"latency_ms": "fast"}, "latency_ms"),
        ("/control/config", {"latency_ms": -1}, "latency_ms"),
        ("/control/config", {"rate_limits": {"gpt-4o-mini": {"rph": 5}}}, "unknown field"),
        ("/control/config", {"rate_limits": {"*": {"rpm": 0}}}, "rpm"),
        ("/control/config", {"rate_limits": {"*": {"rpm": 60}}, "rate_burst_seconds": 0}, "rate_burst_seconds"),
    ],
)
def test_invalid_control_input_is_rejected(
    server: RunningServer, path: str, body: Any, expected_in_message: str
) -> None:
    response = server.control("POST", path, body)
    assert response.status_code == 400
    assert expected_in_message in response.json()["error"]["message"]


def test_faults_leave_no_tracebacks_in_server_log(client: openai.OpenAI, server: RunningServer) -> None:
    impatient = client.with_options(timeout=0.5)
    expected = {"hang": openai.APITimeoutError, "drop": openai.APIConnectionError, "malformed": ValueError}
    for kind, error_class in expected.items():
        with pytest.raises(error_class):
            ask(impatient, "hello", **with_fault(kind))
    time.sleep(0.2)  # let the server notice the disconnects
    assert server.stderr_path.read_text() == ""


def test_server_exits_cleanly_on_sigterm_and_sigint(tmp_path: Path) -> None:
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        process, url = start_server(tmp_path / "stderr.log")
        assert httpx.get(url + "/health", timeout=CLIENT_TIMEOUT_S).status_code == 200
        process.send_signal(stop_signal)
        assert process.wait(timeout=5) == 0
        assert (tmp_path / "stderr.log").read_text() == ""

"""The bundled LLM server's scripts (devtools/llm_server/): replies one per model turn, chosen by a rule, a
header or a directive, read through the real openai and langchain_openai clients over HTTP."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from langchain_core.exceptions import OutputParserException
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.support import LLMControl

MODEL = "gpt-4o-mini"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ORDER = {
    "type": "function",
    "function": {
        "name": "create_order",
        "parameters": {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]},
    },
}
TWO_TOOLS_THEN_TEXT = [
    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
    {"tool_calls": [{"name": "create_order", "arguments": {"item": "umbrella"}}]},
    {"content": "Ordered an umbrella: rain in Paris."},
]


class Verdict(BaseModel):
    label: str
    confidence: float


@pytest.fixture(autouse=True)
def clean_server(llm: LLMControl) -> None:
    llm.reset()


@pytest.fixture
def client(llm_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm_url + "/v1", api_key="test", max_retries=0, timeout=5)


@pytest.fixture
def chat_model(llm_url: str) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=llm_url + "/v1", api_key="test", max_retries=0, timeout=5)


def ask(client: openai.OpenAI, text: str, **options: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], **options)


def run_agent(client: openai.OpenAI, text: str, *, tools: list[dict], **options: Any) -> tuple[str, list[str]]:
    """A minimal tool-running agent: call the model, run every tool it asks for (answering "ok"), repeat until
    it answers with text. Returns that text and the tools it called, in order."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": text}]
    called: list[str] = []
    for _ in range(10):
        message = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, **options)
        message = message.choices[0].message
        if not message.tool_calls:
            return message.content, called
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            called.append(call.function.name)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "ok"})
    raise AssertionError(f"the agent did not end: {called}")


# ---------------------------------------------------------------- turns


def test_a_script_drives_two_tool_calls_then_a_text_answer(client: openai.OpenAI, llm: LLMControl) -> None:
    # Given a script of three turns named by a directive in the task
    directive = llm.add_script("two-tools", TWO_TOOLS_THEN_TEXT)
    # When an agent runs it to the end
    answer, called = run_agent(client, f"buy what the weather needs task-s1 {directive}", tools=[WEATHER, ORDER])
    # Then each request got the reply for its turn, and the log counts the conversation's three requests
    assert (answer, called) == ("Ordered an umbrella: rain in Paris.", ["get_weather", "create_order"])
    logged = llm.requests("task-s1")
    assert [(entry["turn"], entry["tools"]) for entry in logged] == [
        (turn, ["get_weather", "create_order"]) for turn in range(3)
    ]
    assert llm.count("task-s1") == 3


def test_a_turn_asked_again_gets_the_same_reply_and_call_ids(client: openai.OpenAI, llm: LLMControl) -> None:
    # Given the first turn of a scripted conversation answered
    directive = llm.add_script("two-tools", TWO_TOOLS_THEN_TEXT)
    messages = [{"role": "user", "content": f"task-s2 {directive}"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, ORDER])
    # When the same turn is asked again (a task resumed after a crash), and another conversation asks it
    again = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, ORDER])
    other = ask(client, f"task-s3 {directive}", tools=[WEATHER, ORDER])
    # Then nothing was consumed: the same reply, with the same ids for the same conversation
    [call] = first.choices[0].message.tool_calls
    assert again.choices[0].message.tool_calls[0].id == call.id
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert other.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert other.choices[0].message.tool_calls[0].id != call.id


def test_the_last_reply_of_a_script_repeats(client: openai.OpenAI, llm: LLMControl) -> None:
    directive = llm.add_script("always-weather", [TWO_TOOLS_THEN_TEXT[0]])
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"loop {directive}"}]
    for turn in range(3):
        call = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER]).choices[0].message
        assert call.tool_calls[0].function.name == "get_weather", turn
        messages += [call.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": "x", "content": "ok"}]


def test_parallel_tool_calls_come_in_one_reply(client: openai.OpenAI, llm: LLMControl) -> None:
    calls = [{"name": "get_weather", "arguments": {"city": city}} for city in ("Paris", "Oslo")]
    llm.add_fault(script=[{"tool_calls": calls}], match="task-s4")
    choice = ask(client, "weather for task-s4", tools=[WEATHER]).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [json.loads(call.function.arguments)["city"] for call in choice.message.tool_calls] == ["Paris", "Oslo"]
    assert len({call.id for call in choice.message.tool_calls}) == 2


def test_a_script_rule_matches_like_fault_rules_and_is_used_up(client: openai.OpenAI, llm: LLMControl) -> None:
    # Given a rule scripting a text reply for two requests that mention task-s5, on one model
    llm.add_script("short", [{"content": "scripted"}])
    llm.add_fault(script="short", match="task-s5", model=MODEL, times=2)
    # Then other tasks and models get the default reply, and the third matching request too
    assert ask(client, "an innocent task").choices[0].message.content.startswith("Offline answer to")
    other_model = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "task-s5"}])
    assert other_model.choices[0].message.content == "Offline answer to: task-s5"
    assert [ask(client, "task-s5").choices[0].message.content for _ in range(3)] == [
        "scripted",
        "scripted",
        "Offline answer to: task-s5",
    ]


def test_a_header_names_the_script_for_one_request(client: openai.OpenAI, llm: LLMControl) -> None:
    llm.add_script("plain", [{"content": "from the header"}])
    reply = ask(client, "hello", extra_headers={"X-Mock-Script": "plain"})
    assert reply.choices[0].message.content == "from the header"
    assert reply.usage.completion_tokens == 3


def test_a_scripted_fault_fails_only_its_turn(client: openai.OpenAI, llm: LLMControl) -> None:
    directive = llm.add_script("flaky", [{"fault": "429", "retry_after": 2}, {"content": "fine"}])
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, f"task-s6 {directive}")
    assert caught.value.response.headers["retry-after"] == "2"
    second_turn = [
        {"role": "user", "content": f"task-s6 {directive}"},
        {"role": "assistant", "content": "earlier"},
        {"role": "user", "content": "again"},
    ]
    assert client.chat.completions.create(model=MODEL, messages=second_turn).choices[0].message.content == "fine"
    assert [entry["fault"] for entry in llm.requests("task-s6")] == ["429", None]


# ---------------------------------------------------------------- the default with tools


def test_the_default_reply_calls_a_tool_until_a_tool_result_arrives(client: openai.OpenAI) -> None:
    answer, called = run_agent(client, "weather in Paris?", tools=[WEATHER, ORDER])
    assert (answer, called) == ("Offline answer to: weather in Paris?", ["get_weather"])


def test_a_forced_tool_choice_calls_the_tool_even_after_a_result(client: openai.OpenAI) -> None:
    messages = [
        {"role": "user", "content": "order"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c1", "type": "function", "function": ORDER["function"] | {"arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    forced = {"type": "function", "function": {"name": "create_order"}}
    for choice in (forced, "required"):
        reply = client.chat.completions.create(model=MODEL, messages=messages, tools=[ORDER], tool_choice=choice)
        assert reply.choices[0].message.tool_calls[0].function.name == "create_order"


# ---------------------------------------------------------------- JSON and refusals


def test_a_scripted_json_reply_is_the_structured_output(chat_model: ChatOpenAI, llm: LLMControl) -> None:
    directive = llm.add_script("verdict", [{"json": {"label": "approve", "confidence": 0.9}}])
    verdict = chat_model.with_structured_output(Verdict, method="json_schema").invoke(f"decide {directive}")
    assert verdict == Verdict(label="approve", confidence=0.9)


@pytest.mark.parametrize(
    "reply",
    [{"json": {"label": "approve"}}, {"invalid_json": True}, {"content": "not json {"}],
    ids=["valid-json-invalid-against-schema", "cut-short-json", "prose"],
)
def test_scripted_replies_that_do_not_validate_fail_structured_output(
    chat_model: ChatOpenAI, llm: LLMControl, reply: dict
) -> None:
    directive = llm.add_script("bad", [reply])
    with pytest.raises((OutputParserException, ValueError)):
        chat_model.with_structured_output(Verdict, method="json_schema").invoke(f"decide {directive}")
    [entry] = llm.requests(directive)
    assert entry["response_format"]["type"] == "json_schema"
    assert entry["response_format"]["json_schema"]["name"] == "Verdict"


def test_a_scripted_refusal_is_openai_refusal_field(client: openai.OpenAI, llm: LLMControl) -> None:
    directive = llm.add_script("refuse", [{"refusal": "I can't help with that"}])
    parsed = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": f"decide {directive}"}], response_format=Verdict
    )
    choice = parsed.choices[0]
    assert choice.finish_reason == "stop"
    assert (choice.message.refusal, choice.message.content, choice.message.parsed) == (
        "I can't help with that",
        None,
        None,
    )
    assert parsed.usage.completion_tokens == 5


# ---------------------------------------------------------------- streaming


def stream(client: openai.OpenAI, text: str, **options: Any) -> list[Any]:
    return list(ask(client, text, stream=True, stream_options={"include_usage": True}, **options))


def test_streamed_parallel_tool_calls_reassemble_in_the_openai_client(client: openai.OpenAI, llm: LLMControl) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "create_order", "arguments": {"item": "umbrella"}},
    ]
    directive = llm.add_script("parallel", [{"tool_calls": calls}])
    chunks = stream(client, f"plan {directive}", tools=[WEATHER, ORDER])
    assembled: dict[int, dict[str, str]] = {}
    deltas = [delta for chunk in chunks if chunk.choices for delta in chunk.choices[0].delta.tool_calls or []]
    for delta in deltas:
        call = assembled.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
        call["id"] += delta.id or ""
        call["name"] += delta.function.name or ""
        call["arguments"] += delta.function.arguments or ""
    assert [(call["name"], json.loads(call["arguments"])) for call in assembled.values()] == [
        ("get_weather", {"city": "Paris"}),
        ("create_order", {"item": "umbrella"}),
    ]
    assert all(call["id"].startswith("call_") for call in assembled.values())
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == 4  # the words of both calls' arguments


def test_a_streamed_refusal_reassembles_in_the_openai_client(client: openai.OpenAI, llm: LLMControl) -> None:
    directive = llm.add_script("refuse", [{"refusal": "I can't help with that"}])
    chunks = stream(client, f"decide {directive}")
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert "".join(delta.refusal or "" for delta in deltas) == "I can't help with that"
    assert len([delta for delta in deltas if delta.refusal]) > 1
    assert all(delta.content is None for delta in deltas)
    assert chunks[-1].usage.completion_tokens == 5


def test_a_streamed_scripted_text_reassembles_in_langchain(chat_model: ChatOpenAI, llm: LLMControl) -> None:
    directive = llm.add_script("text", [{"json": {"label": "approve", "confidence": 1}}])
    pieces = [chunk.content for chunk in chat_model.stream(f"decide {directive}")]
    assert json.loads("".join(pieces)) == {"label": "approve", "confidence": 1}


def test_a_streamed_scripted_tool_call_reassembles_in_langchain(chat_model: ChatOpenAI, llm: LLMControl) -> None:
    directive = llm.add_script("two-tools", TWO_TOOLS_THEN_TEXT)
    chunks = iter(chat_model.bind_tools([WEATHER, ORDER]).stream(f"go {directive}"))
    message = next(chunks)
    for chunk in chunks:
        message += chunk
    assert [(call["name"], call["args"]) for call in message.tool_calls] == [("get_weather", {"city": "Paris"})]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"replies": [{"content": "x"}]}, "name"),
        ({"name": "has space", "replies": [{"content": "x"}]}, "name"),
        ({"name": "s", "replies": []}, "replies"),
        ({"name": "s", "replies": [{"content": "x"}, {"content": "x", "json": 1}]}, "replies[1]"),
        ({"name": "s", "replies": [{"tool_calls": [{"arguments": {}}]}]}, "replies[0].tool_calls[0].name"),
        (
            {"name": "s", "replies": [{"tool_calls": [{"name": "t", "arguments": [1]}]}]},
            "replies[0].tool_calls[0].arguments",
        ),
        ({"name": "s", "replies": [{"tool_calls": [{"name": "t", "args": {}}]}]}, "replies[0].tool_calls[0].args"),
        ({"name": "s", "replies": [{"content": "x", "finish_reason": "length"}]}, "replies[0].finish_reason"),
        ({"name": "s", "replies": [{"invalid_json": False}]}, "replies[0].invalid_json"),
        ({"name": "s", "replies": [{"refusal": ""}]}, "replies[0].refusal"),
        ({"name": "s", "replies": [{"fault": "teapot"}]}, "replies[0].fault"),
        ({"name": "s", "replies": [{"fault": "429", "retry_after": "soon"}]}, "replies[0].retry_after"),
    ],
)
def test_a_bad_script_is_refused_naming_the_field(llm: LLMControl, body: dict, param: str) -> None:
    response = llm.http.post("/control/scripts", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("rule", "param"),
    [
        ({"script": "unknown"}, "script"),
        ({"script": [{"json": 1}], "fault": "429"}, "script"),
        ({"script": [{"tool_calls": []}]}, "script[0].tool_calls"),
    ],
)
def test_a_bad_script_rule_is_refused_naming_the_field(llm: LLMControl, rule: dict, param: str) -> None:
    response = llm.http.post("/control/faults", json=rule)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_a_request_naming_an_unknown_script_is_a_bad_request(client: openai.OpenAI, llm: LLMControl) -> None:
    with pytest.raises(openai.BadRequestError) as by_header:
        ask(client, "hello", extra_headers={"X-Mock-Script": "missing"})
    with pytest.raises(openai.BadRequestError) as by_directive:
        ask(client, "hello [[script:missing]]")
    assert (by_header.value.param, "no script named 'missing'" in by_directive.value.message) == ("X-Mock-Script", True)


def test_scripts_are_listed_and_cleared_by_reset(llm: LLMControl) -> None:
    llm.add_script("listed", TWO_TOOLS_THEN_TEXT)
    rule = llm.add_fault(script=[{"content": "inline"}], match="task-s7")
    assert llm.http.get("/control/scripts").json() == {"scripts": {"listed": TWO_TOOLS_THEN_TEXT}}
    [listed] = llm.http.get("/control/faults").json()
    assert (listed["id"], listed["script"], listed["match"]) == (rule, [{"content": "inline"}], "task-s7")
    llm.reset()
    assert httpx.get(llm.base_url + "/control/scripts").json() == {"scripts": {}}

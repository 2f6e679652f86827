"""The bundled tool server (devtools/tool_server.py) as a real subprocess, over real HTTP: what it answers, and
the record of the calls it received that tests of agents' tools assert on."""

from __future__ import annotations

import httpx
import pytest

from tests.support import ToolServerControl


@pytest.fixture(autouse=True)
def clean_server(tool_server: ToolServerControl) -> None:
    tool_server.reset()


@pytest.fixture
def http(tool_url: str) -> httpx.Client:
    return httpx.Client(base_url=tool_url, timeout=10)


def test_weather_is_deterministic_and_each_call_is_recorded_with_its_headers(
    http: httpx.Client, tool_server: ToolServerControl
) -> None:
    # When a tool calls the weather twice for one city with a secret header
    headers = {"Authorization": "Bearer s3cret", "X-Api-Key": "k-123"}
    first, second = (http.get("/weather", params={"city": "Paris"}, headers=headers) for _ in range(2))
    # Then it gets the same report, and the server kept both calls with the secret as received
    assert first.status_code == 200 and first.json() == second.json()
    assert first.json()["city"] == "Paris" and {"temperature_c", "conditions"} <= first.json().keys()
    calls = tool_server.calls(path="/weather")
    assert [(call["method"], call["query"]) for call in calls] == [("GET", {"city": "Paris"})] * 2
    assert calls[0]["headers"]["authorization"] == "Bearer s3cret"
    assert calls[0]["headers"]["x-api-key"] == "k-123"
    assert calls[0]["seq"] < calls[1]["seq"]


def test_weather_without_a_city_is_a_bad_request(http: httpx.Client) -> None:
    assert http.get("/weather").status_code == 400


def test_an_order_repeated_with_its_idempotency_key_is_created_once(
    http: httpx.Client, tool_server: ToolServerControl
) -> None:
    # Given an order posted, then posted again with the same idempotency key (a retried call)
    order = {"item": "umbrella", "quantity": 2}
    created = http.post("/orders", json=order, headers={"Idempotency-Key": "task-1:step-3"})
    replayed = http.post("/orders", json=order, headers={"Idempotency-Key": "task-1:step-3"})
    other = http.post("/orders", json={"item": "boots"})
    # Then the second gets the first order back, and a new order gets the next id
    assert (created.status_code, created.json()) == (201, {"id": "ord_1", "status": "created", "order": order})
    assert (replayed.status_code, replayed.json()["id"], replayed.headers["Idempotent-Replayed"]) == (
        200,
        "ord_1",
        "true",
    )
    assert (other.status_code, other.json()["id"]) == (201, "ord_2")
    # and the record shows every call with its key as received
    calls = tool_server.calls(path="/orders", method="POST")
    assert [call["headers"].get("idempotency-key") for call in calls] == ["task-1:step-3", "task-1:step-3", None]
    assert calls[0]["json"] == order
    assert tool_server.count(path="/orders") == 3


def test_an_order_that_is_not_a_json_object_is_refused(http: httpx.Client) -> None:
    assert http.post("/orders", content=b"not json").status_code == 400
    assert http.post("/orders", json=["a list"]).status_code == 400


def test_echo_returns_the_request_as_received(http: httpx.Client) -> None:
    echoed = http.put("/echo/a/b", params={"q": "1"}, content=b"payload", headers={"X-Trace": "t1"}).json()
    assert (echoed["method"], echoed["path"], echoed["query"], echoed["body"]) == (
        "PUT",
        "/echo/a/b",
        {"q": "1"},
        "payload",
    )
    assert echoed["headers"]["X-Trace"] == "t1"


@pytest.mark.parametrize("code", [200, 201, 204, 400, 401, 404, 429, 500, 502, 503])
def test_status_answers_with_that_status(http: httpx.Client, code: int) -> None:
    response = http.post(f"/status/{code}")
    assert response.status_code == code
    if code == 204:
        assert response.content == b""
    else:
        assert response.json() == {"status": code}


def test_redirect_points_where_asked_and_both_calls_are_recorded(
    http: httpx.Client, tool_url: str, tool_server: ToolServerControl
) -> None:
    target = f"{tool_url}/echo/landed"
    refused = http.get("/redirect", params={"to": target})
    followed = http.get("/redirect", params={"to": target}, follow_redirects=True)
    assert (refused.status_code, refused.headers["Location"]) == (302, target)
    assert followed.json()["path"] == "/echo/landed"
    assert [call["path"] for call in tool_server.calls()] == ["/redirect", "/redirect", "/echo/landed"]


@pytest.mark.parametrize("chunked", [False, True], ids=["with-length", "chunked"])
def test_big_sends_every_byte_asked_for(http: httpx.Client, chunked: bool) -> None:
    size = 5 * 1024 * 1024 + 7
    params = {"bytes": size, **({"chunked": 1} if chunked else {})}
    response = http.get("/big", params=params)
    assert len(response.content) == size and set(response.content) == {ord("x")}
    assert response.headers.get("Content-Length") == (None if chunked else str(size))


def test_slow_answers_after_the_delay_asked_for(http: httpx.Client) -> None:
    assert http.get("/slow", params={"ms": 50}).json() == {"slept_ms": 50}
    assert http.get("/slow", params={"ms": "soon"}).status_code == 400


def test_control_calls_are_not_recorded_and_reset_forgets_calls_and_orders(
    http: httpx.Client, tool_server: ToolServerControl
) -> None:
    http.post("/orders", json={"item": "a"})
    http.get("/health")
    assert [call["path"] for call in tool_server.calls()] == ["/orders"]
    tool_server.reset()
    assert tool_server.calls() == []
    assert http.post("/orders", json={"item": "b"}).json()["id"] == "ord_1"

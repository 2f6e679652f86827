"""The HTTP API as another application uses it: a real `python cli.py api` process on loopback, a real worker,
PostgreSQL, Redis and the bundled LLM server, spoken to with httpx. Tasks go in and complete; a tenant's key
sees only its tenant's tasks; a follower in another process reads tokens before the task ends and resumes after
a dropped connection without losing or repeating an event."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from agent_service.devtools.processes import ROOT
from agent_service.live.events import decode, stream_key
from agent_service.models import Task, TaskStatus
from tests.integration.api.conftest import calls
from tests.integration.conftest import IDLE_REDIS
from tests.integration.http.conftest import Tenant, serving_api
from tests.support import free_port, run_cli, run_in_repo, wait_for_final

pytestmark = pytest.mark.usefixtures("api_worker")


def task_body(agent, title: str, **fields) -> dict:
    return {"title": title, "agent_id": str(agent.id), **fields}


def test_a_task_submitted_over_http_completes_and_reads_back_with_its_result(api_url, agent, tenant_a, session_factory):
    # Given a tenant's key
    with httpx.Client(base_url=api_url, headers=tenant_a.headers, timeout=30) as http:
        # When it submits a task with an Idempotency-Key, twice
        body = task_body(agent, "Summarise the week", description="Tickets by product area.")
        first = http.post("/v1/tasks", json=body, headers={"Idempotency-Key": "week-1"})
        again = http.post("/v1/tasks", json=body, headers={"Idempotency-Key": "week-1"})
        # Then one task is stored for the tenant (its user), and the repeat names it
        assert first.status_code == 202, first.text
        task_id = first.json()["id"]
        assert (again.status_code, again.json()["id"]) == (202, task_id)
        assert first.headers["location"] == f"/v1/tasks/{task_id}"
        # And it completes, as the row and the API both say, with its result, usage and steps
        row = wait_for_final(session_factory, [task_id])[task_id]
        assert (row.status, row.user_id) == (TaskStatus.COMPLETED, tenant_a.name)
        shown = http.get(f"/v1/tasks/{task_id}").json()
        assert (shown["status"], shown["result"], shown["user_id"]) == ("completed", row.result, tenant_a.name)
        assert shown["total_tokens"] == row.total_tokens > 0 and shown["idempotency_key"] == "week-1"
        # And the listing and the statistics (all together, and by model) count it
        listed = http.get("/v1/tasks", params={"status": "completed"}).json()
        assert [task["id"] for task in listed["tasks"]] == [task_id]
        for by in ({}, {"by": "model"}):
            stats = http.get("/v1/stats", params=by)
            assert stats.status_code == 200, stats.text
            assert [group["completed"] for group in stats.json()["groups"]] == [1]


def test_a_batch_joins_a_group_of_the_tenant_and_pages_of_the_listing_cover_it_once(api_url, agent, tenant_a):
    with httpx.Client(base_url=api_url, headers=tenant_a.headers, timeout=30) as http:
        items = [task_body(agent, f"Item {at}") for at in range(5)]
        submitted = http.post("/v1/tasks/batch", json={"tasks": items, "group": "week"})
        assert submitted.status_code == 202, submitted.text
        ids = submitted.json()["ids"]
        group = http.get("/v1/groups/week").json()
        assert (group["user_id"], group["tasks"]) == (tenant_a.name, 5)
        # When the tenant's tasks are read two at a time
        seen, cursor = [], None
        while True:
            page = http.get("/v1/tasks", params={"limit": 2, "group": "week", **({"cursor": cursor} if cursor else {})})
            seen += [task["id"] for task in page.json()["tasks"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        # Then every task is listed exactly once, newest first
        assert sorted(seen) == sorted(ids) and len(seen) == 5


def test_bad_input_is_refused_naming_the_field_and_nothing_is_stored(api_url, agent, tenant_a, session_factory):
    with httpx.Client(base_url=api_url, headers=tenant_a.headers, timeout=30) as http:
        refusals = {
            "empty title": http.post("/v1/tasks", json=task_body(agent, "")),
            "unknown agent": http.post("/v1/tasks", json={"title": "x", "agent_id": str(uuid.uuid4())}),
            "a user of its own": http.post("/v1/tasks", json=task_body(agent, "x", user_id="someone-else")),
            "not JSON": http.post("/v1/tasks", content=b"{title"),
            "bad batch item": http.post("/v1/tasks/batch", json={"tasks": [task_body(agent, "ok"), {"title": 5}]}),
            "too large": http.post("/v1/tasks", content=b" " * 2_000_000),
        }
    statuses = {what: (response.status_code, response.headers["content-type"]) for what, response in refusals.items()}
    problem = "application/problem+json"
    assert statuses == {what: (413 if what == "too large" else 422, problem) for what in refusals}
    details = {what: response.json()["detail"] for what, response in refusals.items()}
    assert "title" in details["empty title"] and "agent" in details["unknown agent"]
    assert "user_id" in details["a user of its own"] and "item 1" in details["bad batch item"]
    with session_factory() as session:
        assert session.query(Task).filter(Task.user_id == tenant_a.name).count() == 0


def test_a_tenant_cannot_read_follow_cancel_decide_or_list_another_tenants_task(
    api_url, agent, tenant_a, tenant_b, session_factory
):
    # Given a task of tenant A
    a = httpx.Client(base_url=api_url, headers=tenant_a.headers, timeout=30)
    b = httpx.Client(base_url=api_url, headers=tenant_b.headers, timeout=30)
    task_id = a.post("/v1/tasks", json=task_body(agent, "A's own")).json()["id"]
    a.post("/v1/tasks/batch", json={"tasks": [task_body(agent, "A's grouped")], "group": "a-group"})
    unknown = str(uuid.uuid4())

    # When tenant B names it in every way, and names an id that exists nowhere
    def answers(task: str) -> list[tuple[int, dict]]:
        asked = [
            b.get(f"/v1/tasks/{task}"),
            b.get(f"/v1/tasks/{task}/events"),
            b.post(f"/v1/tasks/{task}/cancel"),
            b.post(f"/v1/tasks/{task}/approve", json={"note": "ok"}),
            b.post(f"/v1/tasks/{task}/reject"),
        ]
        return [
            (response.status_code, {**response.json(), "detail": response.json()["detail"].replace(task, "ID")})
            for response in asked
        ]

    # Then each answer is the 404 of an unknown task, word for word
    assert answers(task_id) == answers(unknown)
    assert {status for status, _ in answers(task_id)} == {404}
    assert b.get("/v1/groups/a-group").status_code == 404
    assert b.get("/v1/tasks").json()["tasks"] == []
    # And A's task was not cancelled by B's attempt
    row = wait_for_final(session_factory, [task_id])[task_id]
    assert row.status is TaskStatus.COMPLETED


def test_no_key_or_a_revoked_key_is_refused_with_401(api_url, settings, tenant_a):
    assert httpx.get(f"{api_url}/v1/tasks").status_code == 401
    assert httpx.get(f"{api_url}/v1/tasks", headers={"Authorization": "Bearer ask_not-a-key"}).status_code == 401
    assert httpx.get(f"{api_url}/v1/tasks", headers=tenant_a.headers).status_code == 200
    revoked = run_cli(settings, "api-keys", "revoke", str(tenant_a.key_id))
    assert revoked.returncode == 0, revoked.stderr
    refused = httpx.get(f"{api_url}/v1/tasks", headers=tenant_a.headers)
    assert (refused.status_code, refused.json()["code"]) == (401, "unauthorized")


def test_the_cli_makes_a_key_that_the_api_takes_and_lists_it_without_the_key(api_url, settings):
    made = run_cli(settings, "api-keys", "create", "--tenant", "cli-tenant", "--name", "ci")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert httpx.get(f"{api_url}/v1/tasks", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    listed = run_cli(settings, "api-keys", "list", "--tenant", "cli-tenant", "--json")
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert records and records[0]["tenant"] == "cli-tenant" and key not in listed.stdout


def test_readiness_says_the_database_and_broker_answer_and_the_containers_probe_agrees(api_url, api_settings):
    assert httpx.get(f"{api_url}/readyz").json() == {"status": "ok"}
    assert httpx.get(f"{api_url}/healthz").json() == {"status": "ok"}
    port = int(api_url.rsplit(":", 1)[1])
    probe = [sys.executable, "-m", "agent_service.health", "api"]
    assert run_in_repo(probe, api_settings.model_copy(update={"api_port": port})).returncode == 0
    assert run_in_repo(probe, api_settings.model_copy(update={"api_port": free_port()})).returncode == 1


def test_a_key_over_its_request_rate_is_answered_429_with_retry_after(api_settings, session_factory):
    from tests.integration.http.conftest import make_tenant

    tenant = make_tenant(session_factory, "rate")
    with serving_api(
        api_settings.model_copy(update={"api_requests_per_minute": 3}), log_name="http-api-rate.log"
    ) as url:
        answers = [httpx.get(f"{url}/v1/tasks", headers=tenant.headers) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 61 and answers[-1].json()["code"] == "rate_limited"


def test_a_follow_token_lets_a_page_follow_one_task_of_its_tenant_without_the_key(
    api_url, agent, tenant_a, tenant_b, settings, session_factory
):
    # Given two ended tasks of tenant A, and a follow token its key minted for the first
    a = httpx.Client(base_url=api_url, headers=tenant_a.headers, timeout=30)
    first, second = a.post(
        "/v1/tasks/batch", json={"tasks": [task_body(agent, "One"), task_body(agent, "Two")]}
    ).json()["ids"]
    wait_for_final(session_factory, [first, second])
    minted = a.post(f"/v1/tasks/{first}/events/token")
    assert minted.status_code == 200, minted.text
    token = minted.json()["token"]
    # When a page with no key follows the first task with it, Then it reads the task's events to its end
    followed = httpx.get(f"{api_url}/v1/tasks/{first}/events", params={"token": token}, timeout=30)
    assert followed.status_code == 200 and followed.headers["content-type"].startswith("text/event-stream")
    assert "event: ended" in followed.text
    # And the token follows no other task, another tenant cannot mint one for A's task, and revoking the key
    # revokes its tokens
    assert httpx.get(f"{api_url}/v1/tasks/{second}/events", params={"token": token}).status_code == 401
    assert httpx.post(f"{api_url}/v1/tasks/{first}/events/token", headers=tenant_b.headers).status_code == 404
    assert httpx.get(f"{api_url}/v1/tasks/{first}", params={"token": token}).status_code == 401
    assert run_cli(settings, "api-keys", "revoke", str(tenant_a.key_id)).returncode == 0
    assert httpx.get(f"{api_url}/v1/tasks/{first}/events", params={"token": token}).status_code == 401


ANSWER = "Packed for Oslo: an umbrella, rain boots and a warm coat, since it will rain all week."


def sse_client(url: str, tenant: Tenant, task_id: str, *last_event_id: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.integration.http.sse_client", url, tenant.key, task_id, *last_event_id]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture
def slow_stream(llm) -> Iterator[None]:
    """The bundled LLM server streams each reply in pieces 400 ms apart."""
    llm.configure(stream_pause_ms=400)
    yield
    llm.configure(stream_pause_ms=0)


@pytest.mark.usefixtures("slow_stream")
def test_a_follower_in_another_process_reads_tokens_before_the_end_and_resumes_without_loss_or_repeat(
    api_url, api_agent, llm, tenant_a, session_factory
):
    # Given an api task that calls a tool taking 2 s, then answers in pieces 400 ms apart
    token = f"sse-{uuid.uuid4().hex[:8]}"
    directive = llm.add_script(token, [calls(("wait", {"ms": 2000})), {"content": ANSWER}])
    body = {"title": f"Trip {token}", "description": directive, "agent_id": str(api_agent.id)}
    task_id = httpx.post(f"{api_url}/v1/tasks", json=body, headers=tenant_a.headers).json()["id"]
    # When a follower in another process reads its events until the first token, then drops the connection
    first = sse_client(api_url, tenant_a, task_id)
    seen: list[dict] = []
    while not any(event["event"] == "token" for event in seen):
        line = first.stdout.readline()
        assert line, "the follower ended before any token"
        seen.append(json.loads(line))
    first.kill()
    seen += [json.loads(line) for line in first.stdout.read().splitlines()]
    first.wait()
    # And resumes with the last event id it read
    second = sse_client(api_url, tenant_a, task_id, seen[-1]["id"])
    resumed = [json.loads(line) for line in second.communicate(timeout=120)[0].splitlines()]
    # Then the task completed, and the first token was read before it ended
    row = wait_for_final(session_factory, [task_id])[task_id]
    assert row.status is TaskStatus.COMPLETED and row.result == ANSWER
    first_token = next(event for event in seen if event["event"] == "token")
    assert first_token["at"] < row.finished_at.timestamp()
    # And the resumed stream is exactly the task's stream after that id: nothing lost, nothing repeated
    stream = [
        decode(entry_id, fields) for entry_id, fields in redis.Redis.from_url(IDLE_REDIS).xrange(stream_key(task_id))
    ]
    after = [(event.id, event.kind.value, event.data) for event in stream if _after(event.id, seen[-1]["id"])]
    assert [(event["id"], event["event"], event["data"]) for event in resumed] == after
    assert resumed[-1]["event"] == "ended" and resumed[-1]["data"] == {"status": "completed", "result": ANSWER}
    # And the tokens of both connections together are the streamed text, once
    tokens = "".join(event["data"]["text"] for event in seen + resumed if event["event"] == "token")
    assert tokens == "".join(event.data["text"] for event in stream if event.kind.value == "token")
    assert tokens == ANSWER


def _after(entry_id: str, last: str) -> bool:
    """Whether stream entry `entry_id` comes after `last` (ids `ms-seq`, compared as numbers)."""
    return tuple(map(int, entry_id.split("-"))) > tuple(map(int, last.split("-")))

"""Live output on real Redis, PostgreSQL and worker processes: a followed task streams its tokens and ends
its stream; a task nobody follows leaves nothing in Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import threading
import uuid

import pytest
import redis

from agent_service.devtools.processes import ROOT
from agent_service.errors import TaskNotFoundError, TaskValidationError
from agent_service.execution.context import RunContext
from agent_service.execution.pipeline import execute_agent_tasks
from agent_service.live.events import EventKind, LiveEvent, decode, follower_key, stream_key
from agent_service.live.follow import Recorded, follow_task
from agent_service.live.publisher import LivePublisher
from agent_service.live.tokens import TokenWriter
from agent_service.llm.client import close_clients, run_request
from agent_service.llm.messages import LLMReply, LLMRequest, Message, ModelOptions, OutputSchema, ToolSpec
from agent_service.llm.runners import BackgroundEventLoop
from agent_service.messaging.publisher import publish_tasks
from agent_service.models import Task, TaskStatus
from agent_service.tasks import create_agent_task, follow_agent_task
from tests.integration.conftest import WORKER_REDIS
from tests.support import run_cli, wait_for_final, wait_until


@pytest.fixture
def shared() -> redis.Redis:
    """The Redis the worker publishes live output to."""
    return redis.Redis.from_url(WORKER_REDIS)


def stored_task(idle_app, agent, title: str) -> str:
    """A queued task that no worker has been sent yet (its message went to the idle broker)."""
    return create_agent_task({"title": title, "agent_id": str(agent.id), "user_id": "u-live"}, app=idle_app)


def send_to_worker(app, task_id: str) -> None:
    publish_tasks(app, [uuid.UUID(task_id)])


class Following:
    """A follower on a thread of its own, collecting the events it reads."""

    def __init__(self, task_id: str, shared: redis.Redis, **options) -> None:
        self.events: list[LiveEvent] = []
        self._thread = threading.Thread(target=self._follow, args=(task_id, shared), kwargs=options, daemon=True)
        self._thread.start()
        wait_until(lambda: shared.exists(follower_key(task_id)), what="follower mark")

    def _follow(self, task_id: str, shared: redis.Redis, **options) -> None:
        self.events.extend(follow_task(task_id, redis=shared, timeout=60, **options))

    def done(self) -> list[LiveEvent]:
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the follower did not end"
        return self.events


@pytest.mark.usefixtures("worker")
def test_a_followed_task_streams_its_tokens_then_ends_with_its_result(app, idle_app, agent, shared, session_factory):
    # Given a task someone follows before any worker has it
    task_id = stored_task(idle_app, agent, f"Stream me {uuid.uuid4().hex[:8]}")
    follower = Following(task_id, shared)
    # When the worker runs it
    send_to_worker(app, task_id)
    events = follower.done()
    # Then the follower saw it start, its reply's text token by token, and its end, with the stored result
    task = wait_for_final(session_factory, [task_id])[task_id]
    assert task.status is TaskStatus.COMPLETED
    kinds = [event.kind for event in events]
    assert kinds[0] is EventKind.STARTED and kinds[-1] is EventKind.ENDED
    assert set(kinds[1:-1]) == {EventKind.TOKEN}
    assert "".join(event.data["text"] for event in events[1:-1]) == task.result
    assert events[-1].data == {"status": "completed", "result": task.result}
    # And the stream expires after the end, bounded by LIVE_STREAM_TTL_SECONDS
    assert 0 < shared.ttl(stream_key(task_id)) <= app.services.settings.live_stream_ttl_seconds


@pytest.mark.usefixtures("worker")
def test_a_task_nobody_follows_leaves_nothing_in_redis(app, agent, shared, session_factory):
    task_id = create_agent_task({"title": "Unwatched", "agent_id": str(agent.id), "user_id": "u-live"}, app=app)
    assert wait_for_final(session_factory, [task_id])[task_id].status is TaskStatus.COMPLETED
    assert shared.exists(stream_key(task_id), follower_key(task_id)) == 0


@pytest.mark.usefixtures("worker")
def test_cli_follow_prints_a_running_tasks_tokens_and_exits_0_when_it_completes(
    app, idle_app, agent, shared, settings, session_factory
):
    task_id = stored_task(idle_app, agent, f"Follow me {uuid.uuid4().hex[:8]}")
    env = {"PATH": "/usr/bin:/bin", **settings.as_env()}
    follow = [sys.executable, "cli.py", "follow", task_id]
    with subprocess.Popen(follow, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as cli:
        wait_until(lambda: shared.exists(follower_key(task_id)), what="follower mark")
        send_to_worker(app, task_id)
        out, err = cli.communicate(timeout=60)
    task = wait_for_final(session_factory, [task_id])[task_id]
    assert cli.returncode == 0, err
    assert out.startswith("[started] ") and out.endswith(f"{task.result}\ncompleted\n")


def test_cli_follow_on_an_ended_task_prints_its_result_and_exit_status(settings, session_factory, agent):
    with session_factory.begin() as session:
        done = Task(title="t", agent_id=agent.id, user_id="u", status=TaskStatus.COMPLETED, result="All done.")
        failed = Task(title="t", agent_id=agent.id, user_id="u", status=TaskStatus.FAILED, error="the model refused")
        session.add_all([done, failed])
    completed = run_cli(settings, "follow", str(done.id))
    assert (completed.returncode, completed.stdout) == (0, "All done.\ncompleted\n")
    refused = run_cli(settings, "follow", str(failed.id))
    assert (refused.returncode, refused.stdout) == (1, "failed: the model refused\n")


def test_cli_follow_refuses_an_unknown_or_invalid_task_id(settings):
    unknown = run_cli(settings, "follow", str(uuid.uuid4()))
    assert unknown.returncode == 2 and "no task" in unknown.stdout
    invalid = run_cli(settings, "follow", "not-a-task")
    assert invalid.returncode == 2 and "invalid task id" in invalid.stdout


def test_the_apps_follower_ends_at_once_for_an_ended_task_and_refuses_an_unknown_one(app, session_factory, agent):
    with session_factory.begin() as session:
        done = Task(title="t", agent_id=agent.id, user_id="u", status=TaskStatus.COMPLETED, result="All done.")
        session.add(done)
    [ended] = follow_agent_task(str(done.id), app=app)  # from the row: it has no steps
    assert (ended.kind, ended.data) == (EventKind.ENDED, {"status": "completed", "result": "All done."})
    with pytest.raises(TaskNotFoundError):
        follow_agent_task(str(uuid.uuid4()), app=app)
    with pytest.raises(TaskValidationError):
        follow_agent_task("not-a-task", app=app)


def test_a_followed_tasks_stream_is_bounded(settings, shared):
    # Given a followed task and a publisher keeping about 10 events
    task_id = uuid.uuid4()
    shared.set(follower_key(task_id), 1, ex=60)
    publisher = LivePublisher(shared, settings=settings.model_copy(update={"live_stream_max_events": 10}))
    # When far more are published
    for at in range(0, 1000, 50):
        publisher.publish_many([publisher_update(task_id, n) for n in range(at, at + 50)])
    # Then the stream holds about the last 10 (Redis trims whole nodes of 100 with MAXLEN ~), the newest kept
    assert 10 <= shared.xlen(stream_key(task_id)) <= 110
    [(_, last)] = shared.xrevrange(stream_key(task_id), count=1)
    assert last[b"data"] == b'{"n":999}'


def publisher_update(task_id, n: int):
    from agent_service.live.publisher import Update

    return Update(task_id, EventKind.STEP, {"n": n})


def test_events_of_a_task_nobody_follows_are_not_written(settings, shared):
    task_id = uuid.uuid4()
    publisher = LivePublisher(shared, settings=settings)
    assert publisher.followed([task_id]) == set()
    assert publisher.publish_many([publisher_update(task_id, 1)]) == 0
    assert shared.exists(stream_key(task_id)) == 0


def test_a_follower_resumes_after_the_last_event_it_saw(settings, shared):
    task_id = uuid.uuid4()
    shared.set(follower_key(task_id), 1, ex=60)
    publisher = LivePublisher(shared, settings=settings)
    publisher.publish_many([publisher_update(task_id, n) for n in range(3)])
    publisher.ended(task_id, TaskStatus.COMPLETED, result="ok")
    first, *_ = follow_task(task_id, redis=shared, timeout=5)
    resumed = list(follow_task(task_id, redis=shared, last_event_id=first.id, timeout=5))
    assert [event.data.get("n") for event in resumed] == [1, 2, None]
    assert resumed[-1].data == {"status": "completed", "result": "ok"}


def test_a_follower_waits_through_a_quiet_spell_longer_than_its_clients_socket_timeout(settings, shared):
    # Given a client that gives up on a reply after 0.5 s (redis-py 8 defaults this to 5 s, as long as a blocking
    # read of the stream waited), and a task whose next event comes 1.2 s after it is followed
    impatient = redis.Redis.from_url(WORKER_REDIS, socket_timeout=0.5)
    task_id = uuid.uuid4()
    publisher = LivePublisher(shared, settings=settings)
    threading.Timer(1.2, publisher.ended, args=(task_id, TaskStatus.COMPLETED), kwargs={"result": "ok"}).start()
    # When it is followed through that client, Then the follower waits for the event and ends with it
    events = list(follow_task(task_id, redis=impatient, timeout=30))
    ended = (EventKind.ENDED, {"status": "completed", "result": "ok"})
    assert [(event.kind, event.data) for event in events] == [ended]


class Ended:
    """The record of a task that ended, with no steps."""

    def recorded(self) -> Recorded:
        return Recorded([], self.ended())

    def ended(self) -> dict:
        return {"status": "completed", "result": "ok"}


def test_following_a_task_that_ended_unfollowed_ends_at_once_with_its_end_from_the_row(shared):
    # No stream (it expired, or nobody followed the task while it ran): the row says it is over
    [fresh] = follow_task(uuid.uuid4(), redis=shared, record=Ended())
    [resumed] = follow_task(uuid.uuid4(), redis=shared, last_event_id="1-0", record=Ended())
    assert fresh.kind is resumed.kind is EventKind.ENDED and fresh.data == resumed.data == Ended().ended()


def test_token_writer_writes_the_first_tokens_at_once_and_the_rest_together_at_the_end(settings, shared):
    key = stream_key(uuid.uuid4())
    slow = settings.model_copy(update={"live_token_flush_ms": 60_000})

    async def stream(first: str, rest: list[str], *, fail: bool = False) -> None:
        client = redis.asyncio.Redis.from_url(WORKER_REDIS)
        written = await client.xlen(key)
        try:
            async with TokenWriter(client, key, settings=slow) as tokens:
                tokens.add(first)
                while await client.xlen(key) == written:  # written without waiting for the interval
                    await asyncio.sleep(0.01)
                for delta in rest:
                    tokens.add(delta)
                if fail:
                    raise RuntimeError("the call failed")
        finally:
            await client.aclose()

    asyncio.run(stream("Hel", ["lo", ", ", "world"]))
    texts = [fields[b"data"] for _, fields in shared.xrange(key)]
    assert texts == [b'{"text":"Hel"}', b'{"text":"lo, world"}']
    with pytest.raises(RuntimeError):
        asyncio.run(stream("Again", ["dropped"], fail=True))
    assert shared.xlen(key) == 3  # a new writer's first delta goes at once; what was left at the failure, never


def test_the_in_process_llm_loop_streams_a_followed_tasks_tokens(settings, shared, rollback_factory, db_session, agent):
    # Given a queued task someone follows, run by the pipeline on the in-process loop (LLM_PROCESS=false)
    task = Task(title="In-process stream", agent_id=agent.id, user_id="u", status=TaskStatus.QUEUED, attempts=0)
    db_session.add(task)
    db_session.flush()
    shared.set(follower_key(task.id), 1, ex=60)
    # Settings of its own: a process shares one client per configuration, bound to the loop it first ran on.
    settings = settings.model_copy(update={"llm_timeout_seconds": 4.4})
    loop = BackgroundEventLoop(settings, run_request)
    try:
        [outcome] = execute_agent_tasks(
            [str(task.id)],
            RunContext(
                session_factory=rollback_factory,
                settings=settings,
                llm=loop,
                live=LivePublisher(shared, settings=settings),
            ),
        )
    finally:
        loop.close()
    # Then its stream has its start and its reply's tokens (its end is published by the task shell)
    events = [decode(entry_id, fields) for entry_id, fields in shared.xrange(stream_key(task.id))]
    assert events[0].kind is EventKind.STARTED
    assert "".join(event.data["text"] for event in events[1:]) == outcome.finished.result


WEATHER = ToolSpec("get_weather", "The weather in a city", json.dumps({"type": "object", "properties": {"city": {}}}))
DECISION = OutputSchema("decision", json.dumps({"type": "object", "properties": {"choice": {"type": "string"}}}))


@pytest.mark.parametrize(
    "asks", [{}, {"tools": (WEATHER,)}, {"output_schema": DECISION}], ids=["text", "tools", "json"]
)
def test_a_streamed_call_replies_as_the_plain_call_does_and_streams_its_text(settings, shared, asks):
    # Given the same request, plain and streamed (its task followed)
    key = stream_key(uuid.uuid4())
    messages = (Message("system", "Be brief."), Message("user", "Weather in Paris?"))
    plain = LLMRequest("gpt-4o-mini", 0.0, 50, ModelOptions(), messages, **asks)

    settings = settings.model_copy(update={"llm_timeout_seconds": 4.3})  # clients of its own, closed at the end

    async def both():
        try:
            streamed = dataclasses.replace(plain, stream_key=key)
            return [uncached(await run_request(request, settings=settings)) for request in (plain, streamed)]
        finally:
            await close_clients()

    # When both are run through the real client against the bundled server
    replied, streamed = asyncio.run(both())
    # Then the streamed reply (chunks added up) is the plain one: text, tool calls, usage, finish reason
    assert streamed == replied and streamed.usage.completion_tokens > 0
    texts = [json.loads(fields[b"data"])["text"] for _, fields in shared.xrange(key)]
    assert "".join(texts) == streamed.text


def uncached(reply: LLMReply) -> LLMReply:
    """The reply without its cached-token count, which the bundled server's prompt cache makes differ."""
    return dataclasses.replace(reply, usage=dataclasses.replace(reply.usage, cached_tokens=0))

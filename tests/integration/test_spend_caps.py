"""Spend caps on real Redis, PostgreSQL, worker processes and the bundled LLM server: two workers never
spend past a user's daily cap and use it up to within one call's estimate, a held task waits with its reason
and a hard cap fails it before any call (once no call in flight can make room), a per-user override applies,
and a reservation left by a SIGKILLed process expires."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
import redis
from sqlalchemy import func, select

from agent_service.admission import build_admission
from agent_service.admission.base import CallEnded, Candidate, Verdict
from agent_service.admission.spend_caps import KEY_PREFIX
from agent_service.database import session_scope
from agent_service.devtools.processes import ROOT, start_worker, stop_process
from agent_service.execution.context import RunContext
from agent_service.execution.outcomes import Outcome
from agent_service.execution.pipeline import execute_agent_task
from agent_service.kinds.base import TaskWork
from agent_service.kinds.text import TextKind
from agent_service.llm.messages import LLMReply, Usage
from agent_service.llm.prices import PriceBook
from agent_service.models import Agent, LimitScope, Task, TaskStatus
from agent_service.store.agents import agent_spec
from agent_service.store.overrides import set_override
from agent_service.tasks import create_agent_tasks
from tests.integration.conftest import IDLE_REDIS, LOG_DIR
from tests.support import LLMControl, run_cli, wait_until

CAP = 0.0002  # USD: a few tasks of gpt-4o-mini at max_tokens 50 (each estimated at about $0.00004)


@pytest.fixture
def cap_redis(idle_app) -> redis.Redis:
    """The Redis of these tests' own workers (the idle database: the shared test worker never reads it)."""
    client = redis.Redis.from_url(IDLE_REDIS)
    client.flushdb()
    return client


def capped(settings, **caps):
    values = dict(redis_url=IDLE_REDIS, spend_cap_recheck_seconds=1.0, spend_hold_seconds=6.0, **caps)
    return settings.model_copy(update=values)


def new_agent(session_factory, *, max_tokens: int = 50) -> Agent:
    with session_scope(session_factory) as session:
        agent = Agent(
            name=f"capped-{uuid.uuid4().hex[:8]}",
            prompt="You are careful.",
            model="gpt-4o-mini",
            temperature=0.0,
            max_tokens=max_tokens,
        )
        session.add(agent)
    return agent


def new_task(session_factory, agent: Agent, user: str) -> uuid.UUID:
    with session_scope(session_factory) as session:
        task = Task(title="Capped", description="Summarise the report.", agent_id=agent.id, user_id=user)
        session.add(task)
        session.flush()
        return task.id


def test_two_workers_never_spend_past_a_users_daily_cap(settings, idle_app, cap_redis, session_factory):
    # Given two workers sharing a user's daily cap of $0.0002, giving held tasks back to the queue at once (so
    # that the tasks the cap holds end up queued, saying why; held in the batch, they would show as running)
    user, agent = f"u-cap-{uuid.uuid4().hex[:6]}", new_agent(session_factory)
    env = capped(settings, user_daily_spend_cap_usd=CAP, admission_hold_seconds=0).as_env()
    workers = [
        start_worker(env=env, log_path=LOG_DIR / f"cap-worker-{n}.log", name=f"cap{n}", concurrency=8) for n in (1, 2)
    ]
    try:
        # When the user submits far more work than the cap pays for
        items = [{"title": f"t{n}", "agent_id": str(agent.id), "user_id": user} for n in range(40)]
        ids = [uuid.UUID(task_id) for task_id in create_agent_tasks(items, app=idle_app)]

        def settled() -> bool:
            with session_scope(session_factory) as session:
                waiting = session.scalar(select(func.count()).where(Task.id.in_(ids), Task.waiting_reason.is_not(None)))
                running = session.scalar(
                    select(func.count()).where(Task.id.in_(ids), Task.status == TaskStatus.RUNNING)
                )
            return bool(waiting) and not running

        wait_until(settled, what="tasks held by the cap", timeout=60)
        time.sleep(2)  # a few re-checks: only what the reservations gave back may still run
    finally:
        for worker in workers:
            stop_process(worker)
    with session_scope(session_factory) as session:
        tasks = session.scalars(select(Task).where(Task.id.in_(ids))).all()
        session.expunge_all()
    # Then what was spent stays within the cap, and the rest waits saying why
    completed = [task for task in tasks if task.status is TaskStatus.COMPLETED]
    held = [task for task in tasks if task.status is TaskStatus.QUEUED and task.waiting_reason]
    spent = sum(task.cost_usd or 0.0 for task in tasks)
    assert len(completed) >= 3 and held, (len(completed), len(held))
    assert spent <= CAP
    assert all(task.waiting_reason.startswith(f"user {user} daily cap $0.0002: $0.000") for task in held)
    booked = float(cap_redis.get(f"{KEY_PREFIX}:user:{user}:{time.strftime('%Y-%m-%d', time.gmtime())}:spent"))
    assert booked == pytest.approx(spent, rel=1e-6)


def held_and_spent(session_factory, ids: list[uuid.UUID]) -> tuple[list[Task], list[Task], float]:
    """The completed tasks, those held (queued with a waiting reason) and what all of them cost."""
    with session_scope(session_factory) as session:
        tasks = session.scalars(select(Task).where(Task.id.in_(ids))).all()
        session.expunge_all()
    completed = [task for task in tasks if task.status is TaskStatus.COMPLETED]
    held = [task for task in tasks if task.status is TaskStatus.QUEUED and task.waiting_reason]
    return completed, held, sum(task.cost_usd or 0.0 for task in tasks)


def test_a_cap_is_used_up_to_within_one_calls_estimate_when_replies_use_half_their_max_tokens(
    settings, idle_app, cap_redis, session_factory, llm: LLMControl
):
    # Given replies that take 3 s and use half of max_tokens (20 words of 40), and a user's daily cap worth
    # 30 calls' highest possible cost, shared by two workers with the default re-check of a held task (300 s)
    user, agent = f"u-fill-{uuid.uuid4().hex[:6]}", new_agent(session_factory, max_tokens=40)
    llm.configure(latency_ms=3000)
    directive = llm.add_script(f"half-{user}", [{"content": " ".join(["word"] * 20)}])
    with session_scope(session_factory) as session:
        spec, _ = agent_spec(session.get(Agent, agent.id))
    estimate = PriceBook(settings).estimate(TextKind().build_request(TaskWork(spec, "t000", directive)))
    cap = round(30 * estimate, 6)
    env = settings.model_copy(update={"redis_url": IDLE_REDIS, "user_daily_spend_cap_usd": cap}).as_env()
    workers = [
        start_worker(env=env, log_path=LOG_DIR / f"fill-worker-{n}.log", name=f"fill{n}", concurrency=8) for n in (1, 2)
    ]
    try:
        # When the user submits more work than the cap pays for
        items = [
            {"title": f"t{n:03d}", "description": directive, "agent_id": str(agent.id), "user_id": user}
            for n in range(90)
        ]
        ids = [uuid.UUID(task_id) for task_id in create_agent_tasks(items, app=idle_app)]

        def full() -> bool:
            completed, held, _ = held_and_spent(session_factory, ids)
            return len(completed) + len(held) == len(ids) and all(
                "(held; checked" in task.waiting_reason for task in held
            )

        # Then the tasks that fit complete promptly (well before a held task's 300 s re-check) ...
        wait_until(full, what="cap full with every other task held", timeout=90)
        completed, held, spent = held_and_spent(session_factory, ids)
        time.sleep(3)
        # ... and once the cap is full, the held tasks are left alone (not claimed again) until the long re-check
        later = held_and_spent(session_factory, ids)[1]
        assert {(task.id, task.updated_at) for task in later} == {(task.id, task.updated_at) for task in held}
    finally:
        llm.configure(latency_ms=20)
        for worker in workers:
            stop_process(worker)
    # ... the cap is used to within one call's estimate and never passed, and the rest wait saying why
    assert 0.95 * cap <= spent <= cap, (spent, cap, len(completed))
    assert cap - spent < estimate
    assert held and len(completed) + len(held) == len(ids)
    assert all(task.waiting_reason.startswith(f"user {user} daily cap ${cap:f}".rstrip("0") + ": $") for task in held)
    booked = float(cap_redis.get(f"{KEY_PREFIX}:user:{user}:{time.strftime('%Y-%m-%d', time.gmtime())}:spent"))
    assert booked == pytest.approx(spent, rel=1e-6)


def test_a_held_task_waits_with_its_reason_shown_by_cli_status(
    settings, session_factory, runner, cap_redis, llm: LLMControl
):
    # Given a user whose own cap (an override of an unset default) is below one call's estimate
    user, agent = f"u-hold-{uuid.uuid4().hex[:6]}", new_agent(session_factory)
    with session_scope(session_factory) as session:
        set_override(session, LimitScope.USER, user, "daily_spend_cap_usd", "0.00001")
    # (given back at once rather than held in the worker for ADMISSION_HOLD_SECONDS first)
    on = capped(settings, spend_caps=True, admission_hold_seconds=0)
    admission = build_admission(on, redis=lambda: cap_redis, session_factory=session_factory)
    task_id = new_task(session_factory, agent, user)
    before = len(llm.requests(""))
    # When it runs
    outcome = execute_agent_task(
        task_id, RunContext(session_factory=session_factory, settings=on, llm=runner, admission=admission)
    )
    # Then it is deferred before any call, keeps its attempt, and cli status says why it waits
    assert outcome.status is Outcome.DEFERRED and outcome.retry_in <= 1.0
    with session_scope(session_factory) as session:
        task = session.get(Task, task_id)
        assert (task.status, task.attempts) == (TaskStatus.QUEUED, 0)
    assert len(llm.requests("")) == before
    shown = run_cli(on, "status", str(task_id))
    assert shown.stdout.splitlines()[0].startswith(f"waiting: user {user} daily cap $0.00001: ")


def test_a_hard_cap_fails_the_task_before_any_call(settings, session_factory, runner, cap_redis, llm: LLMControl):
    agent = new_agent(session_factory)
    user = f"u-hard-{uuid.uuid4().hex[:6]}"
    hard = capped(settings, agent_monthly_spend_cap_usd=0.00001, spend_cap_mode="hard")
    admission = build_admission(hard, redis=lambda: cap_redis, session_factory=session_factory)
    task_id = new_task(session_factory, agent, user)
    before = len(llm.requests(""))
    outcome = execute_agent_task(
        task_id, RunContext(session_factory=session_factory, settings=hard, llm=runner, admission=admission)
    )
    with session_scope(session_factory) as session:
        task = session.get(Task, task_id)
        assert task.status is TaskStatus.FAILED
        assert task.error.startswith(f"refused: agent {agent.id} monthly cap $0.00001: ")
    assert outcome.status is Outcome.FAILED and len(llm.requests("")) == before


def test_a_hard_cap_holds_a_task_that_fits_once_calls_in_flight_settle_and_fails_it_once_spending_fills_it(
    settings, session_factory, cap_redis
):
    # Given a hard user cap worth one and a half calls' highest possible cost
    agent, user = new_agent(session_factory), f"u-settle-{uuid.uuid4().hex[:6]}"
    with session_scope(session_factory) as session:
        spec, _ = agent_spec(session.get(Agent, agent.id))
    request = TextKind().build_request(TaskWork(spec, "Capped", "Summarise the report."))
    estimate = PriceBook(settings).estimate(request)
    hard = capped(settings, user_daily_spend_cap_usd=round(1.5 * estimate, 8), spend_cap_mode="hard")
    admission = build_admission(hard, redis=lambda: cap_redis, session_factory=session_factory)
    first, second = (Candidate(uuid.uuid4(), user, 1, spec, request) for _ in range(2))
    # When two calls ask at once, the second is held while the first is in flight: it may still fit
    run, held = admission.admit([first, second])
    assert (run.verdict, held.verdict) == (Verdict.RUN, Verdict.DEFER)
    assert "held while calls in flight settle" in held.reason
    # And once the first used all of its max_tokens, nothing in flight can make room: the second fails
    prompt = request.estimated_prompt_tokens()
    spent_all = Usage(prompt, request.max_tokens, prompt + request.max_tokens)
    admission.release([CallEnded(first, reply=LLMReply("long", spent_all))])
    [refused] = admission.admit([second])
    assert refused.verdict is Verdict.REFUSE and refused.reason.startswith(f"user {user} daily cap $")


def test_a_reservation_left_by_a_killed_process_expires(settings, session_factory, cap_redis):
    # Given a process that reserved a call's estimate against a cap and was SIGKILLed before settling it
    agent, user = new_agent(session_factory), f"u-kill-{uuid.uuid4().hex[:6]}"
    on = capped(settings, user_daily_spend_cap_usd=0.00005)
    reserve_and_die = f"""
import os, signal, uuid, redis
from agent_service.admission import build_admission
from agent_service.admission.base import Candidate
from agent_service.config import Settings
from agent_service.database import make_engine, make_session_factory
from agent_service.kinds.base import TaskWork
from agent_service.kinds.text import TextKind
from agent_service.llm.messages import LLMReply, Usage
from agent_service.llm.prices import PriceBook
from agent_service.models import Agent
settings = Settings()
factory = make_session_factory(make_engine(settings))
with factory() as session:
    from agent_service.store.agents import agent_spec
    spec, _ = agent_spec(session.get(Agent, uuid.UUID("{agent.id}")))
request = TextKind().build_request(TaskWork(spec, "Capped", "Summarise the report."))
admission = build_admission(settings, redis=lambda: redis.Redis.from_url(settings.redis_url), session_factory=factory)
decision, = admission.admit([Candidate(uuid.uuid4(), "{user}", 1, spec, request)])
assert decision.verdict.value == "run", decision
os.kill(os.getpid(), signal.SIGKILL)
"""
    died = subprocess.run([sys.executable, "-c", reserve_and_die], cwd=ROOT, env={**on.as_env()}, capture_output=True)
    assert died.returncode == -9, died.stderr.decode()[-2000:]
    # When another worker asks right away, the orphan reservation leaves no room; once it expires, there is
    admission = build_admission(on, redis=lambda: cap_redis, session_factory=session_factory)
    with session_scope(session_factory) as session:
        spec, _ = agent_spec(session.get(Agent, agent.id))
    request = TextKind().build_request(TaskWork(spec, "Capped", "Summarise the report."))

    def ask() -> Verdict:
        [decision] = admission.admit([Candidate(uuid.uuid4(), user, 1, spec, request)])
        return decision.verdict

    assert ask() is Verdict.DEFER
    started = time.monotonic()
    wait_until(lambda: ask() is Verdict.RUN, what="reservation expiry", timeout=20)
    assert 3 < time.monotonic() - started < 15  # SPEND_HOLD_SECONDS is 6

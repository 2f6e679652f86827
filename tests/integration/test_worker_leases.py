"""Liveness leases on real PostgreSQL: a running task whose owner's lease expired is taken back by the sweeper
and taken over by its next claim; one whose owner holds its lease is not; the owner that lost it cannot complete
it; a `LeaseKeeper` renews from its own thread while the caller is busy; and on real Redis, the messages
delivered before a lost owner's lease expired and never acknowledged are handed back to their queue."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import pytest
from kombu import Queue
from sqlalchemy import delete, select

from agent_service.clock import utcnow
from agent_service.database import make_lease_engine, make_session_factory, session_scope
from agent_service.execution.liveness import LeaseKeeper
from agent_service.execution.maintenance import requeue_tasks_of_lost_workers, restore_messages_of_lost_workers
from agent_service.messaging.publisher import publish_tasks
from agent_service.messaging.routing import AGENT_QUEUE
from agent_service.messaging.unacked import restore_delivered_before
from agent_service.models import Agent, Task, TaskAttempt, TaskStatus, WorkerLease
from agent_service.store import leases, lifecycle
from agent_service.store.lifecycle import Claim, Skip
from tests.support import add_agent

OWNER, RESCUER, SWEEPER = "host-a/1/100", "host-b/1/200", "host-b/1/300"


@pytest.fixture
def running_task(db_session) -> Task:
    """A task attempt 1 of which OWNER claimed just now."""
    agent = Agent(name=f"a-{uuid.uuid4().hex[:6]}", prompt="p", model="gpt-4o-mini", temperature=0.0, max_tokens=50)
    db_session.add(agent)
    db_session.flush()
    task = Task(id=uuid.uuid4(), title="t", agent_id=agent.id, user_id="u1", status=TaskStatus.QUEUED, attempts=0)
    db_session.add(task)
    db_session.flush()
    return task


def claim(db_session, task: Task, settings, *, owner: str) -> Claim | Skip:
    [claimed] = lifecycle.claim_tasks(db_session, [task.id], settings=settings, now=utcnow(), owner=owner)
    return claimed


def hold_lease(db_session, owner: str, *, expires_in: float) -> None:
    """Give `owner` a lease that expires `expires_in` seconds from the database's now (negative: expired)."""
    now = leases.database_now(db_session)
    leases.renew(db_session, owner, seconds=1)
    lease = db_session.get(WorkerLease, owner, populate_existing=True)
    lease.expires_at = now + timedelta(seconds=expires_in)
    db_session.flush()


def reload(db_session, task: Task) -> Task:
    return db_session.get(Task, task.id, populate_existing=True)


def test_task_of_an_owner_whose_lease_expired_is_taken_over_by_its_next_claim(db_session, running_task, settings):
    # Given attempt 1 claimed by OWNER, whose lease then expired (well before the stale threshold)
    first = claim(db_session, running_task, settings, owner=OWNER)
    hold_lease(db_session, OWNER, expires_in=-1)
    # When the task's message is delivered to another worker
    second = claim(db_session, running_task, settings, owner=RESCUER)
    # Then it runs attempt 2, and attempt 1 is in the history as lost
    assert isinstance(second, Claim) and second.attempt == 2
    assert reload(db_session, running_task).claimed_by == RESCUER
    lost = db_session.scalars(select(TaskAttempt).where(TaskAttempt.task_id == running_task.id)).all()
    assert [(a.attempt, a.outcome) for a in lost] == [(1, "lost")]
    # And the owner, waking late, cannot complete it: its result is discarded
    assert lifecycle.record_success(db_session, first, result="late", model="m", now=utcnow()) is False
    assert lifecycle.record_success(db_session, second, result="on time", model="m", now=utcnow()) is True
    assert reload(db_session, running_task).result == "on time"


def test_task_of_an_owner_holding_its_lease_is_not_taken_over(db_session, running_task, settings):
    claim(db_session, running_task, settings, owner=OWNER)
    hold_lease(db_session, OWNER, expires_in=20)
    second = claim(db_session, running_task, settings, owner=RESCUER)
    assert isinstance(second, Skip) and "running elsewhere" in second.reason
    assert (reload(db_session, running_task).claimed_by, reload(db_session, running_task).attempts) == (OWNER, 1)


def test_owner_that_never_held_a_lease_keeps_its_task_until_the_stale_threshold(db_session, running_task, settings):
    # Given a worker of a release before leases: it holds no lease at all
    claim(db_session, running_task, settings, owner=OWNER)
    # Then its task is not taken over (the stale threshold applies to it), nor taken back by the sweeper
    assert isinstance(claim(db_session, running_task, settings, owner=RESCUER), Skip)
    hold_lease(db_session, SWEEPER, expires_in=20)
    assert running_task.id not in leases.take_back_tasks_of_lost_owners(db_session, judge=SWEEPER, limit=1000)


def test_sweeper_takes_back_the_tasks_of_an_expired_owner_which_then_cannot_record_them(
    db_session, running_task, settings
):
    # Given a running task whose owner's lease expired, and a sweeper holding its own
    lost = claim(db_session, running_task, settings, owner=OWNER)
    hold_lease(db_session, OWNER, expires_in=-1)
    hold_lease(db_session, SWEEPER, expires_in=20)
    # When it sweeps, Then the task is queued again, with no owner, its attempt kept as lost
    assert leases.take_back_tasks_of_lost_owners(db_session, judge=SWEEPER, limit=1000) == [running_task.id]
    row = reload(db_session, running_task)
    assert (row.status, row.claimed_by, row.attempts) == (TaskStatus.QUEUED, None, 1)
    history = db_session.scalars(select(TaskAttempt).where(TaskAttempt.task_id == running_task.id)).all()
    assert [(a.attempt, a.outcome) for a in history] == [(1, "lost")]
    # And the owner, waking late, cannot record it; the next claim runs attempt 2
    assert lifecycle.record_success(db_session, lost, result="late", model="m", now=utcnow()) is False
    assert claim(db_session, running_task, settings, owner=RESCUER).attempt == 2
    # And the next sweep finds nothing more to take back
    assert running_task.id not in leases.take_back_tasks_of_lost_owners(db_session, judge=SWEEPER, limit=1000)


def test_sweeper_whose_own_lease_expired_judges_no_one(db_session, running_task, settings):
    # Given an expired owner, and a sweeper whose own lease expired too (the database was out of reach for all)
    claim(db_session, running_task, settings, owner=OWNER)
    hold_lease(db_session, OWNER, expires_in=-1)
    hold_lease(db_session, SWEEPER, expires_in=-1)
    # Then nobody's tasks are taken back this time
    assert leases.take_back_tasks_of_lost_owners(db_session, judge=SWEEPER, limit=1000) == []
    assert reload(db_session, running_task).status == TaskStatus.RUNNING


def test_leases_expired_past_the_stale_threshold_are_forgotten(db_session, settings):
    hold_lease(db_session, OWNER, expires_in=-7300)
    hold_lease(db_session, RESCUER, expires_in=-10)
    leases.forget_expired(db_session, older_than=timedelta(seconds=7200))
    kept = set(db_session.scalars(select(WorkerLease.owner).where(WorkerLease.owner.in_((OWNER, RESCUER)))))
    assert kept == {RESCUER}


def test_lease_keeper_renews_from_its_own_thread_while_the_caller_is_busy_and_ends_the_lease_on_stop(settings):
    # Given a keeper of a 0.9 s lease (renewed every 0.3 s), on its own connections
    engine = make_lease_engine(settings)
    sessions = make_session_factory(engine)
    keeper = LeaseKeeper(sessions, seconds=0.9, owner=f"test/{uuid.uuid4().hex}")
    keeper.start()
    try:
        first = _lease(sessions, keeper.owner)
        # When the caller's thread is busy for 2 s (pure Python: it holds the GIL whenever it can)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            sum(range(10_000))
        # Then the lease was renewed meanwhile and is held now
        renewed = _lease(sessions, keeper.owner)
        assert renewed.renewed_at > first.renewed_at
        with session_scope(sessions) as session:
            assert not leases.has_expired(session, keeper.owner)
    finally:
        keeper.stop()
    # And once stopped, the lease is over: its tasks are anyone's at the next sweep
    with session_scope(sessions) as session:
        assert leases.has_expired(session, keeper.owner)
        session.delete(session.get(WorkerLease, keeper.owner))
    engine.dispose()


def _lease(sessions, owner: str) -> WorkerLease:
    with session_scope(sessions) as session:
        return session.get(WorkerLease, owner)


def test_sweep_publishes_a_message_for_each_task_it_takes_back(idle_app, idle_redis):
    # Given a committed task running under an owner whose lease expired
    sessions = idle_app.services.session_factory
    agent = add_agent(sessions)
    owner = f"host-c/1/{uuid.uuid4().int % 100_000}"
    with session_scope(sessions) as session:
        task = Task(title="t", agent_id=agent.id, user_id="u1", status=TaskStatus.RUNNING, attempts=1)
        task.claimed_by, task.claimed_at = owner, utcnow()
        session.add(task)
        session.flush()
        hold_lease(session, owner, expires_in=-1)
    # When the sweep runs (this process holds no lease: it judges)
    taken = requeue_tasks_of_lost_workers(app=idle_app, session_factory=sessions, settings=idle_app.services.settings)
    # Then the task is queued again with a message of its own on the broker
    assert taken >= 1
    bodies = [json.loads(message)["headers"]["id"] for message in idle_redis.lrange("agent_tasks", 0, -1)]
    assert str(task.id) in bodies
    with session_scope(sessions) as session:
        assert session.get(Task, task.id).status == TaskStatus.QUEUED


def lapse_lease(db_session, owner: str, *, seconds_ago: float, lease: float = 30) -> WorkerLease:
    """Give `owner` a `lease`-second lease it left to lapse `seconds_ago` seconds before the database's now (as a
    lost owner does, unlike one that released it); returns it."""
    now = leases.database_now(db_session)
    leases.renew(db_session, owner, seconds=lease)
    lease_row = db_session.get(WorkerLease, owner, populate_existing=True)
    lease_row.expires_at = now - timedelta(seconds=seconds_ago)
    lease_row.renewed_at = lease_row.expires_at - timedelta(seconds=lease)
    db_session.flush()
    return lease_row


def test_last_loss_is_when_the_latest_lease_left_to_lapse_expired_a_released_or_live_one_does_not_count(db_session):
    # Given only these leases: OWNER lost 5 s ago, another lost 20 s ago, RESCUER released just now, SWEEPER live
    db_session.execute(delete(WorkerLease))
    lost = lapse_lease(db_session, OWNER, seconds_ago=5)
    lapse_lease(db_session, "host-a/1/101", seconds_ago=20)
    hold_lease(db_session, SWEEPER, expires_in=20)
    assert leases.last_loss(db_session, judge=SWEEPER) == lost.expires_at
    leases.renew(db_session, RESCUER, seconds=30)
    leases.release(db_session, RESCUER)
    # Then the last loss is OWNER's: a worker that stopped handed its messages back itself
    assert leases.last_loss(db_session, judge=SWEEPER) == lost.expires_at
    # And a sweeper whose own lease expired judges no one
    hold_lease(db_session, SWEEPER, expires_in=-1)
    assert leases.last_loss(db_session, judge=SWEEPER) is None
    # And with no lost lease there is nothing to hand back
    db_session.execute(delete(WorkerLease).where(WorkerLease.owner != RESCUER))
    assert leases.last_loss(db_session, judge=SWEEPER) is None


def take_unacknowledged(app, count: int) -> list[str]:
    """Receive `count` agent-task messages as a worker does, never acknowledging them (the Redis transport keeps
    them in its unacked hash, indexed by delivery time); their task ids."""
    with app.connection_for_read() as connection:
        # A channel that closes hands back what it received; a SIGKILLed worker's never closes.
        connection.default_channel.qos.restore_at_shutdown = False
        queue = Queue(AGENT_QUEUE).bind(connection.default_channel)
        queue.declare()
        messages = [queue.get(no_ack=False) for _ in range(count)]
    return [message.headers["id"] for message in messages]


def queued_ids(client) -> list[str]:
    return [json.loads(message)["headers"]["id"] for message in client.lrange(AGENT_QUEUE, 0, -1)]


def test_messages_delivered_before_the_moment_are_handed_back_and_later_ones_stay_unacknowledged(idle_app, idle_redis):
    # Given five messages, two received (never acknowledged) before a moment and two after it, one still waiting
    task_ids = [uuid.uuid4() for _ in range(5)]
    publish_tasks(idle_app, task_ids)
    before = take_unacknowledged(idle_app, 2)
    time.sleep(0.01)  # kombu scores a delivery with time.time(): the moment falls strictly between
    moment = time.time()
    time.sleep(0.01)
    after = take_unacknowledged(idle_app, 2)
    # When the messages delivered before that moment are handed back
    assert restore_delivered_before(idle_app, moment=moment, limit=100) == 2
    # Then they wait in their queue again, to be taken first, and only the later ones are still unacknowledged
    waiting = queued_ids(idle_redis)
    assert sorted(waiting[-2:]) == sorted(before) and str(task_ids[4]) in waiting
    assert sorted(json.loads(raw)[0]["headers"]["id"] for raw in idle_redis.hvals("unacked")) == sorted(after)
    # And handing back again finds nothing more
    assert restore_delivered_before(idle_app, moment=moment, limit=100) == 0


def test_sweep_hands_back_the_messages_received_before_a_lost_owners_lease_expired(idle_app, idle_redis):
    # Given a message a worker received and never claimed, then its lease lapsed, and one received after that
    sessions = idle_app.services.session_factory
    publish_tasks(idle_app, [uuid.uuid4(), uuid.uuid4()])
    [received] = take_unacknowledged(idle_app, 1)
    owner = f"host-d/1/{uuid.uuid4().int % 100_000}"
    time.sleep(0.01)
    with session_scope(sessions) as session:
        lapse_lease(session, owner, seconds_ago=0)
    time.sleep(0.01)
    [later] = take_unacknowledged(idle_app, 1)
    try:
        # When the sweep runs (this process holds no lease: it judges)
        settings = idle_app.services.settings
        handed_back = restore_messages_of_lost_workers(app=idle_app, session_factory=sessions, settings=settings)
    finally:
        with session_scope(sessions) as session:
            session.execute(delete(WorkerLease).where(WorkerLease.owner == owner))
    # Then the lost worker's message waits in its queue again, and the later one is left to its worker
    assert handed_back == 1
    assert queued_ids(idle_redis) == [received]
    assert [json.loads(raw)[0]["headers"]["id"] for raw in idle_redis.hvals("unacked")] == [later]

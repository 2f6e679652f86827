"""A worker's claim on a task and how its attempt settles, in the database: plain functions on a caller-owned
Session, no commits. What callers and the sweeper do to tasks outside a claim is `store.tasks`.

Every transition is a conditional UPDATE (compare-and-set), so two workers holding the same
message can never both run a task, and a run that lost its claim can never complete it.
"""

from __future__ import annotations

import json
import uuid
from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, Row, Text, Update, bindparam, case, func, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from agent_service.clock import aware
from agent_service.config import Settings
from agent_service.llm.messages import Usage
from agent_service.models import FINAL_STATUSES, Task, TaskAttempt, TaskStatus, table_of
from agent_service.store import leases
from agent_service.store.agents import AGENTS, AgentSpec, agent_spec, agents_by_id

# A waiting task is claimable too: a message sent for it by a dispatch round that died before its commit
# may as well run it.
CLAIMABLE = (TaskStatus.WAITING, TaskStatus.PENDING, TaskStatus.QUEUED)
# Whether the process that claimed a task (its `claimed_by`) is known to be gone.
OwnerCheck = Callable[[str | None], bool]

# The per-task statements are built once: constructing a statement costs more CPU than running it.
_TASKS, _AGENTS = table_of(Task), AGENTS
_NOW: BindParameter[datetime] = bindparam("p_now")
_CLAIMED_COLUMNS = (
    _TASKS.c.id,
    _TASKS.c.attempts,
    _TASKS.c.title,
    _TASKS.c.description,
    _TASKS.c.agent_id,
    _TASKS.c.user_id,
    _TASKS.c.started_at,
    _TASKS.c.kind,
    _TASKS.c.payload,
    _TASKS.c.group_id,
)
_TAKE_VALUES = dict(
    status=TaskStatus.RUNNING,
    attempts=_TASKS.c.attempts + 1,
    claimed_at=_NOW,
    waiting_reason=None,
    claimed_by=bindparam("p_owner"),
    updated_at=_NOW,
    started_at=func.coalesce(_TASKS.c.started_at, _NOW),
)
_THIS_TASK = _TASKS.c.id == bindparam("p_id")
_TAKE_QUEUED = (
    update(_TASKS)
    .where(_TASKS.c.id.in_(bindparam("p_ids", expanding=True)), _TASKS.c.status.in_(CLAIMABLE))
    .values(**_TAKE_VALUES)
    .returning(*_CLAIMED_COLUMNS)
)
_OWNED = (_THIS_TASK, _TASKS.c.status == TaskStatus.RUNNING, _TASKS.c.attempts == bindparam("p_attempt"))
_TAKE_ABANDONED = update(_TASKS).where(*_OWNED).values(**_TAKE_VALUES).returning(*_CLAIMED_COLUMNS)
# On PostgreSQL the claim reads its tasks' agents in the same statement (a data-modifying CTE, which SQLite
# has not): the task's columns first, then the agent's.
_TAKEN = _TAKE_QUEUED.cte("taken")
_TAKE_QUEUED_WITH_AGENTS = select(_TAKEN, _AGENTS).join_from(_TAKEN, _AGENTS, _AGENTS.c.id == _TAKEN.c.agent_id)
_TakenRow = namedtuple("_TakenRow", [column.name for column in _CLAIMED_COLUMNS])  # type: ignore[misc]
_AgentRow = namedtuple("_AgentRow", [column.name for column in _AGENTS.c])  # type: ignore[misc]
_FINISHED = dict(finished_at=_NOW, updated_at=_NOW, duration_ms=bindparam("p_duration"))


def _charged(figures: dict[str, Any]) -> dict[str, Any]:
    """The task's sums with one call's `figures` (an expression for each summed column, and `unpriced_calls`:
    1 for a call of unknown price) added; a figure that is NULL (the call reported nothing) leaves its sum."""

    def plus(column: Any) -> Any:
        figure = figures[column.name]
        return case((figure.is_(None), column), else_=func.coalesce(column, 0) + figure)

    unpriced_so_far = _TASKS.c.unpriced_calls + figures["unpriced_calls"]
    return dict(
        prompt_tokens=plus(_TASKS.c.prompt_tokens),
        completion_tokens=plus(_TASKS.c.completion_tokens),
        total_tokens=plus(_TASKS.c.total_tokens),
        cached_tokens=plus(_TASKS.c.cached_tokens),
        unpriced_calls=unpriced_so_far,
        # A task with any call of unknown price has no known cost: NULL, never an understated sum.
        cost_usd=case((unpriced_so_far > 0, None), else_=plus(_TASKS.c.cost_usd)),
    )


_SUMMED = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "cost_usd")


def _figure_name(summed: str) -> str:
    """The parameter that carries one call's figure for the task's `summed` column (`Charge.params`)."""
    return f"p_{summed.removesuffix('_usd')}"


# Every settled attempt adds what its call cost to the task's sums (nothing when no provider answered).
_CHARGED = _charged(
    {name: bindparam(_figure_name(name), type_=_TASKS.c[name].type) for name in _SUMMED}
    | {"unpriced_calls": bindparam("p_unpriced")}
)
_COMPLETE = (
    update(_TASKS)
    .where(*_OWNED)
    .values(
        status=TaskStatus.COMPLETED,
        result=bindparam("p_result"),
        result_data=bindparam("p_result_data", type_=_TASKS.c.result_data.type),
        error=None,
        model=bindparam("p_model"),
        **_CHARGED,
        **_FINISHED,
    )
)
_FAIL = (
    update(_TASKS).where(*_OWNED).values(status=TaskStatus.FAILED, error=bindparam("p_error"), **_CHARGED, **_FINISHED)
)
_REQUEUE = (
    update(_TASKS)
    .where(*_OWNED)
    .values(status=TaskStatus.QUEUED, error=bindparam("p_error"), queued_at=_NOW, updated_at=_NOW, **_CHARGED)
)
# A run that stops before its end without failing (deferred by admission, or paused for a reviewer) gives
# its attempt and its claim back, saying why it waits.
_GIVE_BACK = dict(
    attempts=_TASKS.c.attempts - 1,
    waiting_reason=bindparam("p_reason"),
    claimed_at=None,
    claimed_by=None,
    updated_at=_NOW,
)
# A deferred attempt gives its start time back too, if it was the first.
_DEFER = (
    update(_TASKS)
    .where(*_OWNED)
    .values(
        status=TaskStatus.QUEUED,
        started_at=case((_TASKS.c.attempts == 1, None), else_=_TASKS.c.started_at),
        queued_at=_NOW,
        **_GIVE_BACK,
    )
)

# A step of a multi-step run adds its call's cost at once (store/steps.py), only while the claim owns the task.
_CHARGE_STEP = update(_TASKS).where(*_OWNED).values(updated_at=_NOW, **_CHARGED)


def _each(alias: str, columns: dict[str, Any]) -> Any:
    """A table of one row per claim for a statement about many at once (PostgreSQL): each column read from the
    array parameter `p_each_<column>` (`_each_params`)."""
    arrays = [sql_cast(bindparam(f"p_each_{name}"), ARRAY(type_)) for name, type_ in columns.items()]
    return func.unnest(*arrays).table_valued(*columns).render_derived(name=alias)


def _owned_by(each: Any) -> tuple[Any, ...]:
    return _TASKS.c.id == each.c.id, _TASKS.c.status == TaskStatus.RUNNING, _TASKS.c.attempts == each.c.attempt


def _charged_by(each: Any) -> dict[str, Any]:
    return _charged({name: each.c[name] for name in (*_SUMMED, "unpriced_calls")})


_CLAIM_AND_CHARGE = {"id": _TASKS.c.id.type, "attempt": _TASKS.c.attempts.type} | {
    name: _TASKS.c[name].type for name in (*_SUMMED, "unpriced_calls")
}
# The steps of many runs charged in one statement.
_EACH_STEP = _each("step", _CLAIM_AND_CHARGE)
_CHARGE_STEPS = (
    update(_TASKS)
    .where(*_owned_by(_EACH_STEP))
    .values(updated_at=_NOW, **_charged_by(_EACH_STEP))
    .returning(_TASKS.c.id)
)
# Many claims completed in one statement.
_EACH_SUCCESS = _each(
    "success",
    _CLAIM_AND_CHARGE
    | {name: _TASKS.c[name].type for name in ("result", "model", "duration_ms")}
    # psycopg2 adapts no dict inside an array: each result's data goes as JSON text, read back as JSON.
    | {"result_data": Text()},
)
_COMPLETE_EACH = (
    update(_TASKS)
    .where(*_owned_by(_EACH_SUCCESS))
    .values(
        status=TaskStatus.COMPLETED,
        result=_EACH_SUCCESS.c.result,
        result_data=sql_cast(_EACH_SUCCESS.c.result_data, _TASKS.c.result_data.type),
        error=None,
        model=_EACH_SUCCESS.c.model,
        **_charged_by(_EACH_SUCCESS),
        finished_at=_NOW,
        updated_at=_NOW,
        duration_ms=_EACH_SUCCESS.c.duration_ms,
    )
    .returning(_TASKS.c.id)
)
# A run that waits for a reviewer gives its attempt and its claim back until the decision.
_PAUSE = update(_TASKS).where(*_OWNED).values(status=TaskStatus.AWAITING_APPROVAL, **_GIVE_BACK)


@dataclass(frozen=True)
class Claim:
    """This worker owns attempt `attempt` of the task until it records an outcome."""

    task_id: uuid.UUID
    attempt: int
    title: str
    description: str
    agent: AgentSpec | None
    started_at: datetime
    user_id: str = ""
    agent_error: str | None = None
    kind: str | None = None  # the task's own kind, overriding its agent's
    payload: Any = None  # the task's JSON input
    group_id: str | None = None  # the group it belongs to, whose end its own end may be (store.groups)


@dataclass(frozen=True)
class Charge:
    """What one attempt's call cost: the model that answered, the tokens it reported and their price in USD
    (None when the model has no price)."""

    model: str
    usage: Usage
    cost_usd: float | None

    def after(self, earlier: Charge | None) -> Charge:
        """This charge with an earlier call of the same attempt's added (a re-ask): tokens summed, the cost
        unknown when either's is."""
        if earlier is None:
            return self
        usage = Usage(*(a + b for a, b in zip(astuple(earlier.usage), astuple(self.usage), strict=True)))
        if earlier.cost_usd is None or self.cost_usd is None:
            return Charge(self.model, usage, None)
        return Charge(self.model, usage, earlier.cost_usd + self.cost_usd)

    def token_counts(self) -> dict[str, int]:
        """The tokens by kind, as the usage metrics label them."""
        usage = self.usage
        return {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens, "cached": usage.cached_tokens}

    def params(self) -> dict[str, Any]:
        usage = self.usage
        return {
            "p_prompt_tokens": usage.prompt_tokens,
            "p_completion_tokens": usage.completion_tokens,
            "p_total_tokens": usage.total_tokens,
            "p_cached_tokens": usage.cached_tokens,
            "p_cost": self.cost_usd,
            "p_unpriced": int(self.cost_usd is None),
        }


NO_CHARGE = {
    name: None for name in ("p_prompt_tokens", "p_completion_tokens", "p_total_tokens", "p_cached_tokens", "p_cost")
} | {"p_unpriced": 0}


@dataclass(frozen=True)
class Finished:
    """A finished task as its row records it."""

    status: TaskStatus
    result: str | None = None
    error: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class Skip:
    """The task is not to be run by this delivery, and why; `finished` when it has finished already."""

    task_id: uuid.UUID
    status: TaskStatus | None
    reason: str
    finished: Finished | None = None


def _take_queued(session: Session, task_ids: list[uuid.UUID], *, now: datetime, owner: str) -> dict[uuid.UUID, Claim]:
    """Take the next attempt of each pending, queued or waiting task among `task_ids` (no id twice), by id: on
    PostgreSQL in one statement that reads their agents too, elsewhere in two."""
    if not task_ids:
        return {}
    connection = session.connection()
    params = {"p_ids": task_ids, "p_now": now, "p_owner": owner}
    if connection.dialect.name == "postgresql":
        split = len(_CLAIMED_COLUMNS)
        rows = connection.execute(_TAKE_QUEUED_WITH_AGENTS, params)
        return {row[0]: _claim_of(_TakenRow(*row[:split]), _AgentRow(*row[split:])) for row in rows}
    return _with_agents(session, list(connection.execute(_TAKE_QUEUED, params)))


def claim_tasks(
    session: Session,
    task_ids: list[uuid.UUID],
    *,
    settings: Settings,
    now: datetime,
    owner: str,
    owner_is_gone: OwnerCheck = lambda _owner: False,
) -> list[Claim | Skip]:
    """Take the next attempt of each task, in order: pending or queued ones in one statement (`_take_queued`),
    then any abandoned running one (its owner's liveness lease expired, its claim is older than the stale
    threshold, or `owner_is_gone` says its process no longer exists). A task that is missing, finished or
    running elsewhere comes back as a Skip.
    """
    unique_ids = list(dict.fromkeys(task_ids))
    claims: dict[uuid.UUID, Claim | Skip] = dict(_take_queued(session, unique_ids, now=now, owner=owner))
    abandoned: list[Row[Any]] = []
    for task_id in unique_ids:
        if task_id not in claims:
            row = _take_abandoned(
                session, task_id, settings=settings, now=now, owner=owner, owner_is_gone=owner_is_gone
            )
            if isinstance(row, Skip):
                claims[task_id] = row
            else:
                abandoned.append(row)
    claims.update(_with_agents(session, abandoned))
    return [
        claims.pop(task_id) if task_id in claims else Skip(task_id, TaskStatus.RUNNING, "delivered twice in one batch")
        for task_id in task_ids
    ]


def _with_agents(session: Session, rows: list[Row[Any]]) -> dict[uuid.UUID, Claim]:
    """The claims of tasks just taken, with their agents read in one query."""
    if not rows:
        return {}
    agents = agents_by_id(session, list({row.agent_id for row in rows}))
    return {row.id: _claim_of(row, agents[row.agent_id]) for row in rows}


def _take_abandoned(
    session: Session, task_id: uuid.UUID, *, settings: Settings, now: datetime, owner: str, owner_is_gone: OwnerCheck
) -> Row[Any] | Skip:
    task = session.get(Task, task_id, populate_existing=True)
    if task is None:
        return Skip(task_id, None, "no such task")
    if not _is_abandoned(session, task, settings=settings, now=now, owner_is_gone=owner_is_gone):
        return Skip(task_id, task.status, _why_not_claimed(task), _finished_of(task))
    params = {"p_id": task_id, "p_now": now, "p_owner": owner, "p_attempt": task.attempts}
    taken = session.connection().execute(_TAKE_ABANDONED, params).first()
    if taken is None:
        return Skip(task_id, task.status, "another worker took it over first")
    session.add(
        TaskAttempt(
            task_id=task_id,
            attempt=task.attempts,
            outcome="lost",
            at=now,
            error=f"the worker running it ({task.claimed_by}) was lost",
        )
    )
    return taken


def _is_abandoned(
    session: Session, task: Task, *, settings: Settings, now: datetime, owner_is_gone: OwnerCheck
) -> bool:
    if task.status != TaskStatus.RUNNING:
        return False
    # A running row without a claim time (written before claims were timed) has no owner to wait for.
    claimed_at = task.claimed_at
    stale = claimed_at is None or aware(claimed_at) < now - timedelta(seconds=settings.stale_task_after_seconds)
    return stale or owner_is_gone(task.claimed_by) or leases.has_expired(session, task.claimed_by)


def record_success(
    session: Session,
    claim: Claim,
    *,
    result: str,
    model: str,
    charge: Charge | None = None,
    now: datetime,
    result_data: Any = None,
) -> bool:
    """running -> completed with the result (its text, and `result_data` for a structured kind) and the model
    that answered, adding the call's `charge` to the task's sums, only while this claim still owns the task.
    Returns whether it did."""
    charged = charge.params() if charge else NO_CHARGE
    values = dict(p_result=result, p_result_data=result_data, p_model=model, **charged)
    return _settle(session, _COMPLETE, claim, now=now, **values)


@dataclass(frozen=True)
class Success:
    """A claim's run that completed its task: what `record_success` records."""

    claim: Claim
    result: str
    model: str
    charge: Charge | None = None
    result_data: Any = None


def record_successes(session: Session, successes: Sequence[Success], *, now: datetime) -> list[bool]:
    """`record_success` for each of these claims (each named once), in one statement on PostgreSQL. Returns
    whether each claim still owned its task, in the order given."""
    if session.get_bind().dialect.name != "postgresql":
        return [
            record_success(
                session, s.claim, result=s.result, model=s.model, charge=s.charge, now=now, result_data=s.result_data
            )
            for s in successes
        ]
    params = {"p_now": now} | _each_params([(s.claim, s.charge) for s in successes])
    params |= {
        "p_each_result": [s.result for s in successes],
        "p_each_result_data": [json.dumps(s.result_data) for s in successes],
        "p_each_model": [s.model for s in successes],
        "p_each_duration_ms": [_duration_ms(s.claim, now) for s in successes],
    }
    owned = set(session.connection().execute(_COMPLETE_EACH, params).scalars())
    return [s.claim.task_id in owned for s in successes]


def record_failure(session: Session, claim: Claim, *, error: str, charge: Charge | None = None, now: datetime) -> bool:
    """running -> failed with `error` (and the call's `charge`, when a reply was paid for), only while this
    claim still owns the task."""
    return _settle_unfinished(session, _FAIL, claim, outcome="failed", error=error, charge=charge, now=now)


def record_retry(session: Session, claim: Claim, *, error: str, charge: Charge | None = None, now: datetime) -> bool:
    """running -> queued for another attempt, keeping the last error and adding the call's `charge`."""
    return _settle_unfinished(session, _REQUEUE, claim, outcome="retried", error=error, charge=charge, now=now)


def record_deferral(session: Session, claim: Claim, *, reason: str, now: datetime) -> bool:
    """running -> queued without spending the attempt, with `reason` shown until the next claim. Returns
    whether this claim still owned the task."""
    params = {"p_id": claim.task_id, "p_attempt": claim.attempt, "p_now": now, "p_reason": reason}
    return session.connection().execute(_DEFER, params).rowcount == 1


def charge_step(session: Session, claim: Claim, *, charge: Charge | None, now: datetime) -> bool:
    """Add one step's `charge` to the task's sums (nothing to add: just check the claim). Returns whether this
    claim still owns the task; a step may be recorded only when it does."""
    params = {"p_id": claim.task_id, "p_attempt": claim.attempt, "p_now": now}
    params.update(charge.params() if charge else NO_CHARGE)
    return session.connection().execute(_CHARGE_STEP, params).rowcount == 1


def _each_params(charges: Sequence[tuple[Claim, Charge | None]]) -> dict[str, Any]:
    """The claims and their charges as the array parameters of `_CLAIM_AND_CHARGE`."""
    figures = [charge.params() if charge else NO_CHARGE for _, charge in charges]
    params: dict[str, Any] = {
        "p_each_id": [claim.task_id for claim, _ in charges],
        "p_each_attempt": [claim.attempt for claim, _ in charges],
        "p_each_unpriced_calls": [figure["p_unpriced"] for figure in figures],
    }
    for name in _SUMMED:
        params[f"p_each_{name}"] = [figure[_figure_name(name)] for figure in figures]
    return params


def charge_steps(session: Session, charges: Sequence[tuple[Claim, Charge | None]], *, now: datetime) -> list[bool]:
    """`charge_step` for each claim (a claim named twice has its charges added together), in one statement on
    PostgreSQL. Returns whether each claim still owns its task, in the order given."""
    if session.get_bind().dialect.name != "postgresql":
        return [charge_step(session, claim, charge=charge, now=now) for claim, charge in charges]
    each: dict[uuid.UUID, tuple[Claim, Charge | None]] = {}
    for claim, charge in charges:
        _, earlier = each.get(claim.task_id, (claim, None))
        each[claim.task_id] = (claim, charge.after(earlier) if charge else earlier)
    params = {"p_now": now} | _each_params(list(each.values()))
    owned = set(session.connection().execute(_CHARGE_STEPS, params).scalars())
    return [claim.task_id in owned for claim, _ in charges]


def record_pause(session: Session, claim: Claim, *, reason: str, now: datetime) -> bool:
    """running -> awaiting_approval, giving the attempt and the claim back (no worker holds the task while a
    person decides), with `reason` shown until then. Returns whether this claim still owned the task."""
    params = {"p_id": claim.task_id, "p_attempt": claim.attempt, "p_now": now, "p_reason": reason}
    return session.connection().execute(_PAUSE, params).rowcount == 1


def finished_state(session: Session, task_id: uuid.UUID) -> Finished | None:
    """The task's final state, or None while it is not finished (or does not exist)."""
    task = session.get(Task, task_id, populate_existing=True)
    return _finished_of(task) if task is not None else None


def _duration_ms(claim: Claim, now: datetime) -> int:
    return int((now - aware(claim.started_at)).total_seconds() * 1000)


def _settle(session: Session, statement: Update, claim: Claim, *, now: datetime, **values: Any) -> bool:
    params = {"p_id": claim.task_id, "p_attempt": claim.attempt, "p_now": now, "p_duration": _duration_ms(claim, now)}
    params.update(values)
    return session.connection().execute(statement, params).rowcount == 1


def _settle_unfinished(
    session: Session, statement: Update, claim: Claim, *, outcome: str, error: str, charge: Charge | None, now: datetime
) -> bool:
    """Settle an attempt that did not complete its task, and keep it in the task's history with its charge."""
    owned = _settle(session, statement, claim, now=now, p_error=error, **(charge.params() if charge else NO_CHARGE))
    if owned:
        paid = (
            dict(
                model=charge.model,
                prompt_tokens=charge.usage.prompt_tokens,
                completion_tokens=charge.usage.completion_tokens,
                cached_tokens=charge.usage.cached_tokens,
                cost_usd=charge.cost_usd,
            )
            if charge
            else {}
        )
        session.add(
            TaskAttempt(task_id=claim.task_id, attempt=claim.attempt, outcome=outcome, error=error, at=now, **paid)
        )
    return owned


def _claim_of(taken: Any, agent: Any) -> Claim:
    """The claim of a task row just taken (`_CLAIMED_COLUMNS`), with its agent's row."""
    spec, agent_error = agent_spec(agent)
    return Claim(
        taken.id,
        taken.attempts,
        taken.title,
        taken.description or "",
        spec,
        user_id=taken.user_id,
        agent_error=agent_error,
        started_at=taken.started_at,
        kind=taken.kind,
        payload=taken.payload,
        group_id=taken.group_id,
    )


def _finished_of(task: Task) -> Finished | None:
    if task.status not in FINAL_STATUSES:
        return None
    prompt, completion, total = task.prompt_tokens, task.completion_tokens, task.total_tokens
    usage = (
        Usage(prompt, completion, total, task.cached_tokens or 0)
        if prompt is not None and completion is not None and total is not None
        else None
    )
    return Finished(task.status, task.result, task.error, usage)


def _why_not_claimed(task: Task) -> str:
    if task.status == TaskStatus.RUNNING:
        return f"attempt {task.attempts} is running elsewhere"
    return f"already {task.status.value}"

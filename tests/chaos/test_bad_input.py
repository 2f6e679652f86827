"""Scenario 8: bad input through create_agent_task and the CLI gets a clear error and writes nothing;
a repeated idempotency key yields the first task, run once. (tests/test_create_task.py and
tests/test_cli.py cover the other cases.)"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from agent_service.database import session_scope
from agent_service.errors import TaskValidationError
from agent_service.models import Task
from agent_service.tasks import create_agent_task
from tests.support import run_cli

BAD_FIELDS = {
    "title None": {"title": None},
    "description of the wrong type": {"description": ["a", "list"]},
    "lone surrogate in the description": {"description": "bad \udcff unicode"},
    "NUL byte in the title": {"title": "bad\x00title"},
    "oversize idempotency key": {"idempotency_key": "k" * 201},
    "user id of the wrong type": {"user_id": 7},
    "agent id missing": {"agent_id": None},
}


def task_count(run) -> int:
    with session_scope(run.session_factory) as session:
        return session.scalar(select(func.count()).select_from(Task))


def test_bad_submissions_are_refused_and_a_repeated_key_runs_one_task(scenario, llm):
    # Given an agent, and no rows yet
    run = scenario("8 bad input + repeated key")
    valid = {"title": f"{run.prefix('dup')} #00000", "agent_id": str(run.agent.id), "user_id": "u-chaos"}
    before = task_count(run)
    # When bad fields are submitted through the API, and an oversize title through the CLI
    for change in BAD_FIELDS.values():
        with pytest.raises(TaskValidationError, match="invalid task input"):
            create_agent_task({**valid, **change}, app=run.app)
    too_long = run_cli(run.settings, "submit", "--agent", str(run.agent.id), "--title", "x" * 501, "--user", "u")
    # Then each got a clear error and nothing was written
    assert too_long.returncode == 2 and "title" in too_long.stdout and "Traceback" not in too_long.stderr
    assert task_count(run) == before
    # When the CLI submits the same idempotency key twice
    key = f"order-{uuid.uuid4().hex[:6]}"
    submit = (
        "submit",
        "--agent",
        run.agent.name,
        "--title",
        valid["title"],
        "--user",
        "u-chaos",
        "--idempotency-key",
        key,
    )
    first, second = run_cli(run.settings, *submit), run_cli(run.settings, *submit)
    # Then both print the first task's id, and that one task runs once
    assert first.returncode == second.returncode == 0 and first.stdout == second.stdout
    run.start_worker("single")
    run.wait(timeout=30)
    tally = run.tally(name=f"8 bad input ({len(BAD_FIELDS) + 1} refused), key x2")
    assert (tally.tasks, tally.completed, tally.duplicates, tally.llm_calls) == (1, 1, 0, 1)

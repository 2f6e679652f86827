"""A group named at submission: its name, its on_complete task's name and whose tasks it takes."""

from __future__ import annotations

import uuid

import pytest

from agent_service.errors import TaskValidationError
from agent_service.submission.groups import parse_group
from agent_service.submission.validation import parse_task_input
from tests.support import make_settings

SETTINGS = make_settings()


def tasks(*users: str):
    return [
        parse_task_input({"title": "T", "agent_id": str(uuid.uuid4()), "user_id": u}, settings=SETTINGS) for u in users
    ]


def refusal(group, on_complete, users=("u1",)) -> str:
    with pytest.raises(TaskValidationError) as raised:
        parse_group(group, on_complete, tasks=tasks(*users))
    return str(raised.value)


def test_no_group_is_none_and_a_group_keeps_its_stripped_name_and_callback():
    assert parse_group(None, None, tasks=tasks("u1")) is None
    parsed = parse_group(" nightly-2026-11-30 ", "myapp.tasks.report", tasks=tasks("u1", "u1"))
    assert (parsed.group, parsed.on_complete) == ("nightly-2026-11-30", "myapp.tasks.report")


@pytest.mark.parametrize("name", ["my app.report", "app.tasks.", "1app.report", "app..report", "app.report()", ""])
def test_an_on_complete_that_is_not_a_celery_task_name_is_refused(name):
    assert refusal("g", name).startswith("invalid task input: on_complete: String should match pattern")


def test_on_complete_needs_a_group():
    assert refusal(None, "app.report") == "invalid task input: on_complete: needs a group"


def test_a_group_name_is_bounded_and_not_blank():
    assert "group: String should have at most 200 characters" in refusal("g" * 201, None)
    assert "group: String should have at least 1 character" in refusal("  ", None)


def test_a_group_takes_the_tasks_of_one_user_and_at_least_one():
    assert (
        refusal("g", None, users=("u1", "u2"))
        == "invalid task input: group: 'g' has tasks of 2 users; a group belongs to one user"
    )
    assert refusal("g", None, users=()) == "invalid task input: group: 'g' has no task"

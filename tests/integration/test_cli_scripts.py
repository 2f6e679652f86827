"""Output that scripts can use: `python cli.py list | failed | stats | status | group`, run as a script runs them
(standard output a pipe), never cut an id, a status or a value; `--json` gives one object per line with the
documented field names. Real subprocesses on the test database."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from functools import partial

import pytest

from agent_service.clock import utcnow
from agent_service.database import session_scope
from agent_service.models import Task, TaskStatus
from agent_service.terminal.records import STATS_FIELDS, TASK_FIELDS
from tests.integration.conftest import IDLE_REDIS
from tests.support import run_cli

LONG_RESULT = "first line\nsecond\tline " + "x" * 400


@pytest.fixture
def cli(settings, idle_redis):
    """The CLI on the test database, its standard output a pipe (as for any script), with a broker no worker
    reads."""
    return partial(run_cli, settings.model_copy(update={"redis_url": IDLE_REDIS}))


@pytest.fixture
def finished(agent, session_factory) -> dict[str, uuid.UUID]:
    """A completed task with a long result of several lines, and a failed one, for a user of their own."""
    user = f"scripts-{uuid.uuid4().hex[:8]}"
    ids = {"completed": uuid.uuid4(), "failed": uuid.uuid4()}
    now = utcnow()
    with session_scope(session_factory) as session:
        for status, task_id in ids.items():
            session.add(
                Task(
                    id=task_id,
                    title=f"{status} " + "t" * 300,
                    agent_id=agent.id,
                    user_id=user,
                    status=TaskStatus(status),
                    result=LONG_RESULT if status == "completed" else None,
                    error="boom: the provider said no" if status == "failed" else None,
                    attempts=1,
                    prompt_tokens=10,
                    completion_tokens=5,
                    total_tokens=15,
                    cost_usd=Decimal("0.000123"),
                    duration_ms=42,
                    finished_at=now,
                )
            )
    return {**ids, "user": user}


def rows(output: str) -> list[dict[str, str]]:
    """Tab-separated rows under their header line, as dicts."""
    header, *lines = output.splitlines()
    names = header.split("\t")
    return [dict(zip(names, line.split("\t"), strict=True)) for line in lines]


def test_a_piped_listing_prints_whole_ids_statuses_and_values_as_tab_separated_rows(cli, finished):
    # When a script pipes `list`, then every task is one row under the documented header, nothing cut
    listed = cli("list", "--status", "completed", "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split("\t") == list(TASK_FIELDS)
    [ours] = [row for row in rows(listed.stdout) if row["id"] == str(finished["completed"])]
    assert ours["status"] == "completed" and ours["title"] == "completed " + "t" * 300
    assert ours["result"] == " ".join(LONG_RESULT.split())  # a tab or a line break inside a value: a space
    assert ours["cost_usd"] == "0.000123" and ours["duration_ms"] == "42"


@pytest.mark.parametrize("command", ["list", "failed"])
def test_json_listings_give_one_object_per_line_with_the_documented_fields(cli, finished, command):
    listed = cli(command, "--json", "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert all(list(record) == list(TASK_FIELDS) for record in records)
    by_id = {record["id"]: record for record in records}
    failed = by_id[str(finished["failed"])]
    assert failed["status"] == "failed" and failed["error"] == "boom: the provider said no"
    assert failed["cost_usd"] == pytest.approx(0.000123) and failed["kind"] == "text"
    if command == "list":
        assert by_id[str(finished["completed"])]["result"] == LONG_RESULT


def test_status_as_json_has_every_column_its_attempts_and_steps(cli, finished):
    shown = cli("status", str(finished["completed"]), "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["id"] == str(finished["completed"]) and record["status"] == "completed"
    assert record["result"] == LONG_RESULT and record["kind"] == "text"
    assert record["attempt_history"] == [] and record["steps"] == []
    assert set(record) >= {column.name for column in Task.__table__.columns}


def test_piped_status_prints_each_field_whole_on_its_line(cli, finished):
    shown = cli("status", str(finished["failed"]))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any(line.split() == ["title", "failed", "t" * 300] for line in lines)
    assert any(line.split() == ["id", str(finished["failed"])] for line in lines)


def test_stats_for_scripts_name_their_grouping_and_every_figure(cli, finished):
    as_json = cli("stats", "--by", "user", "--since", "1h", "--json")
    assert as_json.returncode == 0, as_json.stderr
    [ours] = [json.loads(line) for line in as_json.stdout.splitlines() if finished["user"] in line]
    assert list(ours) == list(STATS_FIELDS)
    assert (ours["by"], ours["group"], ours["tasks"], ours["completed"], ours["failed"]) == (
        "user",
        finished["user"],
        2,
        1,
        1,
    )
    piped = cli("stats", "--by", "user", "--since", "1h")
    [row] = [row for row in rows(piped.stdout) if row["group"] == finished["user"]]
    assert (row["tasks"], row["success_rate"], row["prompt_tokens"]) == ("2", "0.5", "20")


def test_group_as_json_counts_its_tasks_by_status(cli, agent):
    group = f"scripts-{uuid.uuid4().hex[:8]}"
    for title in ("one", "two"):
        submitted = cli("submit", "--agent", agent.name, "--title", title, "--user", "u", "--group", group)
        assert submitted.returncode == 0, submitted.stderr
    shown = cli("group", group, "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert (record["group_id"], record["tasks"], record["unfinished"]) == (group, 2, 2)
    assert record["counts"]["queued"] == 2 and record["ended_at"] is None

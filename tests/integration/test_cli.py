"""`python cli.py ...` as a user runs it: a real subprocess on the test database and an idle broker."""

from __future__ import annotations

import json
import uuid
from functools import partial

import pytest
from sqlalchemy import select

from agent_service.database import session_scope
from agent_service.execution.context import RunContext
from agent_service.execution.pipeline import execute_agent_task
from agent_service.llm.runners import make_runner
from agent_service.models import Agent, LimitOverride, LimitScope, Task, TaskStatus
from agent_service.terminal.records import TASK_FIELDS
from tests.integration.conftest import IDLE_REDIS
from tests.support import run_cli


@pytest.fixture
def cli(settings, idle_redis):
    """Runs the CLI on the test database with a broker no worker reads."""
    return partial(run_cli, settings.model_copy(update={"redis_url": IDLE_REDIS}))


def test_create_agent_submit_status_and_list(cli, session_factory, idle_redis):
    name = f"cli-{uuid.uuid4().hex[:6]}"
    created = cli("create-agent", "--name", name, "--prompt", "Be brief.", "--settings", '{"top_p": 0.9}')
    assert created.returncode == 0, created.stderr
    submitted = cli("submit", "--agent", name, "--title", "From the CLI", "--user", "cli-user")
    task_id = submitted.stdout.strip()
    with session_scope(session_factory) as session:
        assert session.get(Task, uuid.UUID(task_id)).status == TaskStatus.QUEUED
        assert session.scalar(select(Agent).where(Agent.name == name)).settings == {"top_p": 0.9}
    assert idle_redis.llen("agent_tasks") == 1
    assert "queued" in cli("status", task_id).stdout
    assert task_id[:8] in cli("list", "--status", "queued", "--limit", "100").stdout


def test_create_agent_with_a_fallback_model(cli, session_factory):
    name = f"cli-{uuid.uuid4().hex[:6]}"
    created = cli("create-agent", "--name", name, "--prompt", "Be brief.", "--fallback-model", "gpt-4o")
    assert created.returncode == 0, created.stderr
    with session_scope(session_factory) as session:
        agent = session.scalar(select(Agent).where(Agent.name == name))
        assert (agent.model, agent.fallback_model) == ("gpt-4o-mini", "gpt-4o")


@pytest.mark.parametrize(
    "args, message",
    [
        (("submit", "--agent", "no-such-agent", "--title", "x", "--user", "u"), "no agent named 'no-such-agent'"),
        (("submit", "--agent", "{agent}", "--title", " ", "--user", "u"), "title"),
        (("create-agent", "--name", "x", "--prompt", "p", "--temperature", "9"), "temperature"),
        (("create-agent", "--name", "x", "--prompt", "p", "--settings", "{nope"), "not valid JSON"),
        (("create-agent", "--name", "x", "--prompt", "p", "--settings", '{"colour": 1}'), "colour"),
        (("status", "not-a-uuid"), "task id must be a UUID"),
    ],
)
def test_bad_cli_input_exits_2_with_a_clear_error_and_writes_nothing(
    cli, agent, session_factory, idle_redis, args, message
):
    with session_scope(session_factory) as session:
        before = session.query(Task).count(), session.query(Agent).count()
    result = cli(*[arg.replace("{agent}", agent.name) for arg in args])
    assert result.returncode == 2 and message in result.stdout and "Traceback" not in result.stderr
    with session_scope(session_factory) as session:
        assert (session.query(Task).count(), session.query(Agent).count()) == before
    assert idle_redis.llen("agent_tasks") == 0


def test_failed_tasks_are_listed_and_replayed(cli, agent, session_factory, idle_redis):
    task_id = uuid.uuid4()
    with session_scope(session_factory) as session:
        session.add(
            Task(
                id=task_id,
                title="dead letter",
                agent_id=agent.id,
                user_id="u",
                status=TaskStatus.FAILED,
                attempts=3,
                error="gave up after 3 attempts: LLM request failed (503)",
            )
        )
    assert str(task_id)[:8] in cli("failed", "--limit", "500").stdout
    replayed = cli("replay", str(task_id))
    assert replayed.returncode == 0 and str(task_id) in replayed.stdout
    with session_scope(session_factory) as session:
        row = session.get(Task, task_id)
    assert (row.status, row.attempts, row.replays) == (TaskStatus.QUEUED, 0, 1)
    assert idle_redis.llen("agent_tasks") == 1


def test_cancel_stops_a_queued_task(cli, agent, session_factory):
    task_id = cli("submit", "--agent", str(agent.id), "--title", "to cancel", "--user", "u").stdout.strip()
    assert cli("cancel", task_id).stdout.strip().endswith("cancelled")
    with session_scope(session_factory) as session:
        assert session.get(Task, uuid.UUID(task_id)).status == TaskStatus.CANCELLED


def test_init_db_creates_a_sqlite_database_in_a_folder_that_does_not_exist_yet(settings, tmp_path):
    database = tmp_path / "new" / "folder" / "agents.sqlite3"
    local = settings.model_copy(update={"database_url": f"sqlite:///{database}"})
    assert run_cli(local, "init-db").returncode == 0
    listed = run_cli(local, "list")
    assert database.exists() and listed.returncode == 0
    assert listed.stdout.splitlines() == ["\t".join(TASK_FIELDS)]  # the header of an empty listing


def test_a_database_without_the_schema_gets_a_one_line_hint_not_a_traceback(settings, tmp_path):
    empty = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'empty.sqlite3'}"})
    result = run_cli(empty, "list")
    assert result.returncode == 1 and "python cli.py init-db" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_limits_are_set_listed_and_unset_per_user_and_per_agent(cli, agent, session_factory):
    user = f"u-{uuid.uuid4().hex[:6]}"
    assert cli("limits", "set", "--user", user, "daily_spend_cap_usd", "5").returncode == 0
    listed = cli("limits", "list", "--user", user)
    assert f"user {user}: daily_spend_cap_usd = 5" in listed.stdout
    # An agent is named on the command line and kept by id
    assert cli("limits", "set", "--agent", agent.name, "concurrency_cap", "3").returncode == 0
    with session_scope(session_factory) as session:
        [row] = session.scalars(select(LimitOverride).where(LimitOverride.subject == str(agent.id))).all()
        assert (row.scope, row.name, row.value) == (LimitScope.AGENT, "concurrency_cap", "3")
    assert cli("limits", "unset", "--user", user, "daily_spend_cap_usd").returncode == 0
    assert "daily_spend_cap_usd" not in cli("limits", "list", "--user", user).stdout


def test_a_limit_workers_would_never_read_is_refused_with_the_reason(cli):
    # A breaker setting is per model; a cap must be a number; a name must be known
    refused = {
        "scope": cli("limits", "set", "--user", "u1", "breaker_cooldown_seconds", "60"),
        "value": cli("limits", "set", "--user", "u1", "daily_spend_cap_usd", "five"),
        "name": cli("limits", "set", "--user", "u1", "dayly_cap", "5"),
    }
    assert {why: result.returncode for why, result in refused.items()} == {"scope": 2, "value": 2, "name": 2}
    assert "breaker_cooldown_seconds is set per --model only" in refused["scope"].stdout
    assert "needs a number of at least 0, got 'five'" in refused["value"].stdout
    assert "no limit named 'dayly_cap'" in refused["name"].stdout


ORDER_SCHEMA = {"type": "object", "properties": {"customer": {"type": "string"}}, "required": ["customer"]}


def test_a_data_agent_from_a_schema_file_runs_a_task_with_a_payload_and_status_shows_its_json(
    cli, settings, session_factory, tmp_path
):
    # Given a data agent created from a schema file, and a task submitted with a payload file
    schema, payload = tmp_path / "order.schema.json", tmp_path / "email.json"
    schema.write_text(json.dumps(ORDER_SCHEMA))
    payload.write_text(json.dumps({"email": "Ada orders 2 × A-1", "notes": "n" * 400}))
    name = f"cli-data-{uuid.uuid4().hex[:6]}"
    created = cli("create-agent", "--name", name, "--prompt", "Extract.", "--kind", "data", "--schema", str(schema))
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().endswith("(data)")
    submitted = cli("submit", "--agent", name, "--title", "Order", "--user", "u", "--payload", f"@{payload}")
    assert submitted.returncode == 0, submitted.stdout
    task_id = submitted.stdout.strip()
    # When it runs
    runner = make_runner(settings.model_copy(update={"llm_process": False}))
    try:
        execute_agent_task(task_id, RunContext(session_factory=session_factory, settings=settings, llm=runner))
    finally:
        runner.close()
    # Then status shows its kind, its JSON result pretty and its payload cut short
    shown = cli("status", task_id).stdout
    assert "completed" in shown and "data (its agent's)" in shown
    assert '"customer": "Offline answer to:' in shown and "\n" + " " * 18 + "}" in shown
    assert '{"email": "Ada orders 2 × A-1"' in shown and "... (" in shown and "n" * 400 not in shown


def test_a_decision_agent_takes_its_choices_and_a_task_its_kind_and_payload_from_the_command_line(
    cli, agent, session_factory
):
    name = f"cli-decide-{uuid.uuid4().hex[:6]}"
    created = cli("create-agent", "--name", name, "--prompt", "Decide.", "--kind", "decision", "--choices", "a, b,c")
    assert created.returncode == 0, created.stdout
    payload = '{"options": ["ship", "hold"], "order": 7}'
    submitted = cli(
        "submit", "--agent", agent.name, "--title", "T", "--user", "u", "--kind", "decision", "--payload", payload
    )
    assert submitted.returncode == 0, submitted.stdout
    with session_scope(session_factory) as session:
        decider = session.scalar(select(Agent).where(Agent.name == name))
        task = session.get(Task, uuid.UUID(submitted.stdout.strip()))
        assert (decider.kind, decider.settings) == ("decision", {"choices": ["a", "b", "c"]})
        assert (task.kind, task.payload) == ("decision", {"options": ["ship", "hold"], "order": 7})
    assert "decision (set on the task)" in cli("status", str(task.id)).stdout


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"type": "array"}', 'output_schema: Value error, must have "type": "object" at its root'),
        ('{"type": "object", "properties": {"a": {"$ref": "https://example.com/a"}}}', "output_schema: Value error"),
        ("{nope", "is not valid JSON"),
        (None, "cannot read --schema"),
    ],
)
def test_a_bad_schema_file_is_refused_naming_the_field_and_writes_nothing(
    cli, session_factory, tmp_path, content, message
):
    schema = tmp_path / "schema.json"
    if content is not None:
        schema.write_text(content)
    name = f"cli-bad-{uuid.uuid4().hex[:6]}"
    result = cli("create-agent", "--name", name, "--prompt", "p", "--kind", "data", "--schema", str(schema))
    assert result.returncode == 2 and message in result.stdout and "Traceback" not in result.stderr
    with session_scope(session_factory) as session:
        assert session.scalar(select(Agent).where(Agent.name == name)) is None


@pytest.mark.parametrize(
    "args, message",
    [
        (("--kind", "decision", "--payload", '{"options": ["x"]}'), "payload.options: must be at least 2 distinct"),
        (("--payload", "{nope"), "--payload is not valid JSON"),
        (("--payload", "@/no/such/file.json"), "cannot read --payload /no/such/file.json"),
    ],
)
def test_a_bad_payload_on_the_command_line_is_refused_naming_it(cli, agent, idle_redis, args, message):
    result = cli("submit", "--agent", agent.name, "--title", "T", "--user", "u", *args)
    assert result.returncode == 2 and message in result.stdout and "Traceback" not in result.stderr
    assert idle_redis.llen("agent_tasks") == 0

"""User text is data: `python cli.py` prints stored titles, descriptions, results and errors as written,
never as rich markup, and takes long descriptions from a file or standard input. Real subprocesses."""

from __future__ import annotations

import uuid
from functools import partial

import pytest

from agent_service.database import session_scope
from agent_service.models import Task, TaskStatus
from tests.integration.conftest import IDLE_REDIS
from tests.support import run_cli

MARKUP_TITLES = ["[[mock:403]]", "[/red] stray closing tag", "[bold]loud[/bold] :thumbs_up:"]


@pytest.fixture
def cli(settings, idle_redis):
    """Runs the CLI on the test database with a broker no worker reads, on a terminal wide enough to show
    whole titles."""
    return partial(run_cli, {**settings.model_copy(update={"redis_url": IDLE_REDIS}).as_env(), "COLUMNS": "200"})


@pytest.fixture
def markup_tasks(agent, session_factory) -> list[uuid.UUID]:
    """A completed and a failed task whose title, result or error look like rich markup."""
    ids = [uuid.uuid4() for _ in MARKUP_TITLES]
    with session_scope(session_factory) as session:
        for task_id, title in zip(ids, MARKUP_TITLES):
            failed = title.startswith("[/red]")
            session.add(
                Task(
                    id=task_id,
                    title=title,
                    description="[link=http://x]click[/link]",
                    agent_id=agent.id,
                    user_id="u",
                    status=TaskStatus.FAILED if failed else TaskStatus.COMPLETED,
                    result=None if failed else "[/] result with [italic]tags",
                    error="[/red] error text" if failed else None,
                )
            )
    return ids


def test_status_prints_stored_text_as_written(cli, markup_tasks):
    for task_id, title in zip(markup_tasks, MARKUP_TITLES):
        result = cli("status", str(task_id))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"title {title}" in result.stdout
        assert "description [link=http://x]click[/link]" in result.stdout
    assert "error [/red] error text" in cli("status", str(markup_tasks[1])).stdout


@pytest.mark.parametrize("command", [("list", "--limit", "5"), ("failed", "--limit", "5")])
def test_listings_show_markup_like_titles_literally_and_do_not_crash(cli, markup_tasks, command):
    result = cli(*command)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "[/red] stray closing tag" in result.stdout
    if command[0] == "list":
        assert "[[mock:403]]" in result.stdout and "[bold]loud[/bold] :thumbs_up:" in result.stdout


def test_cancel_and_error_messages_print_user_text_as_written(cli, agent):
    task_id = cli("submit", "--agent", agent.name, "--title", "[red]cancel me[/red]", "--user", "u").stdout.strip()
    assert cli("cancel", task_id).stdout.strip() == f"{task_id}: cancelled"
    assert "[red]cancel me[/red]" in cli("status", task_id).stdout
    missing = cli("submit", "--agent", "[red]nosuch[/red]", "--title", "t", "--user", "u")
    assert missing.returncode == 2 and "no agent named '[red]nosuch[/red]'" in missing.stdout


def test_unknown_agent_name_is_named_in_the_error(cli, idle_redis):
    result = cli("submit", "--agent", "nosuch", "--title", "t", "--user", "u")
    assert (result.returncode, result.stdout.strip()) == (2, "error: no agent named 'nosuch'")
    assert idle_redis.llen("agent_tasks") == 0


def test_submit_reads_a_five_megabyte_description_from_a_file(settings, agent, session_factory, tmp_path, idle_redis):
    # Given a description too long for a command line (Linux caps one argument at 128 KiB)
    description = "[b]line[/b] with text ünïcode\n" * 180_000
    assert len(description.encode()) > 5_000_000
    path = tmp_path / "description.txt"
    path.write_text(description, encoding="utf-8")
    roomy = settings.model_copy(update={"redis_url": IDLE_REDIS, "max_description_length": 6_000_000})
    # When it is submitted with --description-file
    result = run_cli(
        roomy, "submit", "--agent", agent.name, "--title", "big", "--user", "u", "--description-file", str(path)
    )
    # Then the task stores it byte for byte
    assert result.returncode == 0, result.stdout + result.stderr
    with session_scope(session_factory) as session:
        assert (
            session.get(Task, uuid.UUID(result.stdout.strip())).description == description.strip()
        )  # as validation stores it


def test_submit_reads_the_description_from_standard_input(cli, agent, session_factory):
    description = "from a pipe\n[not markup]\n"
    result = cli(
        "submit", "--agent", agent.name, "--title", "t", "--user", "u", "--description-file", "-", stdin=description
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with session_scope(session_factory) as session:
        assert (
            session.get(Task, uuid.UUID(result.stdout.strip())).description == description.strip()
        )  # as validation stores it


@pytest.mark.parametrize(
    "content, message", [(None, "cannot read --description-file"), (b"\xff\xfe bad", "is not UTF-8 text")]
)
def test_unusable_description_file_exits_2_with_a_clear_error(cli, agent, tmp_path, idle_redis, content, message):
    path = tmp_path / "description.txt"
    if content is not None:
        path.write_bytes(content)
    result = cli("submit", "--agent", agent.name, "--title", "t", "--user", "u", "--description-file", str(path))
    assert result.returncode == 2 and message in result.stdout and "Traceback" not in result.stderr
    assert idle_redis.llen("agent_tasks") == 0

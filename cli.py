"""Command line: `python cli.py init-db | create-agent | submit | status | list | cancel | demo`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path

from alembic import command
from alembic.config import Config
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

import lifecycle
from config import get_settings
from database import session_scope
from errors import AgentServiceError, TaskValidationError
from models import Agent, Task, TaskStatus
from schemas import parse_agent_input

ROOT = Path(__file__).resolve().parent
console = Console()


def init_db(database_url: str | None = None) -> None:
    """Apply every Alembic migration to the configured database (or `database_url`)."""
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["configure_logger"] = False
    if database_url:
        from sqlalchemy import create_engine

        with create_engine(database_url).begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        return
    command.upgrade(config, "head")


def create_agent(session, data: dict) -> Agent:
    """Insert a validated agent. Raises: TaskValidationError (bad fields or a taken name)."""
    spec = parse_agent_input(data)
    if session.scalar(select(Agent.id).where(Agent.name == spec.name)) is not None:
        raise TaskValidationError(f"an agent named {spec.name!r} already exists")
    agent = Agent(**spec.model_dump(exclude={"settings"}), settings=spec.settings.model_dump(exclude_defaults=True))
    session.add(agent)
    session.flush()
    return agent


def find_agent(session, ref: str) -> Agent | None:
    """An agent by id or by name."""
    try:
        return session.get(Agent, uuid.UUID(ref))
    except ValueError:
        return session.scalar(select(Agent).where(Agent.name == ref))


def main(argv: list[str] | None = None) -> int:
    args, unknown = _parser().parse_known_args(argv)
    if unknown and args.handler is not _cmd_worker:
        _parser().error(f"unrecognized arguments: {' '.join(unknown)}")
    args.celery_args = unknown
    try:
        return args.handler(args) or 0
    except AgentServiceError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except SQLAlchemyError as exc:
        reason = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
        console.print(f"[bold red]database error:[/] {reason} (is DATABASE_URL right, and has "
                      "`python cli.py init-db` been run?)", highlight=False, soft_wrap=True)
        return 1


def _cmd_init_db(args) -> None:
    init_db()
    console.print("database schema is up to date")


def _cmd_create_agent(args) -> None:
    import worker

    data = {"name": args.name, "prompt": args.prompt, "model": args.model or worker.app.settings.default_model,
            "temperature": args.temperature, "max_tokens": args.max_tokens, "settings": _json_object(args.settings)}
    with session_scope(worker.app.session_factory) as session:
        agent = create_agent(session, data)
    console.print(f"agent {agent.name} created: {agent.id}")


def _json_object(raw: str) -> dict:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TaskValidationError(f"--settings is not valid JSON: {exc}") from None


def _cmd_submit(args) -> None:
    import worker
    from tasks import create_agent_task

    with session_scope(worker.app.session_factory) as session:
        agent = find_agent(session, args.agent)
    data = {"title": args.title, "description": args.description, "user_id": args.user,
            "agent_id": str(agent.id) if agent else args.agent}
    if args.idempotency_key:
        data["idempotency_key"] = args.idempotency_key
    console.print(create_agent_task(data))


def _cmd_status(args) -> int:
    import worker
    from tasks import parse_task_id

    with session_scope(worker.app.session_factory) as session:
        task = session.get(Task, parse_task_id(args.task_id))
        if task is None:
            console.print(f"[red]no task {args.task_id}[/]")
            return 1
        fields = {c.name: getattr(task, c.name) for c in Task.__table__.columns}
        history = [(h.attempt, h.outcome, h.at, h.error) for h in task.attempt_history]
    for name, value in fields.items():
        console.print(f"[bold]{name:>17}[/] {value.value if isinstance(value, TaskStatus) else value}", highlight=False)
    for attempt, outcome, at, error in history:
        console.print(f"[bold]{'attempt ' + str(attempt):>17}[/] {outcome} at {at}: {error}", highlight=False)
    return 0


def _cmd_list(args) -> None:
    import worker

    query = select(Task).order_by(Task.created_at.desc()).limit(args.limit)
    if args.status:
        query = query.where(Task.status == TaskStatus(args.status))
    with session_scope(worker.app.session_factory) as session:
        console.print(task_table(session.scalars(query).all()))


def _cmd_failed(args) -> None:
    import worker

    with session_scope(worker.app.session_factory) as session:
        tasks = lifecycle.failed_tasks(session, limit=args.limit)
        console.print(task_table(tasks, title="Failed tasks (dead letters)"))


def _cmd_replay(args) -> int:
    from tasks import replay_failed_tasks

    if bool(args.task_ids) == args.all:
        console.print("[red]give task ids or --all, not both[/]")
        return 2
    replayed = replay_failed_tasks(None if args.all else args.task_ids)
    console.print(f"replayed {len(replayed)} task(s)")
    for task_id in replayed:
        console.print(task_id)
    return 0


def _cmd_cancel(args) -> None:
    from tasks import cancel_task

    console.print(f"{args.task_id}: {cancel_task(args.task_id)}")


def worker_argv(settings, extra: list[str]) -> list[str]:
    """The `celery worker` command line for these settings."""
    return ["celery", "-A", "worker", "worker", f"--pool={settings.worker_pool}",
            f"--concurrency={settings.worker_concurrency}", "-Q", settings.worker_queues, "--loglevel=INFO", *extra]


def _cmd_worker(args) -> None:
    argv = worker_argv(get_settings(), args.celery_args)
    os.execv(sys.executable, [sys.executable, "-m", *argv])


def _cmd_demo(args) -> int:
    from demo import run_demo

    return run_demo(task_count=args.tasks)


def task_table(tasks: list[Task], *, title: str = "Tasks", full_ids: bool = True) -> Table:
    """A rich table of tasks: status, attempts, tokens, timings and the start of the result or error."""
    table = Table(title=title)
    # Fixed widths, and the result gets only what is left: rich otherwise squeezes the short columns
    # to nothing on a narrow terminal.
    widths = {"id": 36 if full_ids else 8, "status": 9, "tries": 5, "tokens": 6, "ms": 7}
    room = console.width - sum(widths.values()) - 3 * (len(widths) + 2) - 1
    for optional in ("tokens", "tries"):  # a narrow terminal: drop what matters least, not squeeze all
        if room >= 24:
            break
        room += widths.pop(optional) + 3
    widths.update({"title": max(8, room // 3), "result / error": max(16, room - room // 3)})
    for column, width in widths.items():
        table.add_column(column, width=width, no_wrap=True, overflow="ellipsis")
    for task in tasks:
        outcome = task.result if task.status == TaskStatus.COMPLETED else task.error
        duration = str(task.duration_ms) if task.duration_ms is not None else ""
        task_id = str(task.id) if full_ids else str(task.id)[:8]
        cells = {"id": task_id, "status": task.status.value, "tries": str(task.attempts),
                 "tokens": str(task.total_tokens or ""), "ms": duration, "title": task.title,
                 "result / error": " ".join((outcome or "").split())}
        table.add_row(*(cells[column] for column in widths))
    return table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python cli.py", description="Agent Service command line")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def add(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    add("init-db", _cmd_init_db, "apply the database migrations")
    agent = add("create-agent", _cmd_create_agent, "create an agent")
    agent.add_argument("--name", required=True)
    agent.add_argument("--prompt", required=True, help="the agent's system prompt")
    agent.add_argument("--model", help="default: DEFAULT_MODEL")
    agent.add_argument("--temperature", type=float, default=0.7)
    agent.add_argument("--max-tokens", type=int, default=1000)
    agent.add_argument("--settings", default="{}", help='extra model settings as JSON, e.g. {"top_p": 0.9}')
    submit = add("submit", _cmd_submit, "validate, store and queue a task; prints its id")
    submit.add_argument("--agent", required=True, help="agent id or name")
    submit.add_argument("--title", required=True)
    submit.add_argument("--description")
    submit.add_argument("--user", required=True, help="the id of the user the task belongs to")
    submit.add_argument("--idempotency-key")
    add("status", _cmd_status, "show one task").add_argument("task_id")
    listing = add("list", _cmd_list, "list recent tasks")
    listing.add_argument("--status", choices=[s.value for s in TaskStatus])
    listing.add_argument("--limit", type=int, default=20)
    add("cancel", _cmd_cancel, "cancel a queued or running task").add_argument("task_id")
    add("failed", _cmd_failed, "list failed tasks (dead letters)").add_argument("--limit", type=int, default=50)
    replay = add("replay", _cmd_replay, "queue failed tasks again with a fresh attempt budget")
    replay.add_argument("task_ids", nargs="*")
    replay.add_argument("--all", action="store_true", help="every failed task")
    add("worker", _cmd_worker, "run the worker with the pool and concurrency from settings; "
        "other options go to `celery worker`")
    demo = add("demo", _cmd_demo, "run the whole job end to end on the embedded defaults")
    demo.add_argument("--tasks", type=int, default=12)
    return parser


if __name__ == "__main__":
    sys.exit(main())

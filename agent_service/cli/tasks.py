"""Commands on tasks and groups: submit, list, cancel, approve, reject, failed, replay, group."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial
from typing import Any

from sqlalchemy import select

from agent_service.cli.app import configured_app
from agent_service.cli.arguments import parse_json, read_text
from agent_service.cli.output import console, print_error, print_field, print_json, print_records
from agent_service.database import session_scope
from agent_service.errors import TaskValidationError
from agent_service.models import Task, TaskStatus
from agent_service.store import tasks as store_tasks
from agent_service.submission.agents import find_agent
from agent_service.submission.approvals import approve_task, reject_task
from agent_service.submission.groups import group_progress
from agent_service.submission.submit import cancel_task, create_agent_tasks, replay_failed_tasks
from agent_service.terminal.records import TASK_FIELDS, group_record, task_record
from agent_service.terminal.tables import task_table


def cmd_submit(args: argparse.Namespace) -> None:
    app = configured_app()
    with session_scope(app.services.session_factory) as session:
        agent = find_agent(session, args.agent)
    if agent is None:
        raise TaskValidationError(f"no agent named {args.agent!r}")
    data = {
        "title": args.title,
        "description": (
            read_text(args.description_file, what="--description-file") if args.description_file else args.description
        ),
        "user_id": args.user,
        "agent_id": str(agent.id),
    }
    if args.idempotency_key:
        data["idempotency_key"] = args.idempotency_key
    if args.kind:
        data["kind"] = args.kind
    if args.payload is not None:
        data["payload"] = _payload(args.payload)
    ids = create_agent_tasks([data], app=app, services=app.services, group=args.group, on_complete=args.on_complete)
    console.print(ids[0])


def _payload(raw: str) -> Any:
    """`--payload`: JSON text, or `@PATH` for a file's. Raises: TaskValidationError."""
    if raw.startswith("@"):
        return parse_json(read_text(raw[1:], what="--payload"), what=f"--payload {raw}")
    return parse_json(raw, what="--payload")


def cmd_list(args: argparse.Namespace) -> None:
    query = select(Task).order_by(Task.created_at.desc()).limit(args.limit)
    if args.status:
        query = query.where(Task.status == TaskStatus(args.status))
    with session_scope(configured_app().services.session_factory) as session:
        _print_tasks(session.scalars(query).all(), as_json=args.json, title="Tasks")


def cmd_failed(args: argparse.Namespace) -> None:
    with session_scope(configured_app().services.session_factory) as session:
        tasks = store_tasks.failed_tasks(session, limit=args.limit)
        _print_tasks(tasks, as_json=args.json, title="Failed tasks (dead letters)")


def _print_tasks(tasks: Sequence[Task], *, as_json: bool, title: str) -> None:
    """A table on a terminal; for scripts, whole records (`records.TASK_FIELDS`)."""
    records = [task_record(task) for task in tasks]
    table = partial(task_table, tasks, console=console, title=title)
    print_records(records, fields=TASK_FIELDS, as_json=as_json, table=table)


def cmd_replay(args: argparse.Namespace) -> int:
    if bool(args.task_ids) == args.all:
        print_error("error", "give task ids or --all, not both")
        return 2
    app = configured_app()
    replayed = replay_failed_tasks(None if args.all else args.task_ids, app=app, services=app.services)
    console.print(f"replayed {len(replayed)} task(s)")
    for task_id in replayed:
        console.print(task_id)
    return 0


def cmd_approve(args: argparse.Namespace) -> None:
    app = configured_app()
    tools = approve_task(args.task_id, app=app, services=app.services, note=args.note)
    console.print(f"approved: {', '.join(tools)}; task {args.task_id} queued to go on")


def cmd_reject(args: argparse.Namespace) -> None:
    app = configured_app()
    tools = reject_task(args.task_id, app=app, services=app.services, note=args.note)
    console.print(f"rejected: {', '.join(tools)}; task {args.task_id} queued to go on without them")


def cmd_cancel(args: argparse.Namespace) -> None:
    app = configured_app()
    console.print(f"{args.task_id}: {cancel_task(args.task_id, services=app.services, app=app)}")


def cmd_group(args: argparse.Namespace) -> None:
    progress = group_progress(args.group_id, services=configured_app().services)
    if args.json:
        print_json(group_record(progress))
        return
    print_field("group", progress.group_id)
    print_field("user", progress.user_id)
    print_field("tasks", f"{progress.tasks}, {progress.unfinished} not finished")
    for status, count in progress.counts.items():
        if count or status.is_final:
            print_field(status.value, str(count))
    print_field("tokens", f"{progress.prompt_tokens} prompt + {progress.completion_tokens} completion")
    cost = "-" if progress.cost_usd is None else f"${progress.cost_usd:.6f}"
    unpriced = f" ({progress.unpriced_tasks} task(s) with no price for their model)" if progress.unpriced_tasks else ""
    print_field("cost", cost + unpriced)
    print_field("created", str(progress.created_at))
    print_field("ended", str(progress.ended_at) if progress.ended_at else "not yet")
    if progress.callback:
        sent = f"sent at {progress.callback_sent_at}" if progress.callback_sent_at else "not sent"
        print_field("on_complete", f"{progress.callback} ({sent})")

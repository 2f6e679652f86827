"""Commands that look at tasks: status (every field, attempt and step), follow (live), stats."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from functools import partial
from typing import Any

from rich.text import Text

from agent_service.admission.pause import paused_since
from agent_service.cli.app import configured_app
from agent_service.cli.output import console, print_error, print_field, print_json, print_records
from agent_service.clock import utcnow
from agent_service.config import get_settings
from agent_service.database import session_scope
from agent_service.ids import parse_task_id
from agent_service.live.events import EventKind, LiveEvent
from agent_service.models import StepType, Task, TaskStatus, TaskStep
from agent_service.monitoring import configure_logging, logger
from agent_service.store import lifecycle, steps
from agent_service.store import tasks as store_tasks
from agent_service.store.stats import GroupBy, TaskStats, task_stats
from agent_service.terminal.records import STATS_FIELDS, stats_record, task_details
from agent_service.terminal.tables import stats_table

STATUS_PAYLOAD_CHARS = 300  # of a task's payload, as JSON, shown by `status`
STEP_TEXT_CHARS = 120  # of a step's arguments and result, on its status line
_DETAILS_CHARS = 300  # of an event's details, on its line


def cmd_status(args: argparse.Namespace) -> int:
    with session_scope(configured_app().services.session_factory) as session:
        task = session.get(Task, parse_task_id(args.task_id))
        if task is None:
            print_error("error", f"no task {args.task_id}")
            return 1
        fields = {c.name: getattr(task, c.name) for c in Task.__table__.columns}
        fields["kind"] = f"{task.kind} (set on the task)" if task.kind else f"{task.agent.kind} (its agent's)"
        task_steps = steps.step_rows(session, task.id)
        if args.json:
            print_json(task_details(task, steps=task_steps))
            return 0
        history = [(h.attempt, h.outcome, h.at, h.error, _charged(h)) for h in task.attempt_history]
        charged = _charged(task)
        step_lines = [_step_line(step) for step in task_steps]
    if fields["waiting_reason"] and not fields["status"].is_final:
        console.print(Text.assemble(("waiting: ", "bold yellow"), fields["waiting_reason"]))
    for name, value in fields.items():
        print_field(name, _shown(name, value))
    print_field("cost", charged)
    for attempt, outcome, at, error, paid in history:
        print_field(f"attempt {attempt}", f"{outcome} at {at}{f' ({paid})' if paid else ''}: {error}")
    for position, line in step_lines:
        print_field(f"step {position}", line)
    since = _paused_since()
    if since is not None:
        print_field("service", f"paused since {since}: no task calls the model until `python cli.py resume`")
    return 0


def _shown(name: str, value: Any) -> str:
    """A task's field as `status` shows it: its JSON result pretty, its payload cut short, the rest as text."""
    if name == "result_data" and value is not None:
        return json.dumps(value, indent=2, ensure_ascii=False)
    if name == "payload" and value is not None:
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= STATUS_PAYLOAD_CHARS else f"{text[:STATUS_PAYLOAD_CHARS]}... ({len(text)} chars)"
    return str(value.value if isinstance(value, TaskStatus) else value)


def _step_line(step: TaskStep) -> tuple[int, str]:
    """One step as `status` shows it: a model turn's model, status, cost and the tools it asked for; a tool
    call's tool, status, arguments and the start of its result (no header is ever stored, secrets included)."""
    if step.step_type is StepType.MODEL_TURN:
        asked = ", ".join(call["name"] for call in step.tool_calls or ()) or "final answer"
        return step.position, f"model turn {step.model}: {step.status.value} ({_charged(step) or 'no usage'}); {asked}"
    line = f"tool call {step.tool_name}: {step.status.value} {_short(json.dumps(step.arguments))}"
    if step.approval_expires_at is not None:
        decided = f", decided {step.decided_at}" if step.decided_at else f", expires {step.approval_expires_at}"
        line += f" (approval{decided}{f': {step.approval_note}' if step.approval_note else ''})"
    return step.position, line + (f" -> {_short(step.content)}" if step.content else "")


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= STEP_TEXT_CHARS else flat[: STEP_TEXT_CHARS - 1] + "…"


def _charged(row: Any) -> str:
    """Tokens and cost of a task (all its attempts) or of one attempt; empty when no call was answered."""
    if row.prompt_tokens is None:
        return ""
    cost = "no price for its model" if row.cost_usd is None else f"${row.cost_usd:.6f}"
    tokens = f"{row.prompt_tokens} prompt ({row.cached_tokens or 0} cached) + {row.completion_tokens} completion tokens"
    return f"{cost}; {tokens}"


def _paused_since() -> str | None:
    """When the service was paused, or None; a set-up without Redis cannot be paused."""
    services = configured_app().services
    return paused_since(services.redis) if services.settings.redis_url else None


def cmd_follow(args: argparse.Namespace) -> int:
    """Print the task's progress live (its tokens as they come, each step on a line), then its final state;
    exits 0 when it completed, 1 otherwise."""
    from agent_service.tasks import follow_agent_task  # tasks imports the configured app; see configured_app

    app = configured_app()
    task_id = parse_task_id(args.task_id)
    with session_scope(app.services.session_factory) as session:
        status = store_tasks.task_status(session, task_id)
    printed = False if status.is_final else _print_live(follow_agent_task(str(task_id), app=app))
    with session_scope(app.services.session_factory) as session:
        finished = lifecycle.finished_state(session, task_id)
    if finished is None:  # cannot be: the task ended, or following it would still be under way
        print_error("error", f"task {task_id} has not ended")
        return 1
    if finished.result is not None and not printed:
        console.print(Text(finished.result))
    ending = f": {finished.error}" if finished.error and finished.status is not TaskStatus.CANCELLED else ""
    style = "bold green" if finished.status is TaskStatus.COMPLETED else "bold red"
    console.print(Text.assemble((finished.status.value, style), ending))
    return 0 if finished.status is TaskStatus.COMPLETED else 1


def _print_live(events: Iterable[LiveEvent]) -> bool:
    """Print the events: tokens as they come, anything else on a line of its own (the `ended` event is left
    to the caller). Returns whether any token was printed."""
    printed = mid_line = False
    for event in events:
        if event.kind is EventKind.TOKEN:
            text = str(event.data.get("text", ""))
            console.print(Text(text), end="", soft_wrap=True)
            printed, mid_line = True, not text.endswith("\n")
            continue
        if mid_line:
            console.print()
            mid_line = False
        if event.kind is not EventKind.ENDED:
            details = json.dumps(event.data, ensure_ascii=False)
            console.print(Text.assemble((f"[{event.kind.value}]", "dim"), " ", details[:_DETAILS_CHARS]))
    return printed


def cmd_stats(args: argparse.Namespace) -> None:
    configure_logging(json_lines=get_settings().log_json)  # the per-group lines go to stderr, the table to stdout
    with session_scope(configured_app().services.session_factory) as session:
        figures = task_stats(session, by=args.by and GroupBy(args.by), since=utcnow() - args.since)
    by = args.by or "all"
    records = [stats_record(group, by=by) for group in figures]
    table = partial(stats_table, figures, by=by, since=args.since)
    print_records(records, fields=STATS_FIELDS, as_json=args.json, table=table)
    for group in figures:
        _log_performance(args.by or "all", group)


def _log_performance(by: str, figures: TaskStats) -> None:
    """One log line per group, as the design's `log_agent_performance`."""
    logger.info(
        "%s performance - %s: %s, tasks: %d, success: %s, avg duration: %s ms, p95: %s ms, tokens: %d, cost: $%.6f",
        by.capitalize(),
        by,
        figures.group,
        figures.tasks,
        "-" if figures.success_rate is None else f"{figures.success_rate:.1%}",
        "-" if figures.avg_duration_ms is None else f"{figures.avg_duration_ms:.0f}",
        "-" if figures.p95_duration_ms is None else f"{figures.p95_duration_ms:.0f}",
        figures.prompt_tokens + figures.completion_tokens,
        figures.cost_usd,
    )

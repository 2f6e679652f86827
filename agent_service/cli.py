"""Command line: `python cli.py init-db | create-agent | submit | status | follow | list | group | stats | cancel |
approve | reject | limits | pause | resume | worker | flower | demo` and more (`--help`)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from agent_service.admission import OVERRIDE_NAMES
from agent_service.admission.pause import pause, paused_since, resume
from agent_service.clock import utcnow
from agent_service.config import Settings, get_settings, is_loopback_host
from agent_service.database import create_database_if_missing, session_scope
from agent_service.errors import AgentServiceError, ConfigurationError, TaskValidationError
from agent_service.ids import parse_task_id
from agent_service.kinds.base import KindName
from agent_service.live.events import EventKind, LiveEvent
from agent_service.models import LimitOverride, LimitScope, StepType, Task, TaskStatus, TaskStep
from agent_service.monitoring import configure_logging, logger
from agent_service.store import lifecycle, steps
from agent_service.store.overrides import set_override
from agent_service.store.schema import init_db
from agent_service.store.stats import GroupBy, TaskStats, task_stats
from agent_service.submission.agents import create_agent, find_agent
from agent_service.submission.approvals import approve_task, reject_task
from agent_service.submission.groups import group_progress
from agent_service.submission.submit import cancel_task, create_agent_tasks, replay_failed_tasks
from agent_service.terminal.tables import stats_table, task_table

if TYPE_CHECKING:
    from agent_service.worker import AgentServiceCelery

# Titles, descriptions, results, errors and ids are user data: nothing printed is read as markup or emoji
# codes. Styling is explicit (`Text`, `style=`), never spelled inside a string.
console = Console(markup=False, emoji=False, highlight=False)


def _app() -> AgentServiceCelery:
    """The configured app, built on first use: `--help` and `init-db` answer without it."""
    from agent_service import worker

    return worker.app


def main(argv: list[str] | None = None) -> int:
    args, unknown = _parser().parse_known_args(argv)
    if unknown and args.handler not in (_cmd_worker, _cmd_flower):
        _parser().error(f"unrecognized arguments: {' '.join(unknown)}")
    args.celery_args = unknown
    try:
        get_settings()  # a bad setting is reported here, before any command starts
        return args.handler(args) or 0
    except ConfigurationError as exc:
        _error("configuration error", str(exc))
        return 1
    except AgentServiceError as exc:
        _error("error", str(exc))
        return 2
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        # init-db is what the usual hint suggests; for init-db itself, only the URL or the server can be wrong.
        hint = "is DATABASE_URL right and the server up?" if args.handler is _cmd_init_db else _SCHEMA_HINT
        _error("database error", f"{reason} ({hint})")
        return 1


STATUS_PAYLOAD_CHARS = 300  # of a task's payload, as JSON, shown by `status`
_SCHEMA_HINT = "is DATABASE_URL right, and has `python cli.py init-db` been run?"


def _error(label: str, message: str) -> None:
    console.print(Text.assemble((f"{label}:", "bold red"), " ", message), soft_wrap=True)


def _cmd_init_db(args: argparse.Namespace) -> None:
    database = create_database_if_missing(get_settings().database_url)
    if database:
        console.print(f"created database {database}")
    init_db()
    console.print("database schema is up to date")


def _cmd_create_agent(args: argparse.Namespace) -> None:
    services = _app().services
    settings = _json(args.settings, what="--settings")
    if args.choices is not None:
        settings = {**settings, "choices": [choice.strip() for choice in args.choices.split(",")]}
    data = {
        "name": args.name,
        "prompt": args.prompt,
        "model": args.model or services.settings.default_model,
        "fallback_model": args.fallback_model,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "settings": settings,
        "kind": args.kind,
    }
    if args.schema:
        data["output_schema"] = _json(_read_text(args.schema, what="--schema"), what=f"--schema {args.schema}")
    if args.tools:
        data["tools"] = _json(_read_text(args.tools, what="--tools"), what=f"--tools {args.tools}")
    with session_scope(services.session_factory) as session:
        agent = create_agent(session, data)
    console.print(f"agent {agent.name} created: {agent.id} ({agent.kind})")


def _json(raw: str, *, what: str) -> Any:
    """The JSON value `raw` holds. Raises: TaskValidationError naming `what` when it is not JSON."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TaskValidationError(f"{what} is not valid JSON: {exc}") from None


def _cmd_submit(args: argparse.Namespace) -> None:
    with session_scope(_app().services.session_factory) as session:
        agent = find_agent(session, args.agent)
    if agent is None:
        raise TaskValidationError(f"no agent named {args.agent!r}")
    data = {
        "title": args.title,
        "description": (
            _read_text(args.description_file, what="--description-file") if args.description_file else args.description
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
    ids = create_agent_tasks(
        [data], app=_app(), services=_app().services, group=args.group, on_complete=args.on_complete
    )
    console.print(ids[0])


def _payload(raw: str) -> Any:
    """`--payload`: JSON text, or `@PATH` for a file's. Raises: TaskValidationError."""
    if raw.startswith("@"):
        return _json(_read_text(raw[1:], what="--payload"), what=f"--payload {raw}")
    return _json(raw, what="--payload")


def _read_text(path: str, *, what: str) -> str:
    """The UTF-8 text of file `path`, or of standard input for `-`, given as option `what`.
    Raises: TaskValidationError when it cannot be read or is not UTF-8."""
    try:
        return (sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()).decode("utf-8")
    except OSError as exc:
        raise TaskValidationError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TaskValidationError(f"{what} {path} is not UTF-8 text") from None


def _cmd_status(args: argparse.Namespace) -> int:
    with session_scope(_app().services.session_factory) as session:
        task = session.get(Task, parse_task_id(args.task_id))
        if task is None:
            _error("error", f"no task {args.task_id}")
            return 1
        fields = {c.name: getattr(task, c.name) for c in Task.__table__.columns}
        fields["kind"] = f"{task.kind} (set on the task)" if task.kind else f"{task.agent.kind} (its agent's)"
        history = [(h.attempt, h.outcome, h.at, h.error, _charged(h)) for h in task.attempt_history]
        charged = _charged(task)
        step_lines = [_step_line(step) for step in steps.step_rows(session, task.id)]
    if fields["waiting_reason"] and not fields["status"].is_final:
        console.print(Text.assemble(("waiting: ", "bold yellow"), fields["waiting_reason"]))
    for name, value in fields.items():
        _field(name, _shown(name, value))
    _field("cost", charged)
    for attempt, outcome, at, error, paid in history:
        _field(f"attempt {attempt}", f"{outcome} at {at}{f' ({paid})' if paid else ''}: {error}")
    for position, line in step_lines:
        _field(f"step {position}", line)
    since = _paused_since()
    if since is not None:
        _field("service", f"paused since {since}: no task calls the model until `python cli.py resume`")
    return 0


def _shown(name: str, value: Any) -> str:
    """A task's field as `status` shows it: its JSON result pretty, its payload cut short, the rest as text."""
    if name == "result_data" and value is not None:
        return json.dumps(value, indent=2, ensure_ascii=False)
    if name == "payload" and value is not None:
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= STATUS_PAYLOAD_CHARS else f"{text[:STATUS_PAYLOAD_CHARS]}... ({len(text)} chars)"
    return str(value.value if isinstance(value, TaskStatus) else value)


def _cmd_follow(args: argparse.Namespace) -> int:
    """Print the task's progress live (its tokens as they come, each step on a line), then its final state;
    exits 0 when it completed, 1 otherwise."""
    from agent_service.tasks import follow_agent_task  # tasks imports the configured app; see _app

    services = _app().services
    task_id = parse_task_id(args.task_id)
    with session_scope(services.session_factory) as session:
        status = lifecycle.task_status(session, task_id)
    printed = False if status.is_final else _print_live(follow_agent_task(str(task_id), app=_app()))
    with session_scope(services.session_factory) as session:
        finished = lifecycle.finished_state(session, task_id)
    if finished is None:  # cannot be: the task ended, or following it would still be under way
        _error("error", f"task {task_id} has not ended")
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


_DETAILS_CHARS = 300  # of an event's details, on its line


STEP_TEXT_CHARS = 120  # of a step's arguments and result, on its status line


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


def _cmd_stats(args: argparse.Namespace) -> None:
    configure_logging(json_lines=get_settings().log_json)  # the per-group lines go to stderr, the table to stdout
    with session_scope(_app().services.session_factory) as session:
        figures = task_stats(session, by=args.by and GroupBy(args.by), since=utcnow() - args.since)
    console.print(stats_table(figures, by=args.by or "all", since=args.since))
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


def _duration(text: str) -> timedelta:
    """`30m`, `24h`, `7d` (or seconds: `90s`, `90`) as a timedelta, for argparse."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30m, 24h or 7d, got {text!r}")
    unit = {"": "seconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[found.group(2)]
    return timedelta(**{unit: float(found.group(1))})


def _paused_since() -> str | None:
    """When the service was paused, or None; a set-up without Redis cannot be paused."""
    services = _app().services
    return paused_since(services.redis) if services.settings.redis_url else None


def _cmd_pause(args: argparse.Namespace) -> None:
    services = _app().services
    pause(services.redis)
    console.print(f"paused since {paused_since(services.redis)}: workers start no new LLM call")
    if not services.settings.pause_enabled:
        console.print("warning: PAUSE_ENABLED is off in this configuration; workers obey a pause only with it on")


def _cmd_resume(args: argparse.Namespace) -> None:
    was_paused = resume(_app().services.redis)
    console.print("resumed: waiting tasks run again within seconds" if was_paused else "was not paused")


def _field(name: str, value: str) -> None:
    # A value of several lines (a JSON result) keeps to its column.
    console.print(Text.assemble((f"{name:>17}", "bold"), " ", value.replace("\n", "\n" + " " * 18)))


def _cmd_list(args: argparse.Namespace) -> None:
    query = select(Task).order_by(Task.created_at.desc()).limit(args.limit)
    if args.status:
        query = query.where(Task.status == TaskStatus(args.status))
    with session_scope(_app().services.session_factory) as session:
        console.print(task_table(session.scalars(query).all(), console=console))


def _cmd_failed(args: argparse.Namespace) -> None:
    with session_scope(_app().services.session_factory) as session:
        tasks = lifecycle.failed_tasks(session, limit=args.limit)
        console.print(task_table(tasks, console=console, title="Failed tasks (dead letters)"))


def _cmd_replay(args: argparse.Namespace) -> int:
    if bool(args.task_ids) == args.all:
        _error("error", "give task ids or --all, not both")
        return 2
    replayed = replay_failed_tasks(None if args.all else args.task_ids, app=_app(), services=_app().services)
    console.print(f"replayed {len(replayed)} task(s)")
    for task_id in replayed:
        console.print(task_id)
    return 0


def _cmd_limits(args: argparse.Namespace) -> int:
    scope, subject = next((s, getattr(args, s.value)) for s in LimitScope if getattr(args, s.value) is not None)
    name = getattr(args, "name", None)  # `list` names none
    if name is not None:
        _check_limit(name, scope, getattr(args, "value", None) if args.action == "set" else "0")
    with session_scope(_app().services.session_factory) as session:
        if scope is LimitScope.AGENT:  # by name or id on the command line; by id in the table
            agent = find_agent(session, subject)
            if agent is None:
                raise TaskValidationError(f"no agent named {subject!r}")
            subject = str(agent.id)
        if name is not None:
            set_override(session, scope, subject, name, args.value if args.action == "set" else None)
        rows = session.scalars(
            select(LimitOverride).where(LimitOverride.scope == scope, LimitOverride.subject == subject)
        ).all()
        for row in sorted(rows, key=lambda row: row.name):
            console.print(f"{scope.value} {subject}: {row.name} = {row.value}")
    return 0


LIMIT_ARGUMENT_HELP = {"name": "the limit's name (docs/reference/cli.md#limits)", "value": "a number, 0 or more"}


def _check_limit(name: str, scope: LimitScope, value: str | None) -> None:
    """Raises: TaskValidationError for a limit no worker would read: an unknown name, one not read for this
    scope, or a value that is not a number of at least 0."""
    if name not in OVERRIDE_NAMES:
        raise TaskValidationError(f"no limit named {name!r}; known: {', '.join(sorted(OVERRIDE_NAMES))}")
    if scope not in OVERRIDE_NAMES[name].scopes:
        whom = ", ".join(f"--{allowed.value}" for allowed in sorted(OVERRIDE_NAMES[name].scopes))
        raise TaskValidationError(f"{name} is set per {whom} only; workers never read it per --{scope.value}")
    try:
        number = float(value) if value is not None else None
    except ValueError:
        number = None
    if number is None or not number >= 0:
        raise TaskValidationError(f"limits set {name} needs a number of at least 0, got {value!r}")


def _cmd_approve(args: argparse.Namespace) -> None:
    tools = approve_task(args.task_id, app=_app(), services=_app().services, note=args.note)
    console.print(f"approved: {', '.join(tools)}; task {args.task_id} queued to go on")


def _cmd_reject(args: argparse.Namespace) -> None:
    tools = reject_task(args.task_id, app=_app(), services=_app().services, note=args.note)
    console.print(f"rejected: {', '.join(tools)}; task {args.task_id} queued to go on without them")


def _cmd_cancel(args: argparse.Namespace) -> None:
    console.print(f"{args.task_id}: {cancel_task(args.task_id, services=_app().services, app=_app())}")


def _cmd_group(args: argparse.Namespace) -> None:
    progress = group_progress(args.group_id, services=_app().services)
    _field("group", progress.group_id)
    _field("user", progress.user_id)
    _field("tasks", f"{progress.tasks}, {progress.unfinished} not finished")
    for status, count in progress.counts.items():
        if count or status.is_final:
            _field(status.value, str(count))
    _field("tokens", f"{progress.prompt_tokens} prompt + {progress.completion_tokens} completion")
    cost = "-" if progress.cost_usd is None else f"${progress.cost_usd:.6f}"
    unpriced = f" ({progress.unpriced_tasks} task(s) with no price for their model)" if progress.unpriced_tasks else ""
    _field("cost", cost + unpriced)
    _field("created", str(progress.created_at))
    _field("ended", str(progress.ended_at) if progress.ended_at else "not yet")
    if progress.callback:
        sent = f"sent at {progress.callback_sent_at}" if progress.callback_sent_at else "not sent"
        _field("on_complete", f"{progress.callback} ({sent})")


def worker_argv(settings: Settings, extra: list[str]) -> list[str]:
    """The `celery worker` command line for these settings."""
    return [
        "celery",
        "-A",
        "agent_service.worker",
        "worker",
        f"--pool={settings.worker_pool}",
        f"--concurrency={settings.worker_concurrency}",
        "-Q",
        settings.worker_queues,
        "--loglevel=INFO",
        *extra,
    ]


def _cmd_worker(args: argparse.Namespace) -> None:
    argv = worker_argv(get_settings(), args.celery_args)
    os.execv(sys.executable, [sys.executable, "-m", *argv])


def flower_argv(settings: Settings, extra: list[str]) -> list[str]:
    """The `celery flower` command line for these settings. The logins stay off it, and so out of `ps`:
    Flower reads FLOWER_BASIC_AUTH from its environment."""
    return [
        "celery",
        "-A",
        "agent_service.worker",
        "flower",
        f"--address={settings.flower_address}",
        f"--port={settings.flower_port}",
        *extra,
    ]


def flower_refusal(settings: Settings, extra: list[str]) -> str | None:
    """Why Flower must not start with these settings and extra options, or None. It shows every task's
    arguments and results, so beyond loopback it needs a login."""
    for arg in extra:
        option = arg.lstrip("-").partition("=")[0].replace("-", "_")
        if option in ("address", "port", "basic_auth"):
            return f"set FLOWER_{option.upper()} rather than passing {arg.partition('=')[0]}"
    if settings.flower_basic_auth is None and not is_loopback_host(settings.flower_address):
        where = f"{settings.flower_address or 'every address'}:{settings.flower_port}"
        fix = "set FLOWER_BASIC_AUTH=user:password, or FLOWER_ADDRESS=127.0.0.1"
        return f"Flower would serve {where} with no login: {fix}"
    return None


def _cmd_flower(args: argparse.Namespace) -> int:
    settings = get_settings()
    refusal = flower_refusal(settings, args.celery_args)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 1
    env = {**os.environ, **{name: value for name, value in settings.as_env().items() if name.startswith("FLOWER_")}}
    os.execve(sys.executable, [sys.executable, "-m", *flower_argv(settings, args.celery_args)], env)


def _cmd_demo(args: argparse.Namespace) -> int:
    from agent_service.devtools.demo import run_demo  # demo imports the configured app; see _app

    return run_demo(task_count=args.tasks, console=console)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python cli.py", description="Agent Service command line")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int | None], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    add("init-db", _cmd_init_db, "apply the database migrations")
    agent = add("create-agent", _cmd_create_agent, "create an agent")
    agent.add_argument("--name", required=True)
    agent.add_argument("--prompt", required=True, help="the agent's system prompt")
    agent.add_argument("--model", help="default: DEFAULT_MODEL")
    agent.add_argument("--fallback-model", help="called instead while the model's circuit breaker is open")
    agent.add_argument("--temperature", type=float, default=0.7)
    agent.add_argument("--max-tokens", type=int, default=1000)
    agent.add_argument("--settings", default="{}", help='extra model settings as JSON, e.g. {"top_p": 0.9}')
    agent.add_argument("--kind", choices=[kind.value for kind in KindName], default=KindName.TEXT.value)
    agent.add_argument("--schema", metavar="FILE", help="data kind: the JSON Schema of its results (a JSON file)")
    agent.add_argument("--tools", metavar="FILE", help="api kind: its HTTP tools (a JSON file: a list of objects)")
    agent.add_argument("--choices", metavar="A,B,C", help="decision kind: the options, unless a task gives its own")
    submit = add("submit", _cmd_submit, "validate, store and queue a task; prints its id")
    submit.add_argument("--agent", required=True, help="agent id or name")
    submit.add_argument("--title", required=True)
    description = submit.add_mutually_exclusive_group()
    description.add_argument("--description")
    description.add_argument(
        "--description-file", metavar="PATH", help="read the description from a UTF-8 file, or from standard input: -"
    )
    submit.add_argument("--user", required=True, help="the id of the user the task belongs to")
    submit.add_argument("--idempotency-key")
    submit.add_argument("--kind", choices=[kind.value for kind in KindName], help="instead of the agent's kind")
    submit.add_argument("--payload", metavar="JSON|@FILE", help="the task's JSON input, or @FILE to read it from FILE")
    submit.add_argument("--group", help="add the task to this group of the user's (created if new)")
    submit.add_argument(
        "--on-complete", metavar="CELERY_TASK", help="with a new --group: the Celery task to send once it has ended"
    )
    add("status", _cmd_status, "show one task").add_argument("task_id")
    add("follow", _cmd_follow, "print a task's progress live until it ends; exit 0 if it completed").add_argument(
        "task_id"
    )
    listing = add("list", _cmd_list, "list recent tasks")
    listing.add_argument("--status", choices=[s.value for s in TaskStatus])
    listing.add_argument("--limit", type=int, default=20)
    stats = add("stats", _cmd_stats, "tasks, success rate, durations, tokens and cost of the tasks finished lately")
    stats.add_argument("--by", choices=[group.value for group in GroupBy], help="one line per agent, user or model")
    stats.add_argument("--since", type=_duration, default=timedelta(hours=24), help="e.g. 30m, 24h, 7d (default 24h)")
    add("cancel", _cmd_cancel, "cancel a queued or running task").add_argument("task_id")
    add("group", _cmd_group, "a group's progress: tasks by status, tokens, cost, its end and callback").add_argument(
        "group_id"
    )
    for name, handler, what in (
        ("approve", _cmd_approve, "approve the tool calls a task awaits approval for; it goes on"),
        ("reject", _cmd_reject, "reject them: never made, the model is told; the task goes on"),
    ):
        decision = add(name, handler, what)
        decision.add_argument("task_id")
        decision.add_argument("--note", help="why, kept with the decision (a rejection's note reaches the model)")
    limits = add("limits", _cmd_limits, "list, set or unset an agent's, a user's or a model's own limits")
    actions = limits.add_subparsers(dest="action", required=True, metavar="ACTION")
    # Each action its own parser with required positionals: `limits set --user u1 NAME VALUE` then parses
    # whichever way round the options come (optional positionals would be taken empty before the option).
    for action, positionals in (("list", ()), ("set", ("name", "value")), ("unset", ("name",))):
        sub = actions.add_parser(action, help=f"{action} a limit" if positionals else "list the limits")
        for positional in positionals:
            sub.add_argument(
                positional, help="the limit's name (docs/reference/cli.md#limits)" if positional == "name" else None
            )
        whom = sub.add_mutually_exclusive_group(required=True)
        for scope in LimitScope:
            whom.add_argument(f"--{scope.value}", metavar=scope.value.upper(), help=f"the {scope.value} it applies to")
    add("pause", _cmd_pause, "stop every worker's new LLM calls (tasks wait, none is lost) until resume")
    add("resume", _cmd_resume, "let the workers call the model again after a pause")
    add("failed", _cmd_failed, "list failed tasks (dead letters)").add_argument("--limit", type=int, default=50)
    replay = add("replay", _cmd_replay, "queue failed tasks again with a fresh attempt budget")
    replay.add_argument("task_ids", nargs="*")
    replay.add_argument("--all", action="store_true", help="every failed task")
    add(
        "worker",
        _cmd_worker,
        "run the worker with the pool and concurrency from settings; other options go to `celery worker`",
    )
    add(
        "flower",
        _cmd_flower,
        "run Flower on FLOWER_ADDRESS:FLOWER_PORT, with FLOWER_BASIC_AUTH logins; other options go to `celery flower`",
    )
    demo = add("demo", _cmd_demo, "run the whole job end to end on the embedded defaults")
    demo.add_argument("--tasks", type=int, default=12)
    return parser


if __name__ == "__main__":
    sys.exit(main())

"""Command line: `python cli.py init-db | create-agent | submit | status | follow | list | group | stats | cancel |
approve | reject | limits | pause | resume | worker | beat | flower | api | api-keys | health | demo` and more
(`--help`).

Here: the parser with its handler table, and the errors a command ends with mapped to exit codes. The commands
live by concern: `admin` (set-up and steering), `tasks` (tasks and groups), `status` (looking at tasks),
`processes` (what execs another process)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from agent_service import health
from agent_service.cli import admin, api, processes, status, tasks
from agent_service.cli.arguments import parse_duration
from agent_service.cli.output import print_error
from agent_service.config import get_settings
from agent_service.errors import AgentServiceError, ConfigurationError
from agent_service.kinds.base import KindName
from agent_service.models import LimitScope, TaskStatus
from agent_service.store.stats import GroupBy

_SCHEMA_HINT = "is DATABASE_URL right, and has `python cli.py init-db` been run?"


def main(argv: list[str] | None = None) -> int:
    args, unknown = _parser().parse_known_args(argv)
    if unknown and args.handler not in (processes.cmd_worker, processes.cmd_beat, processes.cmd_flower):
        _parser().error(f"unrecognized arguments: {' '.join(unknown)}")
    args.celery_args = unknown
    try:
        get_settings()  # a bad setting is reported here, before any command starts
        return args.handler(args) or 0
    except ConfigurationError as exc:
        print_error("configuration error", str(exc))
        return 1
    except AgentServiceError as exc:
        print_error("error", str(exc))
        return 2
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        # init-db is what the usual hint suggests; for init-db itself, only the URL or the server can be wrong.
        hint = "is DATABASE_URL right and the server up?" if args.handler is admin.cmd_init_db else _SCHEMA_HINT
        print_error("database error", f"{reason} ({hint})")
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python cli.py", description="Agent Service command line")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def add(
        name: str, handler: Callable[[argparse.Namespace], int | None], help_text: str, *aliases: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, aliases=aliases)
        sub.set_defaults(handler=handler)
        return sub

    # `migrate`: the name a deployment's one-off step goes by (docker-compose.yml).
    add("init-db", admin.cmd_init_db, "create the database if missing and apply the migrations", "migrate")
    agent = add("create-agent", admin.cmd_create_agent, "create an agent")
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
    submit = add("submit", tasks.cmd_submit, "validate, store and queue a task; prints its id")
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
    shown = add("status", status.cmd_status, "show one task")
    shown.add_argument("task_id")
    _add_json(shown)
    add("follow", status.cmd_follow, "print a task's progress live until it ends; exit 0 if it completed").add_argument(
        "task_id"
    )
    listing = add("list", tasks.cmd_list, "list recent tasks")
    listing.add_argument("--status", choices=[s.value for s in TaskStatus])
    listing.add_argument("--limit", type=int, default=20)
    _add_json(listing)
    stats = add(
        "stats", status.cmd_stats, "tasks, success rate, durations, tokens and cost of the tasks finished lately"
    )
    stats.add_argument("--by", choices=[group.value for group in GroupBy], help="one line per agent, user or model")
    stats.add_argument(
        "--since", type=parse_duration, default=timedelta(hours=24), help="e.g. 30m, 24h, 7d (default 24h)"
    )
    _add_json(stats)
    add("cancel", tasks.cmd_cancel, "cancel a queued or running task").add_argument("task_id")
    group = add("group", tasks.cmd_group, "a group's progress: tasks by status, tokens, cost, its end and callback")
    group.add_argument("group_id")
    _add_json(group)
    for name, handler, what in (
        ("approve", tasks.cmd_approve, "approve the tool calls a task awaits approval for; it goes on"),
        ("reject", tasks.cmd_reject, "reject them: never made, the model is told; the task goes on"),
    ):
        decision = add(name, handler, what)
        decision.add_argument("task_id")
        decision.add_argument("--note", help="why, kept with the decision (a rejection's note reaches the model)")
    limits = add("limits", admin.cmd_limits, "list, set or unset an agent's, a user's or a model's own limits")
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
    add("pause", admin.cmd_pause, "stop every worker's new LLM calls (tasks wait, none is lost) until resume")
    add("resume", admin.cmd_resume, "let the workers call the model again after a pause")
    failed = add("failed", tasks.cmd_failed, "list failed tasks (dead letters)")
    failed.add_argument("--limit", type=int, default=50)
    _add_json(failed)
    replay = add("replay", tasks.cmd_replay, "queue failed tasks again with a fresh attempt budget")
    replay.add_argument("task_ids", nargs="*")
    replay.add_argument("--all", action="store_true", help="every failed task")
    add(
        "worker",
        processes.cmd_worker,
        "run the worker with the pool and concurrency from settings; other options go to `celery worker`",
    )
    add(
        "beat",
        processes.cmd_beat,
        "run beat, the scheduler of the health check and the sweeper (exactly one per deployment); "
        "other options go to `celery beat`",
    )
    add(
        "flower",
        processes.cmd_flower,
        "run Flower on FLOWER_ADDRESS:FLOWER_PORT, with FLOWER_BASIC_AUTH logins; other options go to `celery flower`",
    )
    add("api", api.cmd_api, "serve the HTTP API on API_ADDRESS:API_PORT (docs/guides/http-api.md)")
    keys = add("api-keys", api.cmd_api_keys, "create, revoke or list the HTTP API's keys, each bound to one tenant")
    key_actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    created = key_actions.add_parser("create", help="make a key for a tenant; prints it once")
    created.add_argument("--tenant", required=True, help="the user_id of the tasks the key submits and sees")
    created.add_argument("--name", help="what the key is for, shown by list")
    key_actions.add_parser("revoke", help="revoke a key by its id: it answers 401 from then on").add_argument("key_id")
    listed = key_actions.add_parser("list", help="the keys (never the keys themselves), newest first")
    listed.add_argument("--tenant", help="only this tenant's")
    _add_json(listed)
    health.add_arguments(
        add("health", health.run, "exit 0 if this host's worker (or beat, or Flower) does its job, else 1 and why")
    )
    demo = add("demo", processes.cmd_demo, "run the whole job end to end on the embedded defaults")
    demo.add_argument("--tasks", type=int, default=12)
    return parser


def _add_json(command: argparse.ArgumentParser) -> None:
    """`--json`: records for scripts. Without it, output to a pipe or a file is plain rows, never cut."""
    command.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line for scripts (fields: docs/reference/cli.md#output-for-scripts)",
    )

"""Commands that set the service up and steer it: init-db, create-agent, limits, pause, resume."""

from __future__ import annotations

import argparse

from sqlalchemy import select

from agent_service.admission import OVERRIDE_NAMES
from agent_service.admission.pause import pause, paused_since, resume
from agent_service.cli.app import configured_app
from agent_service.cli.arguments import parse_json, read_text
from agent_service.cli.output import console
from agent_service.config import get_settings
from agent_service.database import create_database_if_missing, session_scope
from agent_service.errors import TaskValidationError
from agent_service.models import LimitOverride, LimitScope
from agent_service.notifications import Event, EventType
from agent_service.services import Services
from agent_service.store.overrides import set_override
from agent_service.store.schema import init_db
from agent_service.submission.agents import create_agent, find_agent


def cmd_init_db(args: argparse.Namespace) -> None:
    database = create_database_if_missing(get_settings().database_url)
    if database:
        console.print(f"created database {database}")
    init_db()
    console.print("database schema is up to date")


def cmd_create_agent(args: argparse.Namespace) -> None:
    services = configured_app().services
    settings = parse_json(args.settings, what="--settings")
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
        data["output_schema"] = parse_json(read_text(args.schema, what="--schema"), what=f"--schema {args.schema}")
    if args.tools:
        data["tools"] = parse_json(read_text(args.tools, what="--tools"), what=f"--tools {args.tools}")
    with session_scope(services.session_factory) as session:
        agent = create_agent(session, data)
    console.print(f"agent {agent.name} created: {agent.id} ({agent.kind})")


def cmd_limits(args: argparse.Namespace) -> int:
    scope, subject = next((s, getattr(args, s.value)) for s in LimitScope if getattr(args, s.value) is not None)
    name = getattr(args, "name", None)  # `list` names none
    if name is not None:
        _check_limit(name, scope, getattr(args, "value", None) if args.action == "set" else "0")
    with session_scope(configured_app().services.session_factory) as session:
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


def cmd_pause(args: argparse.Namespace) -> None:
    services = configured_app().services
    if pause(services.redis):
        _notify(services, Event(EventType.PAUSED, "paused: workers start no new LLM call until resumed"))
    console.print(f"paused since {paused_since(services.redis)}: workers start no new LLM call")
    if not services.settings.pause_enabled:
        console.print("warning: PAUSE_ENABLED is off in this configuration; workers obey a pause only with it on")


def cmd_resume(args: argparse.Namespace) -> None:
    services = configured_app().services
    was_paused = resume(services.redis)
    if was_paused:
        _notify(services, Event(EventType.RESUMED, "resumed: waiting tasks run again within seconds"))
    console.print("resumed: waiting tasks run again within seconds" if was_paused else "was not paused")


def _notify(services: Services, event: Event) -> None:
    """Send `event` before the command exits, waiting at most one delivery's time for it."""
    services.notifier.notify(event)
    if not services.notifier.close(timeout=services.settings.alert_webhook_timeout_seconds):
        console.print(f"warning: the {event.type.value} notification could not be sent (see ALERT_WEBHOOK_URL)")

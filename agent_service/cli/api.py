"""The HTTP API's commands: `api` serves it; `api-keys create | revoke | list` manage its keys."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from rich.table import Table

from agent_service.cli.app import configured_app
from agent_service.cli.output import console, print_error, print_records
from agent_service.clock import utcnow
from agent_service.database import session_scope
from agent_service.errors import TaskValidationError
from agent_service.store import api_keys
from agent_service.terminal.records import json_value

KEY_FIELDS = ("id", "tenant", "name", "created_at", "revoked_at")


def cmd_api(args: argparse.Namespace) -> None:
    from agent_service.http.server import serve  # FastAPI and uvicorn load for this command alone

    serve(configured_app())


def cmd_api_keys(args: argparse.Namespace) -> int:
    return {"create": _create, "revoke": _revoke, "list": _list}[args.action](args)


def _create(args: argparse.Namespace) -> int:
    if not args.tenant.strip() or len(args.tenant) > 200:
        raise TaskValidationError("--tenant: 1 to 200 characters")
    with session_scope(configured_app().services.session_factory) as session:
        row, key = api_keys.create_key(session, tenant=args.tenant, name=args.name)
    console.print(f"key {row.id} of tenant {row.tenant!r} (shown once, keep it secret):", highlight=False)
    print(key)  # alone on its line, unstyled, for scripts: `KEY=$(... | tail -1)`
    return 0


def _revoke(args: argparse.Namespace) -> int:
    try:
        key_id = uuid.UUID(args.key_id)
    except ValueError:
        raise TaskValidationError(f"not a key id: {args.key_id!r}") from None
    with session_scope(configured_app().services.session_factory) as session:
        revoked = api_keys.revoke_key(session, key_id, now=utcnow())
    if not revoked:
        print_error("error", f"no unrevoked key {key_id}")
        return 1
    console.print(f"revoked {key_id}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with session_scope(configured_app().services.session_factory) as session:
        rows = api_keys.list_keys(session, tenant=args.tenant)
        records = [{name: json_value(getattr(row, name)) for name in KEY_FIELDS} for row in rows]
    print_records(records, fields=KEY_FIELDS, as_json=args.json, table=lambda: _key_table(records))
    return 0


def _key_table(records: list[dict[str, Any]]) -> Table:
    table = Table(title="API keys")
    for name in KEY_FIELDS:
        table.add_column(name)
    for record in records:
        table.add_row(*("" if record[name] is None else str(record[name]) for name in KEY_FIELDS))
    return table

"""Fixtures of the HTTP API's tests: `python cli.py api` as a real process on loopback, over the api kind's app
and worker (tests/integration/api: the idle broker, the bundled tool server, scripted agents), and API keys of
two tenants."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.devtools.processes import api_server
from agent_service.store.api_keys import create_key
from tests.integration.api.conftest import api_agent, api_app, api_settings, api_worker, tools  # noqa: F401
from tests.integration.conftest import LOG_DIR


@dataclass(frozen=True)
class Tenant:
    name: str
    key: str
    key_id: uuid.UUID

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@contextmanager
def serving_api(settings: Settings, *, log_name: str = "http-api.log") -> Iterator[str]:
    """`python cli.py api` on a free loopback port with `settings`; yields its base URL once it listens."""
    with api_server({"PATH": "/usr/bin:/bin", **settings.as_env()}, log_path=LOG_DIR / log_name) as url:
        yield url


def make_tenant(session_factory, prefix: str) -> Tenant:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with session_scope(session_factory) as session:
        row, key = create_key(session, tenant=name)
    return Tenant(name, key, row.id)


@pytest.fixture(scope="module")
def api_url(api_settings: Settings) -> Iterator[str]:  # noqa: F811 (the fixture imported above)
    with serving_api(api_settings) as url:
        yield url


@pytest.fixture
def tenant_a(session_factory) -> Tenant:
    return make_tenant(session_factory, "tenant-a")


@pytest.fixture
def tenant_b(session_factory) -> Tenant:
    return make_tenant(session_factory, "tenant-b")

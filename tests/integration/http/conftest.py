"""Fixtures of the HTTP API's tests: `python cli.py api` as a real process on loopback, over the api kind's app
and worker (tests/integration/api: the idle broker, the bundled tool server, scripted agents), and API keys of
two tenants."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest

from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.devtools.processes import ROOT, stop_process
from agent_service.store.api_keys import create_key
from tests.integration.api.conftest import api_agent, api_app, api_settings, api_worker, tools  # noqa: F401
from tests.integration.conftest import LOG_DIR
from tests.support import free_port, wait_until


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
    """`python cli.py api` on a free loopback port with `settings`; yields its base URL once /healthz answers."""
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", **settings.as_env(), "API_ADDRESS": "127.0.0.1", "API_PORT": str(port)}
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / log_name).open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "cli.py", "api"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url) or process.poll() is not None, what="API server", timeout=60)
        assert process.poll() is None, f"the API server exited: see {LOG_DIR / log_name}"
        yield url
    finally:
        stop_process(process)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


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

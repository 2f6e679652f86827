"""The served contract holds against the real server: schemathesis generates requests from `/openapi.json` and
sends them to `python cli.py api` on loopback (real PostgreSQL and Redis), with a tenant's key and with a revoked
one. No answer is a 5xx; every status, content type, header and body is the one the document gives."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_service.clock import utcnow
from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.store.api_keys import revoke_key
from tests.integration.http.conftest import make_tenant, serving_api

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    )
)
OPENAPI = Path(__file__).resolve().parents[3] / "docs" / "reference" / "openapi.json"
MAX_EXAMPLES = 15  # per operation and phase: the whole run stays within seconds


@pytest.fixture(scope="module")
def contract_url(api_settings: Settings) -> Iterator[str]:
    # A rate a generated run never reaches: 429 is documented, but answers that are all 429 test nothing else.
    with serving_api(
        api_settings.model_copy(update={"api_requests_per_minute": 1_000_000}), log_name="http-api-schema.log"
    ) as url:
        yield url


def schemathesis(url: str, key: str, tmp_path: Path) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing",
        "--generation-deterministic",
        "--request-timeout",
        "20",
        "--no-color",
    ]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def assert_conforms(run: subprocess.CompletedProcess) -> None:
    """Every operation was tested, and no check failed (schemathesis's report says why otherwise)."""
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    document = json.loads(OPENAPI.read_text())
    operations = sum(len(operations) for operations in document["paths"].values())
    assert f"Tested: {operations}\n" in run.stdout and " passed" in run.stdout, run.stdout[-3000:]


def test_every_generated_request_with_a_tenants_key_gets_an_answer_the_document_gives(
    contract_url, session_factory, tmp_path
):
    tenant = make_tenant(session_factory, "schema")
    run = schemathesis(contract_url, tenant.key, tmp_path)
    assert_conforms(run)


def test_every_generated_request_with_a_revoked_key_gets_an_answer_the_document_gives(
    contract_url, session_factory, tmp_path
):
    tenant = make_tenant(session_factory, "schema-revoked")
    with session_scope(session_factory) as session:
        revoke_key(session, tenant.key_id, now=utcnow())
    run = schemathesis(contract_url, tenant.key, tmp_path)
    assert_conforms(run)

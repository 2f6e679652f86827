"""The HTTP API's published contract: docs/reference/openapi.json is what `/openapi.json` serves today, and every
error the document names is RFC 9457 problem details. In process (Starlette's test client), no service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent_service.http.app import create_api
from agent_service.http.contract import COMMAND
from agent_service.worker import create_celery_app
from tests.support import make_settings

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "reference" / "openapi.json"


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_api(create_celery_app(make_settings(database_url="sqlite://"))))


def test_the_committed_openapi_document_is_the_one_served(client: TestClient):
    served = client.get("/openapi.json").json()
    assert served == json.loads(COMMITTED.read_text()), f"the API changed: run `{COMMAND}`"


def test_every_documented_error_is_problem_details(client: TestClient):
    # Given the served document, When each operation's error responses are read
    document = client.get("/openapi.json").json()
    errors = [
        (path, method, status, response)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for status, response in operation["responses"].items()
        if int(status) >= 400
    ]
    # Then each is application/problem+json with the Problem schema (none is FastAPI's own validation error)
    assert errors
    assert [
        (path, method, status)
        for path, method, status, response in errors
        if response["content"] != {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    ] == []


def test_an_unknown_route_and_a_missing_key_answer_problem_details(client: TestClient):
    missing = client.get("/v1/nothing-here")
    unauthorised = client.get("/v1/tasks")
    assert (missing.status_code, missing.headers["content-type"], missing.json()["code"]) == (
        404,
        "application/problem+json",
        "not_found",
    )
    assert (unauthorised.status_code, unauthorised.json()["code"]) == (401, "unauthorized")
    assert unauthorised.headers["www-authenticate"] == "Bearer"

"""Configuration that chaos depends on: the time limits are ordered, the broker and result backend
share the visibility timeout, the LLM client has a finite timeout, and secure URLs are accepted."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from agent_service.config import Settings
from agent_service.llm.client import chat_model
from agent_service.llm.messages import LLMRequest, ModelOptions
from agent_service.worker import create_celery_app
from tests.chaos.harness import LIMITS

ORDER = (
    "llm_timeout_seconds",
    "task_soft_time_limit_seconds",
    "task_time_limit_seconds",
    "broker_visibility_timeout_seconds",
    "stale_task_after_seconds",
)


def ordered(**changes) -> Settings:
    # (The liveness lease must stay below the stale threshold: the scenarios' one is.)
    limits = {name: LIMITS[name] for name in (*ORDER, "worker_lease_seconds")}
    return Settings(_env_file=None, **{**limits, **changes})


@pytest.mark.parametrize("lower, upper", list(itertools.pairwise(ORDER)))
def test_settings_reject_each_link_of_the_limit_order_when_violated(lower, upper):
    # Given valid, ordered limits, When the lower one of a link reaches the upper one, Then Settings refuse it
    with pytest.raises(ValidationError, match=upper.upper()):
        ordered(**{lower: LIMITS[upper]})


def test_broker_and_result_backend_share_the_visibility_timeout():
    app = create_celery_app(ordered(redis_url="redis://127.0.0.1:1/0"))
    expected = LIMITS["broker_visibility_timeout_seconds"]
    assert app.conf.broker_transport_options["visibility_timeout"] == expected
    assert app.conf.result_backend_transport_options["visibility_timeout"] == expected


def test_llm_client_has_the_configured_finite_timeout_and_no_hidden_retries():
    settings = ordered(llm_timeout_seconds=1.5)
    request = LLMRequest(model="gpt-4o-mini", temperature=0, max_tokens=10, options=ModelOptions(), messages=())
    client = chat_model(request, settings)
    assert client.request_timeout == 1.5 and client.max_retries == 0


def test_password_and_tls_urls_are_accepted_and_reach_celery():
    # Given Redis and PostgreSQL URLs with passwords and TLS
    redis_url = "rediss://:s3cret@redis.example:6380/0?ssl_cert_reqs=required"
    database_url = "postgresql+psycopg2://app:s3cret@db.example:5432/agents?sslmode=verify-full"
    # When settings and the Celery app are built from them
    app = create_celery_app(ordered(redis_url=redis_url, database_url=database_url))
    # Then Celery uses them as given, and the engine keeps the TLS mode
    assert app.conf.broker_url == redis_url and app.conf.result_backend == redis_url
    assert app.services.engine.url.query["sslmode"] == "verify-full" and app.services.engine.url.password == "s3cret"
    assert "s3cret" not in app.connection_for_write().as_uri()

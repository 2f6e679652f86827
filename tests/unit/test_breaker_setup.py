"""The circuit breaker is off unless switched on, and names the provider by OPENAI_BASE_URL's host."""

from __future__ import annotations

import redis
from sqlalchemy.orm import sessionmaker

from agent_service.admission import build_admission
from agent_service.admission.breaker import CircuitBreaker, provider_of
from tests.support import make_settings


def no_redis():
    raise AssertionError("Redis was asked for, with no check needing it")


def test_the_breaker_is_off_by_default_and_on_with_breaker_enabled():
    assert build_admission(make_settings(), redis=no_redis, session_factory=sessionmaker()).checks == ()
    settings = make_settings(breaker_enabled=True, redis_url="redis://127.0.0.1:1/0")
    [check] = build_admission(
        settings, redis=lambda: redis.Redis.from_url(settings.redis_url), session_factory=sessionmaker()
    ).checks
    assert isinstance(check, CircuitBreaker) and check.provider == "127.0.0.1:8099"


def test_the_provider_is_the_host_of_the_base_url_and_api_openai_com_without_one():
    assert provider_of(make_settings(openai_base_url=None, openai_api_key="sk-x")) == "api.openai.com"
    assert provider_of(make_settings(openai_base_url="https://llm.example.com/v1", openai_api_key="sk-x")) == (
        "llm.example.com"
    )
    assert provider_of(make_settings(openai_base_url="http://localhost:8099/v1")) == "localhost:8099"

"""Errors from the real openai client, provoked by the bundled LLM server, map to retry or fail."""

from __future__ import annotations

import pickle

import openai
import pytest

from agent_service.errors import (
    ContentFilteredError,
    ContextLengthExceededError,
    PermanentError,
    ProviderFault,
    RetryableError,
    classify,
)


@pytest.fixture(scope="module")
def client(llm_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{llm_url}/v1", api_key="test", max_retries=0, timeout=2)


def provoke(client: openai.OpenAI, fault: str, **headers) -> Exception:
    with pytest.raises(Exception) as raised:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Mock-Fault": fault, **headers},
        )
    return raised.value


@pytest.mark.parametrize("fault", ["500", "502", "503", "drop", "malformed", "hang"])
def test_transient_llm_failures_are_retryable(client, fault):
    assert isinstance(classify(provoke(client, fault)), RetryableError)


@pytest.mark.parametrize("fault", ["400", "401", "403", "404", "insufficient_quota"])
def test_llm_failures_retrying_cannot_fix_are_permanent(client, fault):
    error = classify(provoke(client, fault))
    assert isinstance(error, PermanentError) and str(error)


def test_rate_limit_carries_the_retry_after_delay(client):
    error = classify(provoke(client, "429", **{"X-Mock-Retry-After": "2.5"}))
    assert isinstance(error, RetryableError) and error.delay == 2.5


def test_quota_exhaustion_says_so(client):
    assert "quota exhausted" in str(classify(provoke(client, "insufficient_quota")))


@pytest.mark.parametrize(
    ("fault", "blame"),
    [
        *((fault, ProviderFault.UNAVAILABLE) for fault in ("500", "502", "503", "drop", "malformed", "hang")),
        ("429", ProviderFault.RATE_LIMITED),
        *((fault, ProviderFault.DENIED) for fault in ("401", "403", "insufficient_quota")),
        *((fault, None) for fault in ("400", "404")),
    ],
)
def test_an_llm_failure_says_whether_the_provider_is_to_blame(client, fault, blame):
    # The circuit breaker counts the provider's failures, not the task's own bad requests.
    assert classify(provoke(client, fault)).fault is blame


def test_the_blame_survives_the_trip_from_the_llm_process():
    for error in (
        RetryableError("503", delay=2.0, fault=ProviderFault.UNAVAILABLE),
        PermanentError("401", fault=ProviderFault.DENIED),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy), copy.fault) == (type(error), str(error), error.fault)
    assert pickle.loads(pickle.dumps(RetryableError("503", delay=2.0))).delay == 2.0


def test_errors_the_model_causes_are_their_own_kinds_and_never_retried(client):
    too_long = classify(provoke(client, "context_length_exceeded"))
    filtered = classify(provoke(client, "content_filter"))
    assert isinstance(too_long, ContextLengthExceededError) and "maximum context length is 128000" in str(too_long)
    assert isinstance(filtered, ContentFilteredError) and "content filter" in str(filtered)

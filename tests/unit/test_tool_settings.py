"""The agent tools' settings: defaults, TOOL_SECRETS as a JSON object of secrets, and a child process
(the LLM process, a worker) given the secrets' values through as_env."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent_service.config import Settings, describe_invalid_settings


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def test_tool_defaults_keep_private_addresses_out_of_reach():
    settings = Settings(_env_file=None)
    assert settings.tool_secrets == {} and settings.tool_allow_private_addresses is False
    assert (settings.tool_timeout_seconds, settings.tool_max_response_bytes, settings.tool_max_redirects) == (
        10.0,
        65536,
        3,
    )


def test_tool_secrets_come_from_a_json_object_and_never_show_in_the_settings_repr(monkeypatch):
    monkeypatch.setenv("TOOL_SECRETS", '{"ORDERS_TOKEN": "Bearer s3cr3t-canary"}')
    settings = Settings(_env_file=None)
    assert settings.tool_secrets["ORDERS_TOKEN"].get_secret_value() == "Bearer s3cr3t-canary"
    assert "s3cr3t-canary" not in repr(settings) and "s3cr3t-canary" not in str(settings.model_dump())


def test_a_child_process_environment_carries_the_tool_secrets_values(monkeypatch):
    settings = Settings(_env_file=None, tool_secrets={"A": "one", "B": "two"}, tool_allow_private_addresses=True)
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    rebuilt = Settings(_env_file=None)
    assert {name: secret.get_secret_value() for name, secret in rebuilt.tool_secrets.items()} == {
        "A": "one",
        "B": "two",
    }
    assert rebuilt.tool_allow_private_addresses is True


def test_a_tool_secret_that_cannot_be_a_header_is_refused_without_echoing_it():
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, tool_secrets={"TOKEN": "Bearer canary-x\r\nX-Evil: 1"})
    message = describe_invalid_settings(refused.value)
    assert "the value of TOKEN must be one line" in message and "canary-x" not in message

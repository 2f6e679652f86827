"""Settings accept the database URLs users write and refuse the ones the service cannot use, with
messages that name the variable and never echo its value; the offline LLM key serves only loopback."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from config import OFFLINE_API_KEY, Settings, describe_invalid_settings


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user:password@localhost:5432/agentic_microsaas",
        "postgres://user:password@localhost:5432/agentic_microsaas",
        "postgresql+psycopg2://user:password@localhost:5432/agentic_microsaas",
        "postgresql+psycopg://user:password@localhost:5432/agentic_microsaas",
    ],
)
def test_every_postgresql_spelling_uses_the_shipped_psycopg2_driver(url):
    assert settings(database_url=url).database_url == (
        "postgresql+psycopg2://user:password@localhost:5432/agentic_microsaas"
    )


def test_query_options_and_sqlite_urls_are_kept_as_written():
    assert settings(database_url="postgres://h/db?sslmode=require").database_url.endswith("//h/db?sslmode=require")
    assert settings(database_url="sqlite:///tmp/x.sqlite3").database_url == "sqlite:///tmp/x.sqlite3"


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://root:hunter2@db/app", "DATABASE_URL has scheme 'mysql'"),
        ("hunter2-not-a-url", "DATABASE_URL is not a URL"),
        ("postgresql://u:hunter2@db:port/app", "DATABASE_URL has an invalid port"),
    ],
)
def test_unusable_database_urls_are_described_in_one_line_without_their_value(url, message):
    with pytest.raises(ValidationError) as caught:
        settings(database_url=url)
    description = describe_invalid_settings(caught.value)
    assert description.startswith(message) and "\n" not in description and "hunter2" not in description


@pytest.mark.parametrize("base_url", [None, "https://api.openai.com/v1", "http://10.0.0.5:8000/v1"])
def test_an_llm_endpoint_off_this_machine_requires_an_api_key(base_url):
    with pytest.raises(ValidationError, match="OPENAI_API_KEY is required"):
        settings(openai_base_url=base_url)
    assert settings(openai_base_url=base_url, openai_api_key="sk-real").openai_api_key.get_secret_value() == "sk-real"


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:8099/v1", "http://localhost:41234/v1", "http://[::1]:8099/v1"])
def test_the_bundled_server_on_loopback_gets_the_offline_key(base_url):
    assert settings(openai_base_url=base_url).openai_api_key.get_secret_value() == OFFLINE_API_KEY


def test_field_errors_name_their_variable():
    with pytest.raises(ValidationError) as caught:
        settings(worker_concurrency=0)
    assert describe_invalid_settings(caught.value).startswith("WORKER_CONCURRENCY: ")

"""Settings: zero-configuration defaults, limits that must be ordered, the database URLs users write (and the
ones the service cannot use, named without echoing their value), the offline LLM key on loopback only, and the
environment a child process is given to build the same settings."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from agent_service.config import OFFLINE_API_KEY, Settings, describe_invalid_settings
from tests.support import make_settings


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    """Settings read the environment; these tests must see only what they set."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def test_defaults_run_with_no_configuration_at_all():
    # Given no environment and no .env file, When settings are built
    settings = Settings(_env_file=None)
    # Then they point at the embedded set-up: a SQLite file, kombu's filesystem transport, the bundled LLM server
    assert settings.database_url.startswith("sqlite:///") and settings.database_url.endswith(".sqlite3")
    assert settings.broker_url == "filesystem://" and settings.result_backend.startswith("db+sqlite:///")
    assert settings.openai_base_url == "http://127.0.0.1:8099/v1"
    assert (settings.worker_pool, settings.llm_process, settings.task_max_attempts) == ("threads", True, 5)


def test_redis_url_serves_as_broker_and_result_backend_unless_each_is_given():
    settings = Settings(_env_file=None, redis_url="redis://r:6379/0")
    assert (settings.broker_url, settings.result_backend) == ("redis://r:6379/0", "redis://r:6379/0")
    apart = Settings(_env_file=None, redis_url="redis://r/0", celery_broker_url="redis://b/1")
    assert (apart.broker_url, apart.result_backend) == ("redis://b/1", "redis://r/0")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"task_soft_time_limit_seconds": 600, "task_time_limit_seconds": 600},
            "TASK_SOFT_TIME_LIMIT_SECONDS must be below TASK_TIME_LIMIT_SECONDS",
        ),
        (
            {"task_time_limit_seconds": 3600, "broker_visibility_timeout_seconds": 3600},
            "BROKER_VISIBILITY_TIMEOUT_SECONDS must exceed TASK_TIME_LIMIT_SECONDS",
        ),
        (
            {"broker_visibility_timeout_seconds": 7200, "stale_task_after_seconds": 7200},
            "STALE_TASK_AFTER_SECONDS must exceed BROKER_VISIBILITY_TIMEOUT_SECONDS",
        ),
        (
            {"llm_timeout_seconds": 1500, "task_soft_time_limit_seconds": 1500},
            "LLM_TIMEOUT_SECONDS must be below TASK_SOFT_TIME_LIMIT_SECONDS",
        ),
        (
            {"worker_lease_seconds": 7200, "stale_task_after_seconds": 7200},
            "WORKER_LEASE_SECONDS must be below STALE_TASK_AFTER_SECONDS",
        ),
    ],
)
def test_limits_out_of_order_are_refused_naming_the_variables(values, message):
    # A task must hit its soft limit before the hard one, finish before the broker redelivers it, and be
    # redelivered before the sweeper presumes it lost; an LLM call must time out before the soft limit; a lost
    # worker's lease must expire before the stale threshold would take its tasks anyway.
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, **values)


def test_out_of_range_values_are_refused_naming_the_field():
    with pytest.raises(ValidationError, match="task_max_attempts"):
        Settings(_env_file=None, task_max_attempts=0)
    with pytest.raises(ValidationError, match="worker_pool"):
        Settings(_env_file=None, worker_pool="gevent")


def test_a_child_process_environment_rebuilds_the_same_settings(monkeypatch):
    # Given settings that differ from the defaults, the secret included
    settings = Settings(
        _env_file=None,
        database_url="postgresql+psycopg2://u:p@db:5432/agents",
        redis_url="redis://cache:6379/3",
        openai_api_key=SecretStr("sk-test-secret"),
        task_max_attempts=7,
        batch_flush_seconds=0.2,
        llm_process=False,
        log_json=False,
        llm_rate_limits={"gpt-4o-mini": {"rpm": 500, "tpm": 200000}},
    )
    # When a child process's environment holds only what as_env gives
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    # Then it builds the same settings, the secret's value with them
    rebuilt = Settings(_env_file=None)
    assert rebuilt == settings
    assert rebuilt.openai_api_key.get_secret_value() == "sk-test-secret"


@pytest.mark.parametrize("logins", ["admin", "admin:", ":secret", "admin:secret,", "admin:secret,other"])
def test_flower_login_without_user_or_password_is_refused(logins):
    with pytest.raises(ValidationError, match="FLOWER_BASIC_AUTH must be user:password"):
        make_settings(flower_basic_auth=logins)


def test_flower_logins_reach_child_processes_in_clear():
    settings = make_settings(flower_basic_auth="admin:secret,ops:other")
    assert settings.as_env()["FLOWER_BASIC_AUTH"] == "admin:secret,ops:other"


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


@pytest.mark.parametrize(
    "control",
    [
        {"pause_enabled": True},
        {"breaker_enabled": True},
        {"user_daily_spend_cap_usd": 5.0},
        {"concurrency_caps_enabled": True},
        {"rate_limits_enabled": True},
    ],
)
def test_a_shared_control_switched_on_without_redis_is_refused_at_start(control):
    with pytest.raises(ValidationError, match="REDIS_URL is required by"):
        Settings(_env_file=None, **control)
    assert Settings(_env_file=None, redis_url="redis://r:6379/0", **control).redis_url

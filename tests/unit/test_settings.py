"""Settings: zero-configuration defaults, limits that must be ordered, and the environment a child
process is given to build the same settings."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from config import Settings
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
    ],
)
def test_limits_out_of_order_are_refused_naming_the_variables(values, message):
    # A task must hit its soft limit before the hard one, finish before the broker redelivers it, and be
    # redelivered before the sweeper presumes it lost; an LLM call must time out before the soft limit.
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

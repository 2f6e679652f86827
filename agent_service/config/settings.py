"""The one `Settings` object: every group of settings together, read from the environment and `.env` once.

Each group (a module of this package) holds its fields and the validators that read only them; the checks that
span groups live here.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pydantic import SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent_service.config.approvals import ApprovalSettings
from agent_service.config.breaker import BreakerSettings
from agent_service.config.broker import BrokerSettings
from agent_service.config.concurrency import ConcurrencySettings
from agent_service.config.database import SQLITE_SCHEMES, DatabaseSettings
from agent_service.config.dispatch import DispatchSettings
from agent_service.config.flower import FlowerSettings
from agent_service.config.groups import GroupSettings
from agent_service.config.http import HttpApiSettings
from agent_service.config.live import LiveSettings
from agent_service.config.llm import LLMSettings
from agent_service.config.maintenance import MaintenanceSettings
from agent_service.config.monitoring import MonitoringSettings
from agent_service.config.notifications import NotificationSettings
from agent_service.config.pause import PauseSettings
from agent_service.config.rate_limits import RateLimitSettings
from agent_service.config.replies import ReplySettings
from agent_service.config.retries import RetrySettings
from agent_service.config.sizes import SizeSettings
from agent_service.config.spend_caps import SpendCapSettings
from agent_service.config.tools import ToolSettings
from agent_service.config.tracing import TracingSettings
from agent_service.config.worker import WorkerSettings
from agent_service.errors import ConfigurationError

# Docker and Compose mount secrets as files here, each named for its setting in lower case (/run/secrets/database_url),
# so that no password sits in an environment `docker inspect` shows. The environment and `.env` win over them.
# Elsewhere the folder does not exist, and pydantic-settings is not given it (it would warn at every start).
DOCKER_SECRETS_DIR = Path("/run/secrets")
REDIS_SPARE_CONNECTIONS = 32  # beyond the pool threads and calls: dispatcher, listeners, heartbeats, followers


# The groups in the order docs/reference/settings.md lists them. (Pydantic collects the fields of the last base
# first, so `model_fields` runs in the reverse order; nothing depends on it.)
class Settings(
    DatabaseSettings,
    BrokerSettings,
    WorkerSettings,
    RetrySettings,
    MaintenanceSettings,
    LLMSettings,
    SizeSettings,
    PauseSettings,
    BreakerSettings,
    ConcurrencySettings,
    RateLimitSettings,
    SpendCapSettings,
    ReplySettings,
    DispatchSettings,
    LiveSettings,
    ToolSettings,
    ApprovalSettings,
    GroupSettings,
    MonitoringSettings,
    TracingSettings,
    NotificationSettings,
    FlowerSettings,
    HttpApiSettings,
    BaseSettings,
):
    """Everything the service can be configured with; business code takes it as a parameter.

    Checked across groups: the time limits keep their order (LLM_TIMEOUT_SECONDS < TASK_SOFT_TIME_LIMIT_SECONDS <
    TASK_TIME_LIMIT_SECONDS < BROKER_VISIBILITY_TIMEOUT_SECONDS < STALE_TASK_AFTER_SECONDS, and LLM_TIMEOUT_SECONDS <
    SPEND_HOLD_SECONDS), and each shared control switched on (PAUSE_ENABLED, BREAKER_ENABLED, spend caps,
    CONCURRENCY_CAPS_ENABLED, RATE_LIMITS_ENABLED) needs REDIS_URL.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        secrets_dir=DOCKER_SECRETS_DIR if DOCKER_SECRETS_DIR.is_dir() else None,
    )

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> Settings:
        if not self.task_soft_time_limit_seconds < self.task_time_limit_seconds:
            raise ValueError("TASK_SOFT_TIME_LIMIT_SECONDS must be below TASK_TIME_LIMIT_SECONDS")
        if not self.task_time_limit_seconds < self.broker_visibility_timeout_seconds:
            # Redis redelivers unacked messages after the visibility timeout, even while they still run.
            raise ValueError("BROKER_VISIBILITY_TIMEOUT_SECONDS must exceed TASK_TIME_LIMIT_SECONDS")
        if not self.broker_visibility_timeout_seconds < self.stale_task_after_seconds:
            raise ValueError("STALE_TASK_AFTER_SECONDS must exceed BROKER_VISIBILITY_TIMEOUT_SECONDS")
        if not self.llm_timeout_seconds < self.task_soft_time_limit_seconds:
            raise ValueError("LLM_TIMEOUT_SECONDS must be below TASK_SOFT_TIME_LIMIT_SECONDS")
        if not self.llm_timeout_seconds < self.spend_hold_seconds:
            raise ValueError("SPEND_HOLD_SECONDS must exceed LLM_TIMEOUT_SECONDS (a call's reservation outlives it)")
        return self

    @model_validator(mode="after")
    def _shared_controls_have_redis(self) -> Settings:
        """Every shared control keeps its state in Redis: switched on without REDIS_URL it could only fail tasks."""
        switched_on = [name for name, on in self._shared_controls().items() if on]
        if switched_on and not self.redis_url:
            raise ValueError(f"REDIS_URL is required by {', '.join(switched_on)}: its state is shared through Redis")
        return self

    def _shared_controls(self) -> dict[str, bool]:
        caps = (
            self.user_daily_spend_cap_usd,
            self.user_monthly_spend_cap_usd,
            self.agent_daily_spend_cap_usd,
            self.agent_monthly_spend_cap_usd,
        )
        return {
            "PAUSE_ENABLED": self.pause_enabled,
            "BREAKER_ENABLED": self.breaker_enabled,
            "SPEND_CAPS": self.spend_caps or any(cap is not None for cap in caps),
            "CONCURRENCY_CAPS_ENABLED": self.concurrency_caps_enabled,
            "RATE_LIMITS_ENABLED": self.rate_limits_enabled,
        }

    def as_env(self) -> dict[str, str]:
        """Environment variables that make a child process build these same settings."""
        values = self.model_dump(exclude_none=True)
        return {name.upper(): _env_value(_reveal(value)) for name, value in values.items()}

    @property
    def fair_dispatch(self) -> bool:
        """Whether tasks wait in the database for the fair-share dispatcher: DISPATCH_MODE=fair on PostgreSQL
        (SQLite has no SKIP LOCKED, so the embedded set-up always publishes directly)."""
        return self.dispatch_mode == "fair" and not self.database_url.startswith(SQLITE_SCHEMES)

    @property
    def redis_pool_size(self) -> int:
        """Connections a process's Redis client may open at once: one per pool thread or LLM call in flight, and
        some for the process's own threads. redis-py 8 caps a pool at 100 and raises beyond (`Too many
        connections`): busy workers' tasks were retried for it (docs/decisions.md)."""
        return max(self.worker_concurrency, self.llm_concurrency) + REDIS_SPARE_CONNECTIONS


def _reveal(value: object) -> object:
    """`value` with every SecretStr in it (TOOL_SECRETS holds a dict of them) replaced by its value."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {key: _reveal(item) for key, item in value.items()}
    return value


def _env_value(value: object) -> str:
    """A setting as its environment variable spells it: JSON for structured values."""
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once from the environment.
    Raises: ConfigurationError, one line naming each bad variable (never its value: it may be a secret)."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError(describe_invalid_settings(exc)) from None


def describe_invalid_settings(exc: ValidationError) -> str:
    """One line for a Settings validation error: each problem with its variable's name, no input values."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        variable = "_".join(str(part) for part in error["loc"]).upper()
        problems.append(f"{variable}: {message}" if variable and not message.startswith(variable) else message)
    return "; ".join(problems)

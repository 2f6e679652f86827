"""Service settings: one pydantic-settings object, read from the environment and `.env` once.

The defaults run with zero configuration (a SQLite file, kombu's filesystem transport, the
bundled offline LLM server); `.env.example` shows the production values.
"""

from __future__ import annotations

import ipaddress
import json
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent_service.errors import ConfigurationError

# The embedded defaults (SQLite files, the filesystem broker) live in `.local` of the directory a command runs
# from, as `.env` is read from there: a checkout's root for `make demo`, a project's own folder once installed.
LOCAL_DATA_DIR = Path.cwd().resolve() / ".local"
# One PostgreSQL driver, psycopg2 (pinned in requirements.txt), whichever of these a URL names: SQLAlchemy
# maps a bare `postgresql://` to psycopg 3, and the libpq options a URL carries mean the same to both.
POSTGRES_DRIVER = "postgresql+psycopg2"
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg")
SQLITE_SCHEMES = ("sqlite", "sqlite+pysqlite")
# Only the bundled offline server (`devtools/llm_server/`), which runs on loopback, takes this key.
OFFLINE_API_KEY = "offline-key"


class ModelPriceOverride(BaseModel):
    """A model's prices in USD per million tokens, for a model genai-prices does not know (or priced otherwise)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(None, ge=0, description="the input price when not given")


class ModelRateLimit(BaseModel):
    """Requests and tokens per minute for one model (either may be absent: no limit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: float | None = Field(None, gt=0)
    tpm: float | None = Field(None, gt=0)


class Settings(BaseSettings):
    """Everything the service can be configured with; business code takes it as a parameter."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = f"sqlite:///{LOCAL_DATA_DIR / 'agent_service.sqlite3'}"
    redis_url: str | None = None
    celery_broker_url: str | None = None
    celery_result_backend: str | None = None

    openai_api_key: SecretStr = Field(
        SecretStr(""), description="required unless OPENAI_BASE_URL is the bundled server on loopback"
    )
    openai_base_url: str | None = "http://127.0.0.1:8099/v1"
    default_model: str = "gpt-4o-mini"
    llm_timeout_seconds: float = Field(60.0, gt=0)

    task_max_attempts: int = Field(5, ge=1, description="LLM attempts per task, the first one included")
    retry_backoff_base_seconds: float = Field(2.0, gt=0)
    retry_backoff_max_seconds: float = Field(300.0, gt=0)
    retry_jitter_ratio: float = Field(0.25, ge=0, le=1)
    db_unavailable_max_retries: int = Field(100, ge=0)

    task_soft_time_limit_seconds: int = Field(25 * 60, gt=0)
    task_time_limit_seconds: int = Field(30 * 60, gt=0)
    broker_visibility_timeout_seconds: int = Field(60 * 60, gt=0)
    stale_task_after_seconds: int = Field(
        2 * 60 * 60, gt=0, description="a running/queued row older than this is presumed lost and re-queued"
    )
    requeue_pending_after_seconds: int = Field(
        60, gt=0, description="a row left pending (broker down) this long is re-queued"
    )
    sweep_interval_seconds: float = Field(60.0, gt=0)
    sweep_batch_size: int = Field(1000, ge=1)
    worker_soft_shutdown_seconds: float = Field(60.0, ge=0, description="on SIGQUIT, wait this long for running tasks")
    health_check_interval_seconds: float = Field(60.0, gt=0)
    group_callback_queue: str = Field(
        "celery", min_length=1, description="the queue a group's on_complete task is sent to (Celery's default)"
    )

    max_title_length: int = Field(500, gt=0)
    max_description_length: int = Field(20_000, gt=0)
    max_result_length: int = Field(100_000, gt=0)
    max_payload_bytes: int = Field(64 * 1024, gt=0, description="a task's JSON payload, serialized, at most this big")
    approval_timeout_seconds: float = Field(
        24 * 3600, gt=0, description="a tool call awaiting approval this long fails its task"
    )

    # No gevent: the LLM process's pipe reader would block its hub, and threads measured cheaper anyway.
    worker_pool: Literal["threads", "prefork", "solo"] = "threads"
    worker_concurrency: int = Field(
        768, ge=1, le=5000, description="pool size: threads (each runs one batch at a time), or processes for prefork"
    )
    worker_prefetch_multiplier: int = Field(
        1, ge=1, description="messages reserved per pool slot; with prefork, raise it so batches can fill"
    )
    llm_concurrency: int = Field(768, ge=1, le=5000, description="LLM calls at once per worker process")
    llm_process: bool = Field(True, description="run the LLM calls in a child process with a core of its own")
    worker_queues: str = "agent_tasks,system"
    batch_max_size: int = Field(64, ge=1, description="agent-task messages handled together in one batch")
    batch_flush_seconds: float = Field(0.05, gt=0, description="a partial batch waits at most this long")

    db_statement_timeout_seconds: float = Field(
        30.0, ge=0, description="PostgreSQL statement_timeout; bounds a batch's queries (0: none)"
    )
    db_pool_size: int = Field(5, ge=1)
    db_max_overflow: int = Field(10, ge=0)
    result_expires_seconds: int = Field(
        24 * 60 * 60, gt=0, description="how long a task's Celery result is kept in the result backend"
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="0 disables the Prometheus exporter")
    # Loopback unless the operator opens it: the exporter has no login (the Docker image sets 0.0.0.0).
    metrics_address: str = Field("127.0.0.1", description="where the Prometheus exporter listens")
    # These three names are Flower's own environment options too, so Flower reads the same values.
    flower_address: str = Field("127.0.0.1", description="beyond loopback, Flower requires FLOWER_BASIC_AUTH")
    flower_port: int = Field(5555, ge=1, le=65535)
    flower_basic_auth: SecretStr | None = Field(None, description="Flower's logins: user:password[,user:password]")

    # Circuit breaker per provider (OPENAI_BASE_URL's host) and model, shared by every worker through Redis.
    breaker_enabled: bool = Field(False, description="stop calling a model that keeps failing; needs REDIS_URL")
    breaker_window_seconds: float = Field(60.0, gt=0, description="the breaker counts calls that ended this recently")
    breaker_min_calls: int = Field(10, ge=1, description="calls in the window before failures can open the breaker")
    breaker_failure_ratio: float = Field(0.5, gt=0, le=1, description="the share of failed calls that opens it")
    breaker_cooldown_seconds: float = Field(30.0, gt=0, description="open this long before one probe call goes through")

    # Cost and spend caps (README "Cost and limits"). Prices come from genai-prices for LLM_PROVIDER;
    # MODEL_PRICES adds or overrides a model's prices in USD per million tokens. Caps are off while unset.
    llm_provider: str = Field("openai", description="whose prices apply (a genai-prices provider id)")
    model_prices: dict[str, ModelPriceOverride] = Field(
        default_factory=dict,
        description='JSON: {"model": {"input_per_mtok": 0.1, "output_per_mtok": 0.2, "cached_input_per_mtok": 0.05}}',
    )
    spend_caps: bool = Field(
        False, description="check spend caps (on too when any *_SPEND_CAP_USD is set); per-agent/user caps alone"
    )
    user_daily_spend_cap_usd: float | None = Field(None, ge=0)
    user_monthly_spend_cap_usd: float | None = Field(None, ge=0)
    agent_daily_spend_cap_usd: float | None = Field(None, ge=0)
    agent_monthly_spend_cap_usd: float | None = Field(None, ge=0)
    spend_cap_mode: Literal["hold", "hard"] = Field(
        "hold", description="hold: a task that would pass its cap waits; hard: it fails"
    )
    spend_cap_recheck_seconds: float = Field(300.0, gt=0, description="a held task is looked at again this often")
    spend_hold_seconds: float = Field(
        300.0, gt=0, description="a call's reserved estimate is dropped after this long if its worker never settles it"
    )

    # Shared admission controls (README "Cost and limits"): every one is off unless switched on here, and
    # keeps its state in Redis (REDIS_URL), so it holds across every worker on every host.
    pause_enabled: bool = Field(False, description="workers obey `python cli.py pause` (one Redis GET per batch)")
    concurrency_caps_enabled: bool = Field(False, description="cap each agent's and user's LLM calls at once")
    agent_concurrency_cap: int = Field(0, ge=0, description="calls at once per agent (0: none); overridable")
    user_concurrency_cap: int = Field(0, ge=0, description="calls at once per user (0: none); overridable")
    rate_limits_enabled: bool = Field(False, description="reserve requests and tokens per minute before each call")
    llm_rate_limits: dict[str, ModelRateLimit] = Field(
        default_factory=dict, description='per model, as JSON: {"gpt-4o-mini": {"rpm": 500, "tpm": 200000}}'
    )
    rate_limit_burst_seconds: float = Field(
        1.0, gt=0, description="a rate limit lets through at most this many seconds of its rate at once"
    )
    rate_limit_max_wait_seconds: float = Field(
        1.0, ge=0, description="a call waits in the worker this long at most for its rate; beyond, it is deferred"
    )
    # No call paid twice (README "Cost and limits"): each LLM reply is kept in Redis until its outcome is
    # recorded, so a worker killed in between costs no second call. Needs REDIS_URL; off without one.
    keep_replies: bool = Field(True, description="keep each LLM reply in Redis until its outcome is recorded")

    # Fair share: where a backlog waits. "direct" publishes each task as it is submitted (FIFO in the broker);
    # "fair" keeps tasks `waiting` in PostgreSQL and a dispatcher in every worker publishes them in rounds,
    # priority first, then one user after another, keeping the broker queue short (SQLite: always direct).
    dispatch_mode: Literal["direct", "fair"] = Field(
        "direct", description="direct: publish at submit; fair: tasks wait in PostgreSQL for the dispatcher"
    )
    dispatch_target_in_flight: int = Field(
        160,
        ge=1,
        description="fair: tasks published and not finished (queued or running), all workers together; about the "
        "tasks/s the workers complete times the LLM latency in seconds",
    )
    dispatch_round_size: int = Field(100, ge=1, description="fair: tasks one dispatch round publishes at most")
    dispatch_interval_seconds: float = Field(
        0.05, gt=0, description="fair: how often a worker's dispatcher looks for room when its last round was short"
    )
    log_json: bool = True

    # Agent tools (api kind): the outbound HTTP calls of `tools.http.call_tool` (README "Configuration").
    tool_secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='JSON: {"NAME": "value"}; a tool header {"secret": "NAME"} is sent with the value, never stored',
    )
    tool_timeout_seconds: float = Field(10.0, gt=0, description="a tool call's whole time, redirects included")
    tool_max_response_bytes: int = Field(64 * 1024, gt=0, description="a tool's reply is cut after this many bytes")
    tool_max_redirects: int = Field(3, ge=0, description="redirects a tool call follows, each one checked again")
    tool_allow_private_addresses: bool = Field(
        False, description="let tools reach loopback, private and link-local addresses (tests and demo only)"
    )

    # Live output (`live`, `python cli.py follow`): one Redis stream per followed task, written only while
    # someone follows it (needs REDIS_URL; without it nothing is published).
    live_stream_max_events: int = Field(1000, ge=1, description="a task's stream keeps about its last this many events")
    live_stream_ttl_seconds: int = Field(
        3600, ge=1, description="a task's stream expires this long after its last event"
    )
    live_token_flush_ms: float = Field(
        50.0, gt=0, description="a streamed call writes its new tokens at most this often"
    )

    @field_validator("tool_secrets")
    @classmethod
    def _tool_secrets_are_header_values(cls, secrets: dict[str, SecretStr]) -> dict[str, SecretStr]:
        """A value that cannot be a header would fail at every call, in an error that could quote it."""
        for name, value in secrets.items():
            if any(character in value.get_secret_value() for character in "\r\n\0"):
                raise ValueError(f"TOOL_SECRETS: the value of {name} must be one line (it is sent as a header)")
        return secrets

    @field_validator("flower_basic_auth")
    @classmethod
    def _logins_have_user_and_password(cls, value: SecretStr | None) -> SecretStr | None:
        logins = value.get_secret_value().split(",") if value is not None else []
        if not all(user and password for user, _, password in (login.partition(":") for login in logins)):
            raise ValueError("FLOWER_BASIC_AUTH must be user:password, or several separated by commas")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_has_a_driver_we_ship(cls, url: str) -> str:
        """PostgreSQL URLs in any of the usual spellings, normalised to psycopg2; SQLite URLs as they are.
        The message names only the scheme: the rest of the URL may hold a password."""
        scheme, separator, rest = url.strip().partition("://")
        if not separator:
            raise ValueError("DATABASE_URL is not a URL; expected postgresql://user:password@host:5432/name")
        scheme = scheme.lower()
        if scheme in SQLITE_SCHEMES:
            return url.strip()
        if scheme not in POSTGRES_SCHEMES:
            raise ValueError(
                f"DATABASE_URL has scheme {scheme!r}; expected postgresql:// (also postgres://, "
                "postgresql+psycopg2://, postgresql+psycopg://) or sqlite:///path"
            )
        try:
            urlsplit(f"{POSTGRES_DRIVER}://{rest}").port  # noqa: B018  (raises ValueError on a bad port)
        except ValueError:
            raise ValueError("DATABASE_URL has an invalid port; expected host:5432 or host alone") from None
        return f"{POSTGRES_DRIVER}://{rest}"

    @model_validator(mode="after")
    def _api_key_given_unless_offline(self) -> Settings:
        if self.openai_api_key.get_secret_value():
            return self
        if not _is_bundled_server(self.openai_base_url):
            raise ValueError(
                "OPENAI_API_KEY is required: OPENAI_BASE_URL is not the bundled offline server on loopback"
            )
        self.openai_api_key = SecretStr(OFFLINE_API_KEY)
        return self

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

    def as_env(self) -> dict[str, str]:
        """Environment variables that make a child process build these same settings."""
        values = self.model_dump(exclude_none=True)
        return {name.upper(): _env_value(_reveal(value)) for name, value in values.items()}

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

    @property
    def fair_dispatch(self) -> bool:
        """Whether tasks wait in the database for the fair-share dispatcher: DISPATCH_MODE=fair on PostgreSQL
        (SQLite has no SKIP LOCKED, so the embedded set-up always publishes directly)."""
        return self.dispatch_mode == "fair" and not self.database_url.startswith(SQLITE_SCHEMES)

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url or "filesystem://"

    @property
    def result_backend(self) -> str:
        default = f"db+sqlite:///{LOCAL_DATA_DIR / 'celery_results.sqlite3'}"
        return self.celery_result_backend or self.redis_url or default


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


def _is_bundled_server(base_url: str | None) -> bool:
    """Whether the LLM endpoint may be the bundled offline server: one on this machine (loopback).
    None means the OpenAI client's default, api.openai.com."""
    if not base_url:
        return False
    return is_loopback_host(urlsplit(base_url).hostname or "")


def is_loopback_host(host: str) -> bool:
    """Whether `host` (an address or a name) is this machine's loopback: only the name "localhost" is known
    to be; any other name, or "" (every address), is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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

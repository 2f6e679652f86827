"""Broker: where Celery's messages and results go."""

from __future__ import annotations

from pydantic import BaseModel, Field

from agent_service.config.database import LOCAL_DATA_DIR

RABBITMQ_SCHEMES = ("amqp", "amqps", "pyamqp")
REDIS_SCHEMES = ("redis", "rediss")


class BrokerSettings(BaseModel):
    """Broker and result backend: Redis (REDIS_URL) for both unless each is given its own URL; the broker may be
    RabbitMQ (CELERY_BROKER_URL=amqp://...), with Redis still holding results and the shared controls."""

    redis_url: str | None = Field(
        None, description="redis:// or rediss:// URL: the broker, the result backend and the shared controls' state"
    )
    celery_broker_url: str | None = Field(
        None,
        description="the broker when it is not REDIS_URL, e.g. amqp://user:pass@host:5672/vhost for RabbitMQ "
        "(unset and no REDIS_URL: kombu's filesystem transport)",
    )
    celery_result_backend: str | None = Field(
        None, description="the result backend when it is not REDIS_URL (unset and no REDIS_URL: a SQLite file)"
    )
    broker_visibility_timeout_seconds: int = Field(
        60 * 60, gt=0, description="Redis redelivers a message not acknowledged this long after it was taken"
    )
    broker_delivery_limit: int = Field(
        10,
        ge=1,
        description="RabbitMQ: a message handed back more often than this (a worker died holding it, or returned it) "
        "is dead-lettered, and the sweeper fails its task, instead of being delivered again",
    )
    result_expires_seconds: int = Field(
        24 * 60 * 60, gt=0, description="how long a task's Celery result is kept in the result backend"
    )

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url or "filesystem://"

    @property
    def broker_is_rabbitmq(self) -> bool:
        """Whether the broker is RabbitMQ (amqp://, amqps://, pyamqp://): its queues are then quorum queues."""
        return self.broker_url.split("://", 1)[0] in RABBITMQ_SCHEMES

    @property
    def broker_is_redis(self) -> bool:
        """Whether the broker is Redis (redis://, rediss://): it then holds delivered messages until acknowledged
        or the visibility timeout, whatever became of the worker that took them."""
        return self.broker_url.split("://", 1)[0] in REDIS_SCHEMES

    @property
    def result_backend_is_redis(self) -> bool:
        return self.result_backend.split("://", 1)[0] in REDIS_SCHEMES

    @property
    def result_backend(self) -> str:
        default = f"db+sqlite:///{LOCAL_DATA_DIR / 'celery_results.sqlite3'}"
        return self.celery_result_backend or self.redis_url or default

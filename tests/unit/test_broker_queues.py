"""The queues each broker gets: direct exchanges on Redis; on RabbitMQ quorum queues with a delivery limit and a
dead-letter exchange, behind topic exchanges (native delayed delivery cannot route into a direct one), and
countdowns of at least one second."""

from __future__ import annotations

from agent_service.config import Settings
from agent_service.messaging.routing import broker_countdown, task_queues
from agent_service.worker import create_celery_app

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/vhost"


def test_redis_queues_are_plain_queues_behind_direct_exchanges():
    queues = task_queues(Settings(_env_file=None, redis_url="redis://r:6379/0"))
    assert [(q.name, q.exchange.type, q.queue_arguments) for q in queues] == [
        ("agent_tasks", "direct", None),
        ("system", "direct", None),
    ]


def test_rabbitmq_queues_are_quorum_queues_that_dead_letter_past_the_delivery_limit():
    settings = Settings(
        _env_file=None, redis_url="redis://r:6379/0", celery_broker_url=RABBITMQ, broker_delivery_limit=4
    )
    for queue in task_queues(settings):
        assert queue.exchange.type == "topic" and queue.routing_key == queue.name
        assert queue.queue_arguments["x-queue-type"] == "quorum"
        assert queue.queue_arguments["x-delivery-limit"] == 4
        assert queue.queue_arguments["x-dead-letter-exchange"] == "dead_letters"


def test_countdowns_under_a_second_wait_a_second_on_rabbitmq_only():
    redis_app = create_celery_app(Settings(_env_file=None, redis_url="redis://r:6379/0"))
    rabbit_app = create_celery_app(Settings(_env_file=None, redis_url="redis://r:6379/0", celery_broker_url=RABBITMQ))
    assert [broker_countdown(redis_app, s) for s in (None, 0.0, 0.2, 2.5)] == [None, 0.0, 0.2, 2.5]
    assert [broker_countdown(rabbit_app, s) for s in (None, 0.0, 0.2, 2.5)] == [None, 0.0, 1.0, 2.5]


def test_a_worker_survives_a_connection_loss_whatever_its_pool_can_terminate():
    def cancels(pool: str) -> bool:
        app = create_celery_app(Settings(_env_file=None, redis_url="redis://r:6379/0", worker_pool=pool))
        return app.conf.worker_cancel_long_running_tasks_on_connection_loss

    # Celery stops a worker whose pool cannot terminate a task it was asked to cancel on a connection loss
    assert (cancels("prefork"), cancels("threads"), cancels("solo")) == (True, False, False)


def test_a_worker_on_rabbitmq_survives_a_broker_restart_at_its_full_prefetch():
    redis_app = create_celery_app(Settings(_env_file=None, redis_url="redis://r:6379/0"))
    rabbit_app = create_celery_app(Settings(_env_file=None, redis_url="redis://r:6379/0", celery_broker_url=RABBITMQ))
    # A queue not yet recovered restarts the consumer instead of stopping the worker, on either broker
    assert redis_app.conf.broker_channel_error_retry and rabbit_app.conf.broker_channel_error_retry
    # And the prefetch is never lowered where it could not be raised again (per-consumer QoS)
    assert redis_app.conf.worker_enable_prefetch_count_reduction
    assert not rabbit_app.conf.worker_enable_prefetch_count_reduction

"""A Redis broker URL is served by the transport with one client per channel, and keeps its scheme: Flower picks its
broker client by it, and kombu encrypts a bare `rediss://` by it."""

from __future__ import annotations

from agent_service.messaging.redis_transport import Transport
from agent_service.worker import create_celery_app
from tests.support import make_settings


def test_a_redis_broker_url_gets_the_transport_with_one_client_per_channel_and_keeps_its_scheme():
    app = create_celery_app(make_settings(database_url="sqlite://", redis_url="redis://broker.internal:6380/2"))
    with app.connection_for_write() as connection:  # nothing is sent before a channel is opened
        assert connection.transport_cls == "redis"
        assert isinstance(connection.transport, Transport)
        assert connection.as_uri().startswith("redis://")


def test_a_bare_rediss_url_is_still_encrypted():
    app = create_celery_app(make_settings(database_url="sqlite://", redis_url="rediss://broker.internal:6380/0"))
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        assert connection.as_uri().startswith("rediss://")
        assert connection.ssl  # kombu's default for the scheme's name, which the transport keeps


def test_any_other_broker_keeps_kombus_transport():
    app = create_celery_app(make_settings(database_url="sqlite://", celery_broker_url="amqp://guest@127.0.0.1//"))
    with app.connection_for_write() as connection:
        assert not isinstance(connection.transport, Transport)

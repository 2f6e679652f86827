"""Which kombu transport a broker URL gets: ours (one client per channel) wherever kombu's Redis transport would
serve it and the URL says how to encrypt, kombu's own elsewhere."""

from __future__ import annotations

import pytest

from agent_service.messaging.redis_transport import TRANSPORT, broker_transport


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:secret@redis.internal:6380/2",
        "rediss://redis.internal:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem",
    ],
)
def test_a_redis_broker_gets_the_transport_with_one_client_per_channel(url):
    assert broker_transport(url) == TRANSPORT


@pytest.mark.parametrize(
    "url",
    [
        # kombu encrypts this one because its scheme is named "rediss"; a transport given by path would not
        "rediss://redis.internal:6380/0",
        "amqp://guest:guest@127.0.0.1:5672//",
        "filesystem://",
    ],
)
def test_any_other_broker_keeps_kombus_transport_for_its_scheme(url):
    assert broker_transport(url) is None

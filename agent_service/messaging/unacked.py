"""Messages the Redis transport holds as delivered but not yet acknowledged, handed back to their queues early.

Kombu's Redis transport keeps each delivered message in a hash (`unacked`) and its delivery time in a sorted set
(`unacked_index`) until it is acknowledged; only after the visibility timeout (an hour) does a worker put it back.
The messages a lost worker had received but not claimed (its batch being filled, a claim under way, a countdown
held in its memory) would wait that long; the sweeper hands them back once the worker's lease has expired
(docs/decisions.md, "A lost worker's messages handed back on Redis"). RabbitMQ needs none of this: it hands a
closed connection's messages back itself.
"""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import RedisError

from agent_service.errors import BrokerUnavailableError


def restore_delivered_before(app: Celery, *, moment: float, limit: int) -> int:
    """Hand back to the head of their queues up to `limit` of the messages the Redis broker holds unacknowledged
    that were delivered before `moment` (a Unix time: kombu scores a delivery by the receiving host's clock), the
    oldest first; returns how many were found (one acknowledged meanwhile is found but not handed back). A live
    worker still holding one gets it a second time: the claim turns that delivery away. Redis brokers only.

    Raises: BrokerUnavailableError when the broker cannot be reached.
    """
    try:
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            # kombu has no call for "delivered before": the index is read as its own `restore_visible` reads it
            # (through the channel's client, which adds any global_keyprefix), and each message is handed back by
            # kombu's `restore_by_tag`, one transaction each, which pushes none twice.
            with channel.conn_or_acquire() as client:
                tags = client.zrange(channel.unacked_index_key, 0, moment, byscore=True, offset=0, num=limit)
                for tag in tags:
                    channel.qos.restore_by_tag(tag, client=client)
    except (BrokerOperationalError, RedisError, ConnectionError, OSError) as exc:
        raise BrokerUnavailableError(f"unacknowledged messages not handed back (broker unreachable: {exc})") from exc
    return len(tags)

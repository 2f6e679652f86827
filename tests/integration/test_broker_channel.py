"""The Redis broker channel sends the commands it runs outside its event loop (each delivery's entry in the
unacknowledged index, each acknowledgement, each publish) through one redis-py client, shared by every thread."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from kombu import Queue

from agent_service.messaging.redis_transport import Channel

QUEUE = "broker-channel-test"


def test_messages_acknowledged_from_many_threads_leave_the_unacknowledged_index(idle_app, idle_redis):
    # Given 40 messages delivered (and so held in kombu's unacknowledged index) through the app's connection
    with idle_app.connection_for_write() as connection:
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        queue = Queue(QUEUE, channel=channel)
        queue.declare()
        with connection.Producer() as producer:
            for number in range(40):
                producer.publish({"n": number}, routing_key=QUEUE)
        messages = [queue.get(no_ack=False) for _ in range(40)]
        assert idle_redis.hlen("unacked") == 40
        # When 8 threads acknowledge them at once
        with ThreadPoolExecutor(8) as threads:
            list(threads.map(lambda message: message.ack(), messages))
        # Then none is held any more, and none is left in the queue
        assert idle_redis.hlen("unacked") == 0
        assert idle_redis.zcard("unacked_index") == 0
        assert queue.get(no_ack=False) is None
        assert sorted(message.payload["n"] for message in messages) == list(range(40))


def test_a_channel_uses_one_client_until_its_pool_is_replaced(idle_app, idle_redis):
    with idle_app.connection_for_write() as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        # A failed connection makes kombu drop the channel's pool; the next command must not use the old one
        channel._disconnect_pools()
        with channel.conn_or_acquire() as after:
            assert after is not first
            assert after.connection_pool is channel.pool
            assert after.ping()

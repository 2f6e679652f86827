"""A process's Redis client has a connection for each of its pool threads at once (redis-py 8 caps a pool at 100
connections and raises beyond them by default)."""

from __future__ import annotations

from agent_service.config import Settings
from agent_service.services import Services


def test_every_pool_thread_of_a_busy_worker_can_hold_a_redis_connection_at_once():
    # Given a worker of 768 threads (the default) whose threads all use Redis at the same moment
    settings = Settings(_env_file=None, redis_url="redis://127.0.0.1:1/0")
    pool = Services(settings).redis.connection_pool
    # Then its client opens a connection for each of them (made, not connected: no server is needed)
    connections = [pool.make_connection() for _ in range(settings.worker_concurrency)]
    assert len(connections) == settings.worker_concurrency

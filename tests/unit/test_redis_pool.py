"""A process's Redis clients have a connection for each of its pool threads at once (redis-py 8 caps a pool at 100
connections and raises beyond them by default), and a worker's threads share one result backend."""

from __future__ import annotations

import threading
from typing import Any

from agent_service.config import Settings
from agent_service.services import Services
from agent_service.worker import create_celery_app


def test_every_pool_thread_of_a_busy_worker_can_hold_a_redis_connection_at_once():
    # Given a worker of the default pool size whose threads all use Redis at the same moment
    settings = Settings(_env_file=None, redis_url="redis://127.0.0.1:1/0")
    pool = Services(settings).redis.connection_pool
    # Then its client opens a connection for each of them (made, not connected: no server is needed)
    connections = [pool.make_connection() for _ in range(settings.worker_concurrency)]
    assert len(connections) == settings.worker_concurrency


def test_a_workers_threads_share_one_result_backend_on_redis():
    # Given a worker app whose results go to Redis
    app = create_celery_app(Settings(_env_file=None, redis_url="redis://127.0.0.1:1/0"))
    # When pool threads, started one after another as a pool starts them, store results
    backends: list[Any] = []
    for _ in range(3):
        thread = threading.Thread(target=lambda: backends.append(app.backend))
        thread.start()
        thread.join()
    # Then they share one backend (one client, one pool), sized for every thread at once
    assert len({id(backend) for backend in backends}) == 1
    assert backends[0].client.connection_pool.max_connections >= app.conf.worker_concurrency

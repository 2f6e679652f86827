"""Telling every worker that a task was cancelled, so the one running its LLM call can abort it: a Redis
pub/sub channel, published to by `submission.submit.cancel_task` and listened to by each process that runs
tasks. A worker that misses the message (not yet subscribed, Redis briefly away) still never completes the
task: the row is cancelled first, and the call's reply is then discarded."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.client import PubSub

logger = logging.getLogger(__name__)

CANCEL_CHANNEL = "agent_service:cancelled"
_RECONNECT_PAUSE_SECONDS = 1.0


def announce_cancelled(redis: Redis, task_id: uuid.UUID) -> None:
    """Tell the listening workers. Raises: redis.RedisError."""
    redis.publish(CANCEL_CHANNEL, str(task_id))


class CancelListener:
    """Calls `on_cancel(task_id)` on a thread of its own for every task announced cancelled."""

    def __init__(self, redis: Redis, on_cancel: Callable[[uuid.UUID], Any]) -> None:
        self._redis, self._on_cancel = redis, on_cancel

    def start(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(**{CANCEL_CHANNEL: self._received})
        # redis-py subscribes again by itself after a reconnection.
        pubsub.run_in_thread(sleep_time=1.0, daemon=True, exception_handler=_pause_after_error)

    def _received(self, message: dict[str, Any]) -> None:
        try:
            task_id = uuid.UUID(message["data"].decode())
        except (ValueError, AttributeError):
            logger.warning("ignored a malformed cancellation: %r", message.get("data"))
            return
        self._on_cancel(task_id)


def _pause_after_error(error: BaseException, _pubsub: PubSub, _thread: threading.Thread) -> None:
    logger.warning("cancellation channel unreadable, retrying: %s", error)
    time.sleep(_RECONNECT_PAUSE_SECONDS)

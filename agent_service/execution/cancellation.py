"""Aborting the LLM call of a task cancelled while the call runs, instead of paying for its reply; a call held
by admission is not made."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from concurrent.futures import Future

from agent_service.llm.messages import LLMReply
from agent_service.llm.runners import LLMRunner


class RunningCalls:
    """The LLM calls under way in this process, by task id (the pipeline adds and discards them), and those
    held by admission (the pipeline holds and unholds them)."""

    def __init__(self, llm: LLMRunner) -> None:
        self._llm = llm
        self._calls: dict[uuid.UUID, Future[LLMReply]] = {}
        self._held: dict[uuid.UUID, bool] = {}  # held call -> its task was cancelled meanwhile
        self._lock = threading.Lock()

    def hold(self, task_ids: Iterable[uuid.UUID]) -> None:
        with self._lock:
            self._held.update((task_id, False) for task_id in task_ids)

    def unhold(self, task_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """No longer held; returns those whose tasks were cancelled while they were."""
        with self._lock:
            return {task_id for task_id in task_ids if self._held.pop(task_id, False)}

    def add(self, calls: Iterable[tuple[uuid.UUID, Future[LLMReply]]]) -> None:
        with self._lock:
            self._calls.update(calls)

    def discard(self, task_ids: Iterable[uuid.UUID]) -> None:
        with self._lock:
            for task_id in task_ids:
                self._calls.pop(task_id, None)

    def abort(self, task_id: uuid.UUID) -> bool:
        """Cancel the task's call if this process runs it (its future ends cancelled, its HTTP request is
        closed) or holds it (it is not made); returns whether it did."""
        with self._lock:
            if task_id in self._held:
                self._held[task_id] = True
                return True
            future = self._calls.pop(task_id, None)
        if future is None or future.done():
            return False
        self._llm.cancel([future])
        return True

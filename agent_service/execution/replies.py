"""LLM replies held in Redis: each reply kept until its outcome is recorded, so that a worker killed in
between costs no second call (the next claim of the task records the kept reply), and the reply cache of
the agents that ask for one (a deterministic call answered again, for free, while its entry lives).

One pipelined round trip per lookup (a batch's retaken claims and cacheable calls, before admission), per
group of replies that arrives, and per group recorded. Redis trouble never fails a task: the reply is then
simply not kept (or not cached), as before this existed. See docs/decisions.md, "No call paid twice".
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from typing import Any

from redis import Redis, RedisError

from agent_service.admission.base import Candidate
from agent_service.config import Settings
from agent_service.llm.messages import LLMReply, LLMRequest, ToolCall, Usage
from agent_service.monitoring import REPLY_CACHE

logger = logging.getLogger(__name__)

KEPT_PREFIX = "agent_service:reply:"
CACHE_PREFIX = "agent_service:cache:"
CACHED_MODEL_PREFIX = "cache:"


@dataclass(frozen=True)
class StoredReply:
    """A reply found in Redis, with the model that gave it: a kept one (paid for by an earlier attempt of the
    same task, so recorded with its usage), or a cached one (model `cache:<model>`, no usage: it cost
    nothing now)."""

    reply: LLMReply
    model: str
    position: int | None = None  # the step a durable run's turn was asked for


@dataclass(frozen=True)
class Arrived:
    """A reply that has just arrived for `candidate`; `cacheable` once its kind accepted it; `position`, the
    step it answers, for a turn of a durable run (whose earlier turns the same key kept before)."""

    candidate: Candidate
    reply: LLMReply
    cacheable: bool
    position: int | None = None


class ReplyStore:
    """Kept replies (with `keep`) and cached replies, in Redis."""

    def __init__(self, redis: Redis, *, keep: bool, keep_seconds: int) -> None:
        self._redis, self._keep, self._keep_seconds = redis, keep, keep_seconds

    @classmethod
    def for_settings(cls, settings: Settings, redis: Redis) -> ReplyStore:
        """Replies are kept (KEEP_REPLIES) for twice the stale-task threshold: longer than a lost run takes
        to be claimed again (redelivery or the sweeper), with room for a backlog in between."""
        return cls(redis, keep=settings.keep_replies, keep_seconds=2 * settings.stale_task_after_seconds)

    def lookup(self, candidates: Sequence[Candidate]) -> dict[uuid.UUID, StoredReply]:
        """The reply each candidate can be settled with, without a call: one kept by an earlier attempt whose
        worker was lost before recording it (the newest), else a cached one for a cacheable request.
        Counts cache hits and misses."""
        wanted: list[tuple[uuid.UUID, str, bool]] = []
        for candidate in candidates:
            if self._keep:
                wanted += [(candidate.task_id, _kept_key(candidate.task_id, a), False) for a in _earlier(candidate)]
            if is_cacheable(candidate):
                wanted.append((candidate.task_id, cache_key(candidate.request), True))
        if not wanted:
            return {}
        try:
            values = self._redis.mget([key for _, key, _ in wanted])
        except RedisError as exc:
            logger.warning("kept and cached replies unreadable, calling the model: %s", exc)
            return {}
        found: dict[uuid.UUID, StoredReply] = {}
        for (task_id, _, cached), value in zip(wanted, values, strict=True):
            if cached and task_id not in found:
                REPLY_CACHE.labels("hit" if value is not None else "miss").inc()
            if value is not None and task_id not in found:
                found[task_id] = _decoded(value, cached=cached)
        return found

    def keep(self, arrived: Sequence[Arrived]) -> None:
        """Keep these replies until `forget`, and cache the cacheable ones for their agent's TTL."""
        writes = [
            (_kept_key(item.candidate.task_id, item.candidate.attempt), self._keep_seconds, item)
            for item in arrived
            if self._keep
        ]
        writes += [
            (cache_key(item.candidate.request), item.candidate.agent.cache_ttl_seconds, item)
            for item in arrived
            if item.cacheable and is_cacheable(item.candidate)
        ]
        if not writes:
            return
        pipeline = self._redis.pipeline(transaction=False)
        for key, seconds, item in writes:
            pipeline.set(key, _encoded(item.reply, item.candidate.request.model, item.position), ex=seconds)
        try:
            pipeline.execute()
        except RedisError as exc:
            logger.warning("%d replies not kept: %s", len(arrived), exc)

    def forget(self, claims: Iterable[tuple[uuid.UUID, int]]) -> None:
        """The outcomes of these (task id, attempt) claims are recorded: drop the replies their attempts and
        the earlier ones kept."""
        keys = [_kept_key(task_id, a) for task_id, attempt in claims for a in range(1, attempt + 1)]
        if not (self._keep and keys):
            return
        try:
            self._redis.delete(*keys)
        except RedisError as exc:  # they expire on their own
            logger.warning("%d kept replies not dropped: %s", len(keys), exc)


def is_cacheable(candidate: Candidate) -> bool:
    """Only a deterministic call of an agent that asks for the cache: temperature 0."""
    return candidate.agent.cache_ttl_seconds > 0 and candidate.request.temperature == 0


def cache_key(request: LLMRequest) -> str:
    """The same model, parameters and messages give the same key."""
    identity = [
        request.model,
        request.temperature,
        request.max_tokens,
        request.options.model_dump(mode="json", exclude_none=True),
        request.messages,
        request.tools,
        request.output_schema,
    ]
    digest = hashlib.sha256(json.dumps(identity, separators=(",", ":")).encode()).hexdigest()
    return CACHE_PREFIX + digest


def _earlier(candidate: Candidate) -> range:
    """The earlier attempts, newest first: any of them may have been lost with a reply kept."""
    return range(candidate.attempt - 1, 0, -1)


def _kept_key(task_id: uuid.UUID, attempt: int) -> str:
    return f"{KEPT_PREFIX}{task_id}:{attempt}"


def _encoded(reply: LLMReply, model: str, position: int | None) -> str:
    tokens = list(astuple(reply.usage)) if reply.usage else None
    stored: dict[str, Any] = {"text": reply.text, "usage": tokens, "model": model, "finish_reason": reply.finish_reason}
    if reply.tool_calls or reply.refused:
        stored.update(tool_calls=reply.tool_calls, refused=reply.refused)
    if position is not None:
        stored["position"] = position
    return json.dumps(stored)


def _decoded(value: bytes | str, *, cached: bool) -> StoredReply:
    stored = json.loads(value)
    usage = None if cached or not stored["usage"] else Usage(*stored["usage"])  # a cached reply costs nothing now
    reply = LLMReply(
        stored["text"],
        usage,
        stored.get("finish_reason"),
        tool_calls=tuple(ToolCall(*call) for call in stored.get("tool_calls", ())),
        refused=stored.get("refused", False),
    )
    model = stored["model"]
    return StoredReply(reply, CACHED_MODEL_PREFIX + model if cached else model, stored.get("position"))

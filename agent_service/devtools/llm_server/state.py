"""What the server keeps between requests (one `ServerState` per app, under `STATE`): its settings, rules
and scripts, the rate limiter, the prompt cache, the request log and the counts ``/control/stats`` reports.
``/control/reset`` brings back the command line's settings and forgets the rest."""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agent_service.devtools.llm_server.chat import ChatRequest
from agent_service.devtools.llm_server.faults import Fault
from agent_service.devtools.llm_server.rate_limits import DEFAULT_RATE_BURST_SECONDS, RateLimiter
from agent_service.devtools.llm_server.rules import Rule, parse_rule
from agent_service.devtools.llm_server.scripts import Script
from agent_service.devtools.llm_server.usage import PromptCache

REQUEST_LOG_SIZE = 200_000


@dataclass
class ServerState:
    startup_latency_ms: float
    startup_jitter_ms: float
    rng: random.Random
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    context_window: float = 0.0  # 0: no limit
    stream_pause_ms: float = 0.0  # between the pieces of a streamed reply, so a follower sees it arrive
    prompt_cache: PromptCache = field(default_factory=PromptCache)
    rules: dict[int, Rule] = field(default_factory=dict)
    scripts: dict[str, Script] = field(default_factory=dict)  # by name, for rules, headers and directives
    rule_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    request_seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    request_log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_SIZE))
    by_status: Counter[int] = field(default_factory=Counter)
    in_flight: int = 0
    limiter: RateLimiter = field(default_factory=RateLimiter)
    startup_rate_limits: dict[str, dict[str, float]] = field(default_factory=dict)
    startup_burst_seconds: float = DEFAULT_RATE_BURST_SECONDS

    def add_rule(self, body: dict[str, Any]) -> Rule:
        rule = parse_rule(body, ids=self.rule_ids, scripts=self.scripts)
        self.rules[rule.id] = rule
        return rule

    def take_rule_action(self, chat: ChatRequest) -> Fault | Script | None:
        rule = next((rule for rule in self.rules.values() if rule.applies_to(chat, self.rng)), None)
        if rule is None:
            return None
        if rule.times is not None:
            rule.times -= 1
            if rule.times == 0:
                del self.rules[rule.id]
        return rule.action

    def latency_s(self) -> float:
        jitter = self.rng.uniform(0, self.latency_jitter_ms) if self.latency_jitter_ms else 0.0
        return (self.latency_ms + jitter) / 1000

    def record(self, chat: ChatRequest | None, *, fault: Fault | None, status: int) -> dict[str, Any]:
        """Log a request as it arrives (`end` adds how it ended); returns its entry. `chat` is None for a
        request that could not be read."""
        self.by_status[status] += 1
        entry = {
            "seq": next(self.request_seq),
            "at": time.time(),
            "model": chat.model if chat else "",
            "fault": fault.kind if fault else None,
            "status": status,
            "text": chat.log_text if chat else "",
            "turn": chat.turn if chat else 0,
            "tools": [tool["function"]["name"] for tool in chat.tools] if chat else [],
            "response_format": chat.body.get("response_format") if chat else None,
            "ended": None,
            "ended_at": None,
        }
        self.request_log.append(entry)
        return entry

    @staticmethod
    def end(entry: dict[str, Any], how: str) -> None:
        """Note how a logged request ended: "answered" once its whole response was sent, "dropped" when the
        client went away first (a cancelled call, a client timeout)."""
        entry.update(ended=how, ended_at=time.time())

    def config(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "latency_jitter_ms": self.latency_jitter_ms,
            "context_window": self.context_window,
            "stream_pause_ms": self.stream_pause_ms,
            "rate_limits": self.limiter.limits,
            "rate_burst_seconds": self.limiter.burst_seconds,
        }

    def reset(self) -> None:
        self.rules.clear()
        self.scripts.clear()
        self.prompt_cache.clear()
        self.context_window = 0.0
        self.stream_pause_ms = 0.0
        self.request_log.clear()
        self.by_status.clear()
        self.limiter.refused = 0
        self.latency_ms, self.latency_jitter_ms = self.startup_latency_ms, self.startup_jitter_ms
        self.limiter.configure(self.startup_rate_limits, burst_seconds=self.startup_burst_seconds)


STATE = web.AppKey("state", ServerState)

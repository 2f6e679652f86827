"""Rules set through ``/control/faults``: each answers the requests it matches (by text, by model, for some
times, at some rate) with a fault (``{"fault": KIND, ...}``) or a script (``{"script": NAME or [replies]}``).
The first rule that applies wins; one that has run its `times` is removed."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent_service.devtools.llm_server.chat import ChatRequest
from agent_service.devtools.llm_server.errors import ApiError
from agent_service.devtools.llm_server.faults import Fault, parse_fault
from agent_service.devtools.llm_server.scripts import Script, parse_script, registered_script
from agent_service.devtools.llm_server.validation import json_number, optional_text, reject_unknown_fields

RULE_FIELDS = frozenset({"fault", "script", "match", "model", "times", "rate", "retry_after", "delay_ms"})


@dataclass
class Rule:
    id: int
    action: Fault | Script
    match: str | None = None
    times: int | None = None
    rate: float | None = None
    model: str | None = None  # only requests for this model (an outage of one model)

    def applies_to(self, chat: ChatRequest, rng: random.Random) -> bool:
        if self.match is not None and not any(self.match in text for text in chat.texts):
            return False
        if self.model is not None and chat.model != self.model:
            return False
        # Roll only for rate-limited rules so a seeded run stays reproducible.
        return self.rate is None or rng.random() < self.rate

    def as_json(self) -> dict[str, Any]:
        what: dict[str, Any]
        if isinstance(self.action, Script):
            what = {"script": self.action.name or self.action.source}
        else:
            fault = self.action
            what = {"fault": fault.kind, "retry_after": fault.retry_after, "delay_ms": fault.delay_ms}
        return {"id": self.id, **what, "match": self.match, "model": self.model, "times": self.times, "rate": self.rate}


def optional_times(body: dict[str, Any]) -> int | None:
    times = body.get("times")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise ApiError(f"'times' must be a positive integer, got {times!r}", param="times")
    return times


def parse_rule(body: dict[str, Any], *, ids: Iterator[int], scripts: Mapping[str, Script]) -> Rule:
    """A fault rule ({"fault": KIND, ...}) or a script rule ({"script": NAME or [replies]}), with the same
    matching fields."""
    reject_unknown_fields(body, RULE_FIELDS)
    action: Fault | Script
    if "script" in body:
        if "fault" in body:
            raise ApiError("a rule has either 'fault' or 'script', not both", param="script")
        action = rule_script(body["script"], scripts=scripts)
    else:
        action = parse_fault(body)
    rate = body.get("rate")
    match, model, times = optional_text(body, "match"), optional_text(body, "model"), optional_times(body)
    rate = None if rate is None else json_number(rate, "rate", maximum=1.0)
    # The id is drawn last so rejected rules do not use one up.
    return Rule(id=next(ids), action=action, match=match, times=times, rate=rate, model=model)


def rule_script(value: Any, *, scripts: Mapping[str, Script]) -> Script:
    """A rule's script: the name of a registered one (as registered now), or its replies inline. Tool calls
    need not name a tool the request offers: a test may script a model calling an unknown tool."""
    if isinstance(value, str):
        return registered_script(value, scripts=scripts, source="script")
    return parse_script(value, where="script")

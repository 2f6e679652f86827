"""A second try for a one-shot run whose call exceeded its model's context: the run started again with the
task's description cut to fit, once, when the task's agent allows it (`truncate_to_fit`)."""

from __future__ import annotations

import re
from dataclasses import replace

from agent_service.errors import ContextLengthExceededError
from agent_service.execution.settling import Settlement
from agent_service.execution.turns import Turning
from agent_service.kinds.base import AskModel
from agent_service.llm.messages import LLMRequest

# Figures in a provider's context-length error (OpenAI's wordings).
CONTEXT_LIMIT = re.compile(r"maximum context length is (\d+)")
PROMPT_SIZE = re.compile(r"(\d+) in the messages|resulted in (\d+) tokens")


def cut_to_fit(turning: Turning, how: Settlement) -> Turning | None:
    """The claim's run started again with its description cut to fit its model's context, when the call
    exceeded it, the agent allows cutting and it was not cut already (never a durable run, whose conversation
    is its steps); else None. If that call cannot be made now, `how` stands."""
    work = turning.work
    if not (isinstance(how, ContextLengthExceededError) and work.agent.truncate_to_fit and not turning.truncated):
        return None
    if turning.log is not None:
        return None
    description = fitted_description(work.description, str(how), request=turning.request)
    if description is None:
        return None
    work = replace(work, description=description)
    run = turning.kind.start(work)
    turn = run.next(None)
    if not isinstance(turn, AskModel):
        return None
    return replace(turning.asking(turn.request), work=work, run=run, truncated=True, after=how)


def fitted_description(description: str, error: str, *, request: LLMRequest) -> str | None:
    """`description` cut so that the request fits the context the provider's `error` states ("maximum context
    length is N tokens ... M in the messages" or "resulted in M tokens"), with a tenth to spare; None when the
    error gives no figures or cutting all of the description would not be enough."""
    limit, prompt = _first_number(CONTEXT_LIMIT, error), _first_number(PROMPT_SIZE, error)
    if limit is None or prompt is None:
        return None
    room = limit - request.max_tokens  # what the messages may use
    characters = sum(len(message.content) for message in request.messages)
    excess_chars = (prompt - room) * characters / prompt * 1.1
    keep = int(len(description) - excess_chars)
    return description[:keep] if keep > 0 else None


def _first_number(pattern: re.Pattern[str], text: str) -> int | None:
    found = pattern.search(text)
    return int(next(group for group in found.groups() if group)) if found else None

"""The model calls of a batch: admitted (admission's decisions, or a wait while its state is out of reach),
sent on the LLM runner (a followed task's streaming its tokens), listed as running so that a cancelled
task's call can be aborted, and their replies kept in Redis as soon as they arrive."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from agent_service.admission.base import Admission, CallEnded, Decision
from agent_service.config import Settings
from agent_service.errors import CallCancelledError, CallNotSentError, PermanentError, classify
from agent_service.execution.cancellation import RunningCalls
from agent_service.execution.replies import Arrived, ReplyStore
from agent_service.execution.retry import backoff_delay
from agent_service.execution.settling import Answer
from agent_service.execution.turns import Taken, Turning
from agent_service.live.events import EventKind, stream_key
from agent_service.live.publisher import LivePublisher, Update
from agent_service.llm.messages import LLMReply, LLMRequest
from agent_service.llm.runners import LLMRunner
from agent_service.monitoring import time_llm_calls
from agent_service.tracing import NO_TRACES, Attributes, TaskTraces


class Calls:
    """Admits, sends and ends a batch's model calls."""

    def __init__(
        self,
        *,
        settings: Settings,
        llm: LLMRunner,
        admission: Admission,
        replies: ReplyStore | None,
        running: RunningCalls | None,
        live: LivePublisher | None,
        traces: TaskTraces = NO_TRACES,
    ) -> None:
        self._settings, self._llm, self._admission = settings, llm, admission
        self._replies, self._running, self._live = replies, running, live
        self._traces = traces
        self.replied: set[uuid.UUID] = set()  # the claims settled from a reply, which is kept until recorded

    def admit(self, turnings: Sequence[Turning]) -> list[Decision]:
        """Admission's decisions; while the state the controls share is out of reach (Redis down), every task
        waits, its attempt given back, rather than run unchecked or fail. Raises: a PermanentError of a check."""
        candidates, start_ns = [turning.asked for turning in turnings], time.time_ns()
        try:
            decisions = self._admission.admit(candidates)
        except Exception as exc:
            error = classify(exc)
            if isinstance(error, PermanentError):
                raise error from exc
            wait_for = backoff_delay(1, settings=self._settings, requested=error.delay)
            deferral = Decision.defer(f"admission controls unavailable: {error}", retry_in=wait_for, holdable=False)
            decisions = [deferral] * len(candidates)
        if self._traces.enabled:
            self._traces.spans(
                "admission",
                [candidate.task_id for candidate in candidates],
                start_ns=start_ns,
                attributes=[_admission_attributes(decision) for decision in decisions],
            )
        return decisions

    def submit(self, turnings: list[Turning], *, into: dict[Future[Any], Turning], first: bool = False) -> None:
        """Send these claims' calls, a followed task's streaming its tokens: which are followed is asked now, for
        the calls leaving together, so a follower who came since gets this call's tokens (the `first` of the
        batch: a followed task's followers are told it started)."""
        if self._live:
            turnings = _streamed(self._live, turnings, first=first)
        requests = [self._traced(turning) for turning in turnings]
        futures = self._llm.submit(requests)
        time_llm_calls(futures, [request.model for request in requests])
        into.update(zip(futures, turnings, strict=True))
        if self._running:
            self._running.add(
                (turning.claim.task_id, future) for future, turning in zip(futures, turnings, strict=True)
            )

    def hold(self, task_ids: list[uuid.UUID]) -> None:
        """These claims' calls are held (admission deferred them for a moment): a cancellation is noted."""
        if self._running and task_ids:
            self._running.hold(task_ids)

    def unhold(self, turnings: list[Turning]) -> tuple[list[Turning], list[Turning]]:
        """These held calls, no longer held: those still to be made, and those of tasks cancelled meanwhile."""
        if not (self._running and turnings):
            return turnings, []
        cancelled = self._running.unhold([turning.claim.task_id for turning in turnings])
        return (
            [turning for turning in turnings if turning.claim.task_id not in cancelled],
            [turning for turning in turnings if turning.claim.task_id in cancelled],
        )

    def ended(self, done: list[tuple[Turning, Future[LLMReply]]]) -> list[tuple[Turning, LLMReply | BaseException]]:
        """These calls' endings, the calls no longer running and admission told they ended."""
        if self._running:
            self._running.discard(turning.claim.task_id for turning, _ in done)
        endings = [(turning, _ending(future)) for turning, future in done]
        self._admission.release([_call_ended(turning, ending) for turning, ending in endings])
        return endings

    def keep(self, taken: list[tuple[Turning, LLMReply | BaseException, Taken]]) -> None:
        """Keep the replies that arrived (in one write), as soon as they are seen: a one-shot run's answer as
        cacheable too, a durable run's turn with the step it answers."""
        arrived = [
            Arrived(
                turning.asked,
                ending,
                cacheable=isinstance(how, Answer) and turning.log is None,
                position=turning.log.position if turning.log else None,
            )
            for turning, ending, how in taken
            if isinstance(ending, LLMReply)
        ]
        if self._replies and arrived:
            self._replies.keep(arrived)
            self.replied.update(item.candidate.task_id for item in arrived)

    def _traced(self, turning: Turning) -> LLMRequest:
        """The claim's request, carrying its delivery's traceparent when traced (the call's span hangs under it)."""
        traceparent = self._traces.of(turning.claim.task_id).traceparent
        return turning.request if traceparent is None else replace(turning.request, traceparent=traceparent)

    def abandon(self, task_ids: list[uuid.UUID]) -> None:
        """These claims are settled otherwise (cut short): their calls (held ones too) are no longer ours to abort,
        and their kept replies stay kept, for the next attempt."""
        if self._running:
            self._running.discard(task_ids)
            self._running.unhold(task_ids)
        self.replied.clear()


def with_request(turning: Turning, request: LLMRequest | None) -> Turning:
    """The claim with the request admission chose instead of its own, if it chose one."""
    if request is None or turning.candidate is None:
        return turning
    return replace(turning, candidate=replace(turning.candidate, request=request))


def _streamed(live: LivePublisher, turnings: list[Turning], *, first: bool) -> list[Turning]:
    """The claims, those of followed tasks with their request streaming its tokens (the others' not), after a
    `started` event when `first`: one round trip to ask for them all, one more only when some are followed."""
    followed = live.followed([turning.claim.task_id for turning in turnings])
    if first and followed:
        started = [turning for turning in turnings if str(turning.claim.task_id) in followed]
        details = ({"attempt": turning.claim.attempt, "model": turning.request.model} for turning in started)
        updates = (Update(turning.claim.task_id, EventKind.STARTED, data) for turning, data in zip(started, details))
        live.publish_many(updates)
    return [_streaming(turning, str(turning.claim.task_id) in followed) for turning in turnings]


def _streaming(turning: Turning, followed: bool) -> Turning:
    key = stream_key(turning.claim.task_id) if followed else None
    return (
        turning
        if turning.request.stream_key == key
        else with_request(turning, replace(turning.request, stream_key=key))
    )


def _admission_attributes(decision: Decision) -> Attributes:
    attributes: dict[str, str] = {"agent_service.admission.verdict": decision.verdict.value}
    if decision.reason:
        attributes["agent_service.admission.reason"] = decision.reason
    if decision.request is not None:
        attributes["gen_ai.request.model"] = decision.request.model  # another model chosen (the fallback)
    return attributes


def _ending(future: Future[LLMReply]) -> LLMReply | BaseException:
    """The reply of an ended call, or the error it ended with (an aborted one: CallCancelledError)."""
    if future.cancelled():
        return CallCancelledError("cancelled while its LLM call ran; the call was aborted")
    return future.exception() or future.result()


def _call_ended(turning: Turning, ending: LLMReply | BaseException) -> CallEnded:
    if isinstance(ending, CallNotSentError):
        return CallEnded(turning.asked)  # never sent: what admission reserved for it is given back
    if isinstance(ending, BaseException):
        return CallEnded(turning.asked, error=ending)
    return CallEnded(turning.asked, reply=ending)

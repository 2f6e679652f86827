"""What a batch runs with, in one object: `RunContext`, built once per process by the composition root
(`services.Services.run_context`) or by a test, and handed to `execution.pipeline.execute_agent_tasks`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from agent_service.admission.base import Admission
from agent_service.clock import utcnow
from agent_service.config import Settings
from agent_service.execution.cancellation import RunningCalls
from agent_service.execution.outcomes import TaskOutcome
from agent_service.execution.replies import ReplyStore
from agent_service.execution.tool_calls import ToolCaller
from agent_service.kinds import KINDS
from agent_service.kinds.base import TaskKind
from agent_service.live.publisher import LivePublisher
from agent_service.llm.prices import PriceBook
from agent_service.llm.runners import LLMRunner
from agent_service.tracing import NO_TRACES, TaskTraces

# Told of each group of outcomes as it is recorded, each with its position in the batch.
OnSettled = Callable[[list[tuple[int, TaskOutcome]]], None]
# Told, after the commit, of the groups whose last task that commit ended.
OnGroupsEnded = Callable[[list[str]], None]


@dataclass(frozen=True)
class RunContext:
    """The collaborators of a batch's run. Only `settings`, `session_factory` and `llm` are required:

    - `admission`: the checks a call passes first (none by default); `prices`: what calls cost (by default
      those the settings give); `kinds`: the task kinds by name (`kinds.KINDS`);
    - `replies`: replies kept until recorded and the reply caches; `running`: the calls under way, so that a
      cancelled task's call is aborted; `live`: followed tasks' progress published; `tool_caller`: where
      tool calls run (by default one of the batch's own, closed with it); `clock`: the time of writes;
    - `on_settled`: told each group of outcomes once recorded (it must not raise); `on_groups_ended`: told
      the ids of the groups (of tasks) whose last task ended;
    - `traces`: the deliveries' traces, which the claim, admission, calls and settle add their spans to.
    """

    settings: Settings
    session_factory: sessionmaker[Session]
    llm: LLMRunner
    admission: Admission = field(default_factory=Admission)
    prices: PriceBook | None = None
    kinds: Mapping[str, TaskKind] = field(default_factory=lambda: KINDS)
    replies: ReplyStore | None = None
    running: RunningCalls | None = None
    live: LivePublisher | None = None
    tool_caller: ToolCaller | None = None
    clock: Callable[[], datetime] = utcnow
    on_settled: OnSettled | None = None
    on_groups_ended: OnGroupsEnded | None = None
    traces: TaskTraces = NO_TRACES

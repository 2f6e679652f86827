"""An example multi-turn kind, written as a file of `agent_service/kinds/` would be and registered by the
tests that use it: its run calls a search tool with the task's title, then asks the model to answer from
what the search found. It touches nothing in `execution/`: the pipeline records its tool call and its model
turn as steps and resumes it after them like any durable kind's."""

from __future__ import annotations

import json

from agent_service.kinds.base import (
    AgentDefinition,
    AskModel,
    CallTools,
    Done,
    End,
    KindResult,
    ModelReplied,
    TaskWork,
    ToolRequest,
    ToolsAnswered,
    Turn,
    agent_request,
    task_text,
)
from agent_service.llm.messages import ToolCall
from agent_service.tools.definitions import ToolDefinition

SEARCH = ToolDefinition(
    name="search",
    description="Search the knowledge base",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    method="GET",
    url="https://kb.example/search",
)


class RetrievalKind:
    """Search first, then answer from what was found."""

    name = "retrieval"
    durable = True

    def check_agent(self, agent: AgentDefinition) -> None:
        """A retrieval agent needs nothing beyond its prompt."""

    def check_task(self, work: TaskWork) -> None:
        """A retrieval task needs nothing beyond its words."""

    def start(self, work: TaskWork) -> RetrievalRun:
        return RetrievalRun(work)


class RetrievalRun:
    def __init__(self, work: TaskWork) -> None:
        self._work = work

    def next(self, done: Done | None) -> Turn:
        if done is None:
            call = ToolCall("search-1", SEARCH.name, json.dumps({"query": self._work.title}))
            return CallTools((ToolRequest(call, SEARCH, ("kb.example",)),))
        if isinstance(done, ToolsAnswered):
            found = done.results[0]
            return AskModel(agent_request(self._work, f"{task_text(self._work)}\n\nWhat the search found:\n{found}"))
        assert isinstance(done, ModelReplied)
        return End(KindResult(text=done.reply.text))

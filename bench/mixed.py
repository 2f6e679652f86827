"""The mixed load (issue 20, target 4): every kind at once, several users, some tasks submitted as groups, and
some followed live by a real follower (`tasks.follow_agent_task` on a thread of its own, reading the task's
stream until its `ended` event, as a web page's server-sent events would)."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, replace
from typing import Any

from celery import Celery

from agent_service.live.events import EventKind
from agent_service.tasks import create_agent_tasks, follow_agent_task
from bench.loads import AgentTaskLoad

FOLLOW_TIMEOUT_SECONDS = 600  # a follower gives up after this; it normally ends with its task's `ended` event
# A data task's input (the data agent's result is valid against `bench.environment.DATA_SCHEMA`).
DATA_PAYLOAD = {"email": "Hi, Ada here: two A-1 and one B-7 please."}


@dataclass(frozen=True)
class Mix:
    """What task `index` of a run is. Its kind: a cycle of `kinds` (six texts, two decisions, a data task and a
    tool-using one in ten). Its user: tasks come in blocks of `block`, one user's each, `users` users in turn.
    Its group: every `grouped_every`-th block is submitted as a group (0: none). Followed: one task in
    `follow_every` (0: none), its place in each run of `follow_every` moving along so every kind gets some."""

    kinds: tuple[str, ...] = ("text", "decision", "text", "data", "text", "api", "text", "decision", "text", "text")
    users: int = 8
    block: int = 50
    grouped_every: int = 4
    follow_every: int = 20

    def kind(self, index: int) -> str:
        return self.kinds[index % len(self.kinds)]

    def user(self, index: int) -> str:
        return f"bench-{(index // self.block) % self.users}"

    def grouped(self, block: int) -> bool:
        return bool(self.grouped_every) and block % self.grouped_every == 0

    def followed(self, index: int) -> bool:
        return bool(self.follow_every) and index % self.follow_every == (index // self.follow_every) % self.follow_every

    def unfollowed_ungrouped(self) -> Mix:
        """The same tasks, none followed, none in a group."""
        return replace(self, grouped_every=0, follow_every=0)


@dataclass(frozen=True)
class FollowerFigures:
    """The followers of a run: how many there were, how many read model tokens off the stream (the task's
    call was streamed), and how many reached the task's `ended` event."""

    followed: int
    streamed: int
    ended: int


class MixedLoad(AgentTaskLoad):
    """Tasks of every kind (`agents`: the bench's agent ids by kind) as `mix` says, each submitted block one
    `create_agent_tasks` call (with its group when grouped); each followed task gets its follower as soon as it
    is submitted."""

    def __init__(self, app: Celery, *, agents: dict[str, str], mix: Mix) -> None:
        super().__init__(app, agent_id=agents["text"])
        self.agents = agents
        self.mix = mix
        self._groups = uuid.uuid4().hex[:8]  # group names are new for every round: an ended group takes no more
        self._followers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._streamed = self._ended = 0

    def submit(self, first: int, count: int) -> None:
        end = first + count
        while first < end:
            block = first // self.mix.block
            last = min(end, (block + 1) * self.mix.block)
            group = f"bench-{self._groups}-{block}" if self.mix.grouped(block) else None
            ids = create_agent_tasks([self._item(index) for index in range(first, last)], app=self.app, group=group)
            for index, task_id in zip(range(first, last), ids):
                if self.mix.followed(index):
                    self._follow(task_id)
            first = last

    def forget(self) -> None:
        """As `AgentTaskLoad.forget`, once the followers so far have ended; their counts start again."""
        self.follower_figures()
        super().forget()
        self._followers, self._streamed, self._ended = [], 0, 0
        self._groups = uuid.uuid4().hex[:8]

    def follower_figures(self, *, timeout: float = 30) -> FollowerFigures:
        """Wait up to `timeout` seconds in all for the followers to end; their figures."""
        for follower in self._followers:
            follower.join(timeout=timeout)
        return FollowerFigures(len(self._followers), self._streamed, self._ended)

    def _item(self, index: int) -> dict[str, Any]:
        kind = self.mix.kind(index)
        item: dict[str, Any] = {
            "title": f"bench task {index}",
            "description": "Summarise the benchmark in one line.",
            "agent_id": self.agents[kind],
            "user_id": self.mix.user(index),
        }
        return item | {"payload": DATA_PAYLOAD} if kind == "data" else item

    def _follow(self, task_id: str) -> None:
        follower = threading.Thread(target=self._read_until_ended, args=(task_id,), daemon=True)
        follower.start()
        self._followers.append(follower)

    def _read_until_ended(self, task_id: str) -> None:
        streamed = ended = False
        for event in follow_agent_task(task_id, timeout=FOLLOW_TIMEOUT_SECONDS, app=self.app):
            streamed = streamed or event.kind is EventKind.TOKEN
            ended = event.kind is EventKind.ENDED
        with self._lock:
            self._streamed += streamed
            self._ended += ended

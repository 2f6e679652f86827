"""What live output costs a task: the CPU per task of a worker process and of its LLM process when
`execute_agent_tasks` runs N tasks in batches of 64, as a worker does, against the bundled server (no
latency), in three set-ups, interleaved over several rounds:

- off: no publisher (as without Redis);
- nobody follows: the publisher on, as by default with Redis (one EXISTS pipeline per batch, one script
  call per group of outcomes, nothing written);
- all followed: every task followed, so every call is streamed and its tokens written.

    python -m bench.live_cost [--tasks 500] [--rounds 3] [--redis-url redis://127.0.0.1:6379/11]

It uses a database of its own (`--database`, dropped and created) and the Redis DB given (its live keys only).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from dataclasses import dataclass

import psutil
import redis
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from agent_service.config import Settings
from agent_service.database import create_empty_database, make_engine, make_session_factory, session_scope
from agent_service.devtools.processes import llm_server
from agent_service.execution.context import RunContext
from agent_service.execution.outcomes import TaskOutcome
from agent_service.execution.pipeline import execute_agent_tasks
from agent_service.live.events import follower_key, stream_key
from agent_service.live.publisher import LivePublisher
from agent_service.llm.runners import ChildProcessRunner
from agent_service.models import Agent, Task, TaskStatus
from agent_service.store.schema import init_db
from bench.environment import PG_ROOT

BATCH = 64
SETUPS = ("off", "nobody follows", "all followed")


@dataclass
class LiveCostBench:
    """The services the runs share: the database, Redis, the bundled server behind an in-process LLM loop."""

    settings: Settings
    session_factory: sessionmaker[Session]
    shared: redis.Redis
    runner: ChildProcessRunner
    agent_id: uuid.UUID

    def run(self, tasks: int, *, setup: str) -> tuple[float, float]:
        """Run `tasks` new tasks in batches in `setup`; returns the CPU seconds this process and its LLM
        process spent on them."""
        ids = self._queued_tasks(tasks)
        if setup == "all followed":
            with self.shared.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.set(follower_key(task_id), 1, ex=600)
                pipe.execute()
        live = None if setup == "off" else LivePublisher(self.shared, settings=self.settings)

        def on_settled(group: list[tuple[int, TaskOutcome]]) -> None:  # as the task shell does
            if live:
                live.publish_many(update for _, outcome in group if (update := outcome.live_update()))

        started = _cpu_seconds()
        for at in range(0, tasks, BATCH):
            outcomes = execute_agent_tasks(
                ids[at : at + BATCH],
                RunContext(
                    session_factory=self.session_factory,
                    settings=self.settings,
                    llm=self.runner,
                    live=live,
                    on_settled=on_settled if live else None,
                ),
            )
            assert all(outcome.finished and outcome.finished.status is TaskStatus.COMPLETED for outcome in outcomes)
        ended = _cpu_seconds()
        self.shared.delete(*[key for task_id in ids for key in (stream_key(task_id), follower_key(task_id))])
        return ended[0] - started[0], ended[1] - started[1]

    def _queued_tasks(self, count: int) -> list[str]:
        with session_scope(self.session_factory) as session:
            session.execute(text("TRUNCATE tasks CASCADE"))
            tasks = [
                Task(title=f"Live cost {n}", agent_id=self.agent_id, user_id="bench", status=TaskStatus.QUEUED)
                for n in range(count)
            ]
            session.add_all(tasks)
            session.flush()
            return [str(task.id) for task in tasks]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    url = create_empty_database(PG_ROOT, args.database)
    init_db(url)
    with llm_server(latency_ms=0) as llm_url:
        settings = Settings(_env_file=None, database_url=url, redis_url=args.redis_url, openai_base_url=f"{llm_url}/v1")
        session_factory = make_session_factory(make_engine(settings))
        runner = ChildProcessRunner(settings)
        runner.start()
        bench = LiveCostBench(
            settings, session_factory, redis.Redis.from_url(args.redis_url), runner, _agent(session_factory)
        )
        cpu: dict[str, list[tuple[float, float]]] = {setup: [] for setup in SETUPS}
        try:
            bench.run(args.tasks, setup="off")  # warm-up: clients, connections, caches
            for _ in range(args.rounds):
                for setup in SETUPS:
                    cpu[setup].append(bench.run(args.tasks, setup=setup))
        finally:
            runner.close()
    print(f"CPU per task in ms, median of {args.rounds} rounds of {args.tasks} tasks: worker + LLM process = total")
    off = sum(_per_task(cpu["off"], args.tasks))
    for setup in SETUPS:
        worker, llm = _per_task(cpu[setup], args.tasks)
        print(f"  {setup:<15} {worker:5.2f} + {llm:5.2f} = {worker + llm:5.2f}  ({worker + llm - off:+.2f} vs off)")
    return 0


def _per_task(runs: list[tuple[float, float]], tasks: int) -> tuple[float, float]:
    """The medians, in ms per task, of the worker's and the LLM process's CPU."""
    return (
        statistics.median(worker for worker, _ in runs) * 1000 / tasks,
        statistics.median(llm for _, llm in runs) * 1000 / tasks,
    )


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds so far of this process and of its LLM process (not the bundled server, also a child)."""
    llm = sum(
        sum(child.cpu_times()[:2])
        for child in psutil.Process().children()
        if "agent_service.llm.process" in child.cmdline()
    )
    return time.process_time(), llm


def _agent(session_factory: sessionmaker[Session]) -> uuid.UUID:
    with session_scope(session_factory) as session:
        agent = Agent(name="live-cost", prompt="You are a concise analyst.", model="gpt-4o-mini", max_tokens=200)
        session.add(agent)
        session.flush()
        return agent.id


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.live_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database", default="agent_service_live_cost")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())

"""The runs a bench is made of, and how one run goes: reset the services, start a fresh worker,
submit (all at once or at a steady rate), wait for the last completion, and measure."""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

from agent_service.config import Settings
from agent_service.devtools.processes import busy_core, rabbitmq_vhost, started, worker_env
from agent_service.messaging.routing import AGENT_QUEUE
from agent_service.models import TaskStatus
from agent_service.worker import AgentServiceCelery, create_celery_app
from bench.environment import BENCH_MODEL, BENCH_REDIS, IDLE_REDIS, BenchEnvironment, truncate_tasks
from bench.floor import create_floor_app
from bench.loads import AgentTaskLoad, Completions, NoopLoad
from bench.mixed import Mix, MixedLoad
from bench.sampling import ForeignLoad, QueuePeak, WorkerSampler
from bench.soak import MemoryTrend, memory_trends

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REDIS, RABBITMQ = "redis", "rabbitmq"
SUBMIT_CHUNK = 500
POLL_SECONDS = 0.5
MAX_WARMUP_TASKS = 40
DEAD_LETTER = "dead-letter"
_BANNER_POOL = re.compile(r"concurrency: (\d+) \((\w+)\)")


class RunBrokenError(Exception):
    """The run cannot finish: its worker died, or no task completed for too long."""


@dataclass(frozen=True)
class RateLimitPlan:
    """Ours limited to `rpm` requests a minute for the bench model, the server enforcing `server_rpm`."""

    rpm: float
    server_rpm: float
    model: str = BENCH_MODEL

    def worker_env(self) -> dict[str, str]:
        return {"RATE_LIMITS_ENABLED": "true", "LLM_RATE_LIMITS": json.dumps({self.model: {"rpm": self.rpm}})}

    def server_limits(self) -> dict[str, dict[str, float]]:
        return {self.model: {"rpm": self.server_rpm}}


@dataclass(frozen=True)
class RunPlan:
    """One run: which worker, how it is started, at what LLM latency, how many tasks and how fast."""

    name: str
    config: str
    command: tuple[str, ...]
    pool: str
    concurrency: int
    latency_ms: int
    tasks: int
    rate: float | None = None  # tasks/s offered; None submits everything at once
    floor: bool = False  # no-op tasks counted in Redis instead of agent tasks in the database
    rate_limit: RateLimitPlan | None = None  # ours keeps a rate limit below the server's own
    # Another user's tasks submitted at once just before the run's own: its latencies are then the run's
    # own tasks' alone (the fair-share scenario).
    backlog: int = 0
    settings: tuple[tuple[str, Any], ...] = ()  # Settings fields for the worker and the submitting app
    # The kind of agent work its tasks are (the bench has one agent per kind), or DEAD_LETTER: tasks that fail at
    # once, the run timed to their failures.
    kind: str = "text"
    workers: int = 1  # worker processes sharing the run (CPU: all of theirs; memory: the first one's)
    busy: bool = False  # one core kept spinning for the run, as on a loaded host
    broker: str = REDIS  # or RABBITMQ: a vhost of its own, results and shared controls still on Redis
    mix: Mix | None = None  # tasks of every kind, several users, some grouped or followed (`kind` unused)
    memory_trend: bool = False  # each process's RSS read against the tasks done (a soak)
    budget_seconds: float | None = None  # how long the run may take (None: the bench's budget for one run)


@dataclass
class RunResult:
    """Every figure of one run; figures a broken run could not measure stay None."""

    name: str
    config: str
    pool: str
    concurrency: int
    latency_ms: int
    tasks: int
    offered_rate: float | None = None
    backlog_tasks: int = 0
    warmup_tasks: int = 0
    status: str = "ok"  # ok | partial (budget ran out while still progressing) | broken
    error: str | None = None
    completed: int = 0
    failed: int = 0
    not_exactly_once: int = 0
    wall_seconds: float | None = None
    tasks_per_second: float | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    latency_p99_s: float | None = None
    cpu_ms_per_task: float | None = None
    # the (first) worker's main process alone (ours: the rest is its LLM process)
    root_cpu_ms_per_task: float | None = None
    peak_rss_mb: float | None = None
    peak_pss_mb: float | None = None
    peak_process_rss_mb: float | None = None
    worker_processes: int | None = None
    box_cpu_percent: float | None = None
    foreign_cpu_percent: float | None = None
    llm_requests_per_task: float | None = None
    tool_calls_per_task: float | None = None  # calls the bundled tool server received
    configured_rpm: float | None = None
    achieved_rpm: float | None = None  # past the first burst, from the server's own log of answered requests
    llm_429s: int | None = None  # answered by the server because a request was over its enforced limits
    peak_queue_length: int | None = None  # messages waiting in the broker's agent-task queue (sampled, Redis)
    broker: str = REDIS
    peak_rss_by_process_mb: dict[str, float] = field(default_factory=dict)  # each process's own peak, by name
    followed_tasks: int | None = None  # a mixed run's followers (`mixed.FollowerFigures`)
    followers_streamed: int | None = None
    followers_ended: int | None = None
    memory_trends: dict[str, MemoryTrend] | None = None  # by process name, and "all" for their sum


def celery_command(
    app_module: str, *, pool: str, concurrency: int, queues: str = "agent_tasks,system"
) -> tuple[str, ...]:
    return (
        sys.executable,
        "-m",
        "celery",
        "-A",
        app_module,
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        "-Q",
        queues,
        "--loglevel=INFO",
    )


OURS_COMMAND = (sys.executable, "cli.py", "worker")  # exactly what `make worker` runs


def execute(plan: RunPlan, env: BenchEnvironment, *, budget_seconds: float, stall_seconds: float = 60) -> RunResult:
    """Run `plan` on freshly reset services (on RabbitMQ, a new vhost); a broken run is reported in the result,
    never raised."""
    if plan.broker == REDIS:
        return _execute(plan, env, budget_seconds=budget_seconds, stall_seconds=stall_seconds)
    with rabbitmq_vhost(f"agent_service_bench_{uuid.uuid4().hex[:8]}") as broker_url:
        on_rabbitmq = replace(plan, settings=(*plan.settings, ("celery_broker_url", broker_url)))
        return _execute(on_rabbitmq, env, budget_seconds=budget_seconds, stall_seconds=stall_seconds)


def _execute(plan: RunPlan, env: BenchEnvironment, *, budget_seconds: float, stall_seconds: float) -> RunResult:
    result = RunResult(plan.name, plan.config, plan.pool, plan.concurrency, plan.latency_ms, plan.tasks)
    result.broker = plan.broker
    result.backlog_tasks = plan.backlog
    env.reset(latency_ms=0)
    app = create_celery_app(_plan_settings(plan, env)) if plan.settings else env.app
    load = _load_for(plan, env, app)
    try:
        _log_path(plan).unlink(missing_ok=True)  # the banner read below must be this run's
        with (
            started(list(plan.command), env=_worker_env(plan, env), log_path=_log_path(plan), timeout=90) as worker,
            contextlib.ExitStack() as others,
        ):
            more_workers = []
            for number in range(2, plan.workers + 1):
                log = RESULTS_DIR / f"{plan.name}-{number}.log"
                command, worker_env = list(plan.command), _worker_env(plan, env)
                more_workers.append(others.enter_context(started(command, env=worker_env, log_path=log, timeout=90)))
            if plan.busy:
                others.enter_context(busy_core())
            result.pool, result.concurrency = _pool_in_banner(_log_path(plan), default=(plan.pool, plan.concurrency))
            result.warmup_tasks = _warm_up(load, worker, env, plan)
            with (
                WorkerSampler(worker.pid, others=tuple(more.pid for more in more_workers)) as sampler,
                ForeignLoad() as foreign,
                QueuePeak(BENCH_REDIS, AGENT_QUEUE) as queue,
            ):
                if plan.backlog:
                    submit_in_chunks(
                        AgentTaskLoad(app, agent_id=env.agent_id, user_id="backlog"), first=0, count=plan.backlog
                    )
                progress = [(time.monotonic(), 0)]
                result.offered_rate = _submit(load, plan)
                result.status = _wait_for_completion(
                    load,
                    worker,
                    expected=plan.backlog + plan.tasks,
                    budget=plan.budget_seconds or budget_seconds,
                    stall=stall_seconds,
                    progress=progress,
                )
                if isinstance(load, MixedLoad):
                    followers = load.follower_figures()
                    result.followed_tasks, result.followers_ended = followers.followed, followers.ended
                    result.followers_streamed = followers.streamed
    except (RunBrokenError, RuntimeError) as exc:
        result.status, result.error = "broken", str(exc)
        return result
    finally:
        if app is not env.app:
            app.services.engine.dispose()
    _fill_figures(result, load.completions(), sampler)
    if plan.memory_trend:
        result.memory_trends = memory_trends(sampler.timeline, progress, tasks=plan.tasks)
    if plan.backlog and isinstance(load, AgentTaskLoad):
        own = load.completions(own_only=True)
        result.latency_p50_s, result.latency_p95_s, result.latency_p99_s = _latency_percentiles(own)
    result.foreign_cpu_percent = foreign.cpu_percent
    result.peak_queue_length = queue.peak if plan.broker == REDIS else None
    if not plan.floor:
        result.llm_requests_per_task = env.llm.request_count() / (plan.tasks + plan.backlog)
        result.tool_calls_per_task = env.tool_calls() / (plan.tasks + plan.backlog)
    if plan.rate_limit:
        _fill_rate_figures(result, plan.rate_limit, env)
    return result


RATE_SKIP_BURST = 20  # the first answers ride on the limits' initial bursts, not on their sustained rate


def _fill_rate_figures(result: RunResult, plan: RateLimitPlan, env: BenchEnvironment) -> None:
    times = env.llm.answer_times()
    result.configured_rpm, result.llm_429s = plan.rpm, env.llm.rate_limited_count()
    if len(times) > RATE_SKIP_BURST + 1:
        result.achieved_rpm = (len(times) - 1 - RATE_SKIP_BURST) / (times[-1] - times[RATE_SKIP_BURST]) * 60


def _plan_settings(plan: RunPlan, env: BenchEnvironment) -> Settings:
    return env.settings.model_copy(update=dict(plan.settings))


def _worker_env(plan: RunPlan, env: BenchEnvironment) -> dict[str, str]:
    limits = plan.rate_limit.worker_env() if plan.rate_limit else {}
    return worker_env({**_plan_settings(plan, env).as_env(), **limits}, pool=plan.pool, concurrency=plan.concurrency)


def _log_path(plan: RunPlan) -> Path:
    return RESULTS_DIR / f"{plan.name}.log"


def _pool_in_banner(log_path: Path, *, default: tuple[str, int]) -> tuple[str, int]:
    """The pool and concurrency the worker says it runs ("concurrency: 4 (prefork)" in its banner)."""
    match = _BANNER_POOL.search(log_path.read_text(errors="replace"))
    return (match.group(2), int(match.group(1))) if match else default


def _warm_up(load: AgentTaskLoad | NoopLoad, worker, env: BenchEnvironment, plan: RunPlan) -> int:
    """Run a few unmeasured tasks at 0 ms, then forget them and set the run's LLM latency: a pool
    child's first task pays one-off imports and connections that would swamp a small N."""
    count = min(4 * plan.concurrency, MAX_WARMUP_TASKS)
    load.submit(0, count)
    if _wait_for_completion(load, worker, expected=count, budget=60, stall=30) != "ok":
        raise RunBrokenError(f"the {count} warm-up tasks did not finish within 60 s")
    load.forget()
    env.forget_tool_calls()
    env.llm.prepare(latency_ms=plan.latency_ms, rate_limits=plan.rate_limit and plan.rate_limit.server_limits())
    return count


def _load_for(plan: RunPlan, env: BenchEnvironment, app: AgentServiceCelery) -> AgentTaskLoad | NoopLoad:
    if plan.floor:
        return NoopLoad(create_floor_app(env.settings), redis_url=BENCH_REDIS)
    if plan.mix:
        return MixedLoad(app, agents=env.agents, mix=plan.mix)
    ends_as = TaskStatus.FAILED if plan.kind == DEAD_LETTER else TaskStatus.COMPLETED
    return AgentTaskLoad(app, agent_id=env.agents[plan.kind], ends_as=ends_as)


def _submit(load: AgentTaskLoad | NoopLoad, plan: RunPlan) -> float | None:
    """Submit every task of the plan; returns the rate achieved when a steady rate was asked for."""
    if plan.rate is None:
        submit_in_chunks(load, first=0, count=plan.tasks)
        return None
    begun, sent = time.monotonic(), 0
    while sent < plan.tasks:
        due = min(plan.tasks, int((time.monotonic() - begun) * plan.rate) + 1)
        if due > sent:
            load.submit(sent, due - sent)
            sent = due
        else:
            time.sleep(0.005)
    return plan.tasks / max(time.monotonic() - begun, 1e-9)


def submit_in_chunks(load: AgentTaskLoad | NoopLoad, *, first: int, count: int) -> None:
    for start in range(first, first + count, SUBMIT_CHUNK):
        load.submit(start, min(SUBMIT_CHUNK, first + count - start))


def _wait_for_completion(
    load, worker, *, expected: int, budget: float, stall: float, progress: list[tuple[float, int]] | None = None
) -> str:
    """Poll until `expected` tasks are done: "ok", or "partial" when the budget ran out first. Each poll's
    (time.monotonic(), tasks done) is appended to `progress` when given.

    Raises: RunBrokenError when the worker exits or nothing finishes for `stall` seconds.
    """
    begun = last_progress = time.monotonic()
    done = 0
    while done < expected:
        time.sleep(POLL_SECONDS)
        now, count = time.monotonic(), load.finished_count()
        if progress is not None:
            progress.append((now, count))
        if count > done:
            done, last_progress = count, now
        if worker.poll() is not None:
            raise RunBrokenError(f"worker exited with {worker.returncode} after {done}/{expected} tasks")
        if now - last_progress > stall:
            raise RunBrokenError(f"no task finished for {stall:.0f}s; {done}/{expected} done")
        if now - begun > budget and done < expected:  # still progressing, but too slow to wait for
            return "partial"
    return "ok"


def _fill_figures(result: RunResult, completions: Completions, sampler: WorkerSampler) -> None:
    result.completed, result.failed = len(completions.finished), completions.failed
    result.not_exactly_once = completions.not_exactly_once
    result.peak_rss_mb, result.peak_pss_mb = sampler.peak_rss_mb, sampler.peak_pss_mb
    result.peak_process_rss_mb = sampler.peak_process_rss_mb
    result.peak_rss_by_process_mb = {name: round(mb, 1) for name, mb in sampler.peak_rss_by_process_mb.items()}
    result.worker_processes, result.box_cpu_percent = sampler.peak_processes, sampler.box_cpu_percent
    if not completions.finished:
        return
    result.cpu_ms_per_task = sampler.cpu_seconds * 1000 / result.completed
    result.root_cpu_ms_per_task = sampler.root_cpu_seconds * 1000 / result.completed
    result.wall_seconds = max(completions.finished) - min(completions.enqueued)
    result.tasks_per_second = result.completed / result.wall_seconds
    result.latency_p50_s, result.latency_p95_s, result.latency_p99_s = _latency_percentiles(completions)


def _latency_percentiles(completions: Completions) -> tuple[float | None, ...]:
    """p50, p95 and p99 of enqueue-to-done; None when nothing completed."""
    latencies = [done - sent for sent, done in zip(completions.enqueued, completions.finished)]
    return _percentiles(latencies, (50, 95, 99)) if latencies else (None, None, None)


def _percentiles(values: list[float], wanted: tuple[int, ...]) -> tuple[float, ...]:
    if len(values) < 2:
        return tuple(values[0] for _ in wanted)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return tuple(cuts[p - 1] for p in wanted)


@dataclass
class BulkSubmitResult:
    """`create_agent_tasks` alone: rows inserted and messages published per second."""

    tasks: int
    chunk: int
    seconds: float
    tasks_per_second: float
    published: int


def measure_bulk_submit(env: BenchEnvironment, *, count: int, warmup: int = 10) -> BulkSubmitResult:
    """Time `create_agent_tasks` for `count` tasks in chunks, publishing to a broker nobody consumes."""
    idle_app = create_celery_app(env.settings.model_copy(update={"redis_url": IDLE_REDIS}))
    idle_broker = redis.Redis.from_url(IDLE_REDIS)
    idle_broker.flushdb()
    truncate_tasks(env.app)
    load = AgentTaskLoad(idle_app, agent_id=env.agent_id)
    load.submit(0, warmup)  # opens the connections, as a long-running API process has them open
    begun = time.perf_counter()
    submit_in_chunks(load, first=warmup, count=count)
    seconds = time.perf_counter() - begun
    published = idle_broker.llen(AGENT_QUEUE) - warmup
    idle_broker.flushdb()
    truncate_tasks(env.app)
    idle_app.services.engine.dispose()
    return BulkSubmitResult(count, SUBMIT_CHUNK, seconds, count / seconds, published)

"""Metrics and logs: Prometheus counters, histograms and gauges, the exporter that serves them for every
process of a worker, structured log lines, and the `monitor_task_execution` decorator that records a task's
duration and outcome (the batched agent task records each of its tasks with `record_task_run` instead).

Every process of a worker (the main one, each prefork child, each LLM process) writes its metrics to files
in one folder (prometheus_client's multiprocess mode), and the main process's exporter adds them up on each
scrape: see `use_metric_files` and docs/decisions.md, "Metrics from every process".
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

logger = logging.getLogger("agent_service")

TASK_RUNS = Counter("agent_service_task_runs_total", "Task executions by task name and outcome", ["task", "status"])
TASK_DURATION = Histogram(
    "agent_service_task_duration_seconds",
    "Wall time of one task execution (an agent task: from its claim to its outcome recorded)",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
LLM_TOKENS = Counter(
    "agent_service_llm_tokens_total",
    "Tokens of every answered LLM call (retried and failed attempts too), by model and kind: prompt, completion, "
    "cached (the part of the prompt read from the provider's cache)",
    ["model", "kind"],
)
LLM_COST = Counter("agent_service_llm_cost_usd_total", "USD spent on answered LLM calls, by model", ["model"])
UNPRICED_CALLS = Counter(
    "agent_service_unpriced_calls_total", "Answered LLM calls whose model has no price (see MODEL_PRICES)", ["model"]
)
LLM_CALL_DURATION = Histogram(
    "agent_service_llm_call_duration_seconds",
    "Latency of one LLM call as the worker sees it, from submission to reply or error",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
)
BREAKER_TRANSITIONS = Counter(
    "agent_service_breaker_transitions_total",
    "Circuit breaker changes (opened, reopened, closed) by provider and model",
    ["provider", "model", "transition"],
)
REPLY_CACHE = Counter(
    "agent_service_reply_cache_total",
    "Deterministic calls of agents with a reply cache, by whether Redis answered them (hit) or the model (miss)",
    ["result"],
)
NOTIFICATIONS = Counter(
    "agent_service_notifications_total",
    "Webhook notifications (ALERT_WEBHOOK_URL) by event type and result: sent; collapsed (a repeat within the "
    "collapse window, sent later as a count); failed (the receiver refused it, or every attempt failed); refused "
    "(the URL's address is not allowed); dropped (the process's buffer was full)",
    ["event", "result"],
)
LLM_REQUESTS = Counter(
    "agent_service_llm_requests_total",
    "LLM calls by model and how the provider answered: the HTTP status code (200, 429, 500, 401, ...), or "
    "timeout, connection_error, malformed",
    ["model", "status"],
)
RATE_LIMIT_WAIT = Histogram(
    "agent_service_rate_limit_wait_seconds",
    "LLM calls reserved for a rate-limit slot ahead, by model, and how long they waited for it",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
TURNED_AWAY = Counter(
    "agent_service_admission_turned_away_total",
    "Tasks an admission control deferred or refused before their LLM call, by control and verdict",
    ["control", "verdict"],
)
# The metrics below are gauges: how the files of several processes add up is said per gauge. A gauge with a
# `live` mode leaves the scrape when its process dies.
WORKER_UP = Gauge(
    "agent_service_worker_up",
    "1 while this worker (its Celery node name) runs: set when it is ready, 0 when it stops",
    ["worker"],
    multiprocess_mode="livemax",
)
TASK_LAST_RUN = Gauge(
    "agent_service_task_last_run_timestamp_seconds",
    "Unix time a task of this name last ended without an error (sweep_stale_tasks: the sweeper's last run)",
    ["task"],
    multiprocess_mode="max",
)

# Attributes a log line may carry beyond the message; anything else on the record is stdlib noise.
_LOG_FIELDS = ("task", "task_id", "agent_id", "status", "attempt", "duration_ms", "error", "retry_in")


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Hand-written: a dozen lines, not worth a dependency."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({field: getattr(record, field) for field in _LOG_FIELDS if hasattr(record, field)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(*, level: int | str = logging.INFO, json_lines: bool = True) -> None:
    """Send every log record to stderr, as JSON lines or as plain text."""
    handler = logging.StreamHandler()
    plain = logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if json_lines else plain)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def use_metric_files(directory: Path | None, *, clear: bool = False) -> None:
    """Keep this process's metrics in files under `directory` (None: in memory), from now on, for the
    exporter of its worker to add up; `clear` empties the folder first (the worker's main process does, at
    start, before its pool and LLM processes exist).

    prometheus_client reads PROMETHEUS_MULTIPROC_DIR when it is imported, which in a worker is long before the
    settings are; so the variable is set here (each value opens its file by it, and the LLM processes inherit
    it), and the value class it would have chosen is put in place. Every metric of this module has labels,
    so none holds a value yet: a labelled metric makes its values on first use, from the class of that time.
    """
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    if clear:
        for stale in directory.glob("*.db"):
            stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()


@dataclass(frozen=True)
class Backlog:
    """What the database says on a scrape: when the oldest waiting task was queued (None: none waits), and
    how many tasks are dead letters (failed)."""

    oldest_waiting_since: datetime | None
    dead_letters: int


@dataclass(frozen=True)
class SharedState:
    """What the admission controls hold in Redis on a scrape: whether the service is paused, and each
    circuit breaker that has state, by (provider, model), with whether it is open (or half-open)."""

    paused: bool
    breakers: Mapping[tuple[str, str], bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Readings:
    """The gauges read when Prometheus scrapes (every few seconds) rather than kept up per task, by the
    service each is read from; `shared_state` is None without Redis."""

    queue_lengths: Callable[[], Mapping[str, int]]
    backlog: Callable[[], Backlog]
    shared_state: Callable[[], SharedState] | None = None


def start_metrics_exporter(port: int, *, address: str, readings: Readings, files: Path | None) -> None:
    """Serve /metrics on `address`:`port` (port 0 leaves the exporter off): the metrics of every process that
    keeps them in `files` (None: this process's own), and the gauges of `readings`."""
    if not port:
        return
    registry = REGISTRY
    if files is not None:
        registry = CollectorRegistry()
        ProcessFilesCollector(registry, files)
    registry.register(ReadingsCollector(readings))
    start_http_server(port, addr=address, registry=registry)
    logger.info("prometheus metrics on %s:%d/metrics", address, port)


_FILE_PID = re.compile(r"_(\d+)\.db$")


class ProcessFilesCollector(MultiProcessCollector):
    """prometheus_client's collector of every process's files, which first marks the processes that are gone
    as dead (their `live` gauges leave; their counts stay): a pool child or an LLM process killed or replaced
    has no chance to say so itself."""

    def __init__(self, registry: CollectorRegistry, path: Path) -> None:
        super().__init__(registry, str(path))
        self._folder = path

    def collect(self) -> Iterable[Metric]:
        pids = {int(found.group(1)) for name in os.listdir(self._folder) if (found := _FILE_PID.search(name))}
        for pid in pids - {os.getpid()}:
            if not _alive(pid):
                mark_process_dead(pid, str(self._folder))
        return super().collect()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process holds the number now; counted as alive, harmlessly
        return True
    return True


class ReadingsCollector(Collector):
    """The gauges of `Readings`, and `agent_service_dependency_up` for each service they are read from: a
    service that cannot be read leaves its gauges out of that scrape and shows 0."""

    def __init__(self, readings: Readings) -> None:
        self._readings = readings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "agent_service_dependency_up",
            "Whether the exporter could read the service on this scrape (1) or not (0): the database, the "
            "broker, and Redis when REDIS_URL is set",
            labels=["dependency"],
        )
        lengths = _read(self._readings.queue_lengths, "queue lengths")
        up.add_metric(["broker"], lengths is not _UNREADABLE)
        if lengths is not _UNREADABLE:
            yield _queue_lengths(lengths)
        backlog = _read(self._readings.backlog, "the backlog")
        up.add_metric(["database"], backlog is not _UNREADABLE)
        if backlog is not _UNREADABLE:
            yield from _backlog(backlog)
        if self._readings.shared_state is not None:
            state = _read(self._readings.shared_state, "the shared state")
            up.add_metric(["redis"], state is not _UNREADABLE)
            if state is not _UNREADABLE:
                yield from _shared_state(state)
        yield up


def _queue_lengths(lengths: Mapping[str, int]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily("agent_service_queue_length", "Messages waiting in a broker queue", labels=["queue"])
    for queue, length in lengths.items():
        gauge.add_metric([queue], length)
    return gauge


def _backlog(backlog: Backlog) -> Iterator[GaugeMetricFamily]:
    since = backlog.oldest_waiting_since
    age = (datetime.now(UTC) - since).total_seconds() if since else 0.0
    yield GaugeMetricFamily(
        "agent_service_oldest_queued_task_age_seconds",
        "How long the task waiting longest (pending or queued) has waited since it was queued; 0 when none",
        value=max(age, 0.0),
    )
    yield GaugeMetricFamily(
        "agent_service_dead_letters",
        "Tasks that failed for good (dead letters), in the database",
        value=backlog.dead_letters,
    )


def _shared_state(state: SharedState) -> Iterator[GaugeMetricFamily]:
    yield GaugeMetricFamily(
        "agent_service_paused", "1 while the service is paused (python cli.py pause), else 0", value=state.paused
    )
    breakers = GaugeMetricFamily(
        "agent_service_breaker_open",
        "1 while a model's circuit breaker is open or half-open (its tasks wait), 0 while it is closed",
        labels=["provider", "model"],
    )
    for (provider, model), is_open in state.breakers.items():
        breakers.add_metric([provider, model], is_open)
    yield breakers


_UNREADABLE = object()


def _read(source: Callable[[], Any], what: str) -> Any:
    try:
        return source()
    except Exception as exc:
        logger.warning("metrics: cannot read %s: %s", what, exc)
        return _UNREADABLE


def time_llm_calls(futures: Sequence[Future], models: Sequence[str]) -> None:
    """Observe each call's latency in `agent_service_llm_call_duration_seconds` when its future ends."""
    submitted = time.monotonic()
    for future, model in zip(futures, models, strict=True):
        future.add_done_callback(partial(_observe_since, LLM_CALL_DURATION.labels(model), submitted))


def _observe_since(histogram: Any, since: float, _future: Future) -> None:
    histogram.observe(time.monotonic() - since)


def count_llm_usage(model: str, *, tokens: Mapping[str, int], cost_usd: float | None) -> None:
    """Count one answered call's tokens by kind (prompt, completion, cached) and its cost in USD (None: the
    model has no price, and the call is counted as unpriced)."""
    for kind, count in tokens.items():
        LLM_TOKENS.labels(model, kind).inc(count)
    if cost_usd is None:
        UNPRICED_CALLS.labels(model).inc()
    else:
        LLM_COST.labels(model).inc(cost_usd)


def monitor_task_execution(task_name: str, *, ok: str, error: str) -> Callable:
    """Decorate a task body: time it, count it as `ok` (returned) or `error` (raised), and log one line."""

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def monitored(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            outcome: dict[str, Any] = {"status": error}
            try:
                result = func(*args, **kwargs)
                outcome = {"status": ok}
                return result
            except Exception as exc:
                outcome = {"status": error, "error": str(exc)}
                raise
            finally:
                record_task_run(task_name, outcome, time.perf_counter() - started, is_error=outcome["status"] == error)

        return monitored

    return decorate


def record_task_run(task_name: str, outcome: Mapping[str, Any], seconds: float, *, is_error: bool) -> None:
    """Count, time and log one execution (an error at level ERROR): `outcome` carries its `status`, a label
    from the callers' one vocabulary (`execution.outcomes.Outcome`), and what its log line shows."""
    status = str(outcome["status"])
    TASK_RUNS.labels(task_name, status).inc()
    TASK_DURATION.labels(task_name).observe(seconds)
    if not is_error:
        TASK_LAST_RUN.labels(task_name).set(time.time())
    extra = {key: outcome[key] for key in _LOG_FIELDS if outcome.get(key) is not None}
    extra.update(task=task_name, status=status, duration_ms=round(seconds * 1000, 1))
    message = "%s %s %s after %.1f ms"
    values = [task_name, extra.get("task_id", "-"), status, extra["duration_ms"]]
    if "retry_in" in extra:
        message += "; next attempt in %.1f s"
        values.append(extra["retry_in"])
    level = logging.ERROR if is_error else logging.INFO
    logger.log(level, message, *values, extra=extra)

"""Metrics and logs: Prometheus counters, histograms and backlog gauges, structured log lines, and the
`monitor_task_execution` decorator that records a task's duration and outcome (the batched agent task
records each of its tasks with `record_task_run` instead)."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from functools import partial
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
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


def start_metrics_exporter(
    port: int,
    *,
    address: str,
    queue_lengths: Callable[[], Mapping[str, int]],
    oldest_waiting_since: Callable[[], datetime | None],
) -> None:
    """Serve /metrics on `address`:`port` (port 0 leaves the exporter off), with the backlog gauges read on
    each scrape from `queue_lengths` (messages waiting per queue) and `oldest_waiting_since` (when the task
    that has waited longest was queued)."""
    if port:
        REGISTRY.register(BacklogCollector(queue_lengths, oldest_waiting_since))
        start_http_server(port, addr=address)
        logger.info("prometheus metrics on %s:%d/metrics", address, port)


class BacklogCollector(Collector):
    """The backlog gauges, read when Prometheus scrapes (every few seconds) rather than kept up per task.
    A source that cannot be read leaves its gauge out of that scrape."""

    def __init__(
        self, queue_lengths: Callable[[], Mapping[str, int]], oldest_waiting_since: Callable[[], datetime | None]
    ) -> None:
        self._queue_lengths, self._oldest_waiting_since = queue_lengths, oldest_waiting_since

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lengths = _read(self._queue_lengths, "queue lengths")
        if lengths is not _UNREADABLE:
            gauge = GaugeMetricFamily(
                "agent_service_queue_length", "Messages waiting in a broker queue", labels=["queue"]
            )
            for queue, length in lengths.items():
                gauge.add_metric([queue], length)
            yield gauge
        since = _read(self._oldest_waiting_since, "the oldest queued task")
        if since is not _UNREADABLE:
            age = (datetime.now(UTC) - since).total_seconds() if since else 0.0
            yield GaugeMetricFamily(
                "agent_service_oldest_queued_task_age_seconds",
                "How long the task waiting longest (pending or queued) has waited since it was queued; 0 when none",
                value=max(age, 0.0),
            )


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
    extra = {key: outcome[key] for key in _LOG_FIELDS if outcome.get(key) is not None}
    extra.update(task=task_name, status=status, duration_ms=round(seconds * 1000, 1))
    message = "%s %s %s after %.1f ms"
    values = [task_name, extra.get("task_id", "-"), status, extra["duration_ms"]]
    if "retry_in" in extra:
        message += "; next attempt in %.1f s"
        values.append(extra["retry_in"])
    level = logging.ERROR if is_error else logging.INFO
    logger.log(level, message, *values, extra=extra)

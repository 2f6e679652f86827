"""Metrics and logs: Prometheus counters and histograms, structured log lines, and the
`monitor_task_execution` decorator that records every task's duration and outcome."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Histogram, start_http_server

logger = logging.getLogger("agent_service")

TASK_RUNS = Counter("agent_service_task_runs_total", "Task executions by task name and outcome", ["task", "status"])
TASK_DURATION = Histogram(
    "agent_service_task_duration_seconds",
    "Wall time of one task execution",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
LLM_TOKENS = Counter("agent_service_llm_tokens_total", "Tokens used by completed tasks", ["kind"])

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


def start_metrics_exporter(port: int, *, address: str) -> None:
    """Serve /metrics on `address`:`port` (port 0 leaves the exporter off)."""
    if port:
        start_http_server(port, addr=address)
        logger.info("prometheus metrics on %s:%d/metrics", address, port)


def monitor_task_execution(task_name: str) -> Callable:
    """Decorate a task body: time it, count its outcome, and log one line per execution."""

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def monitored(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            outcomes: list[dict[str, Any]] = [{"status": "error"}]
            try:
                result = func(*args, **kwargs)
                outcomes = _outcomes_of(result)
                return result
            except Exception as exc:
                outcomes = [{"status": "error", "error": str(exc)}]
                raise
            finally:
                seconds = time.perf_counter() - started
                for outcome in outcomes:
                    _record(task_name, seconds, outcome, args)

        return monitored

    return decorate


def _outcomes_of(result: Any) -> list[dict[str, Any]]:
    """A batch task returns one outcome per task; any other task returns one result."""
    if isinstance(result, list):
        return result
    return [result if isinstance(result, dict) else {"status": "ok"}]


def _record(task_name: str, seconds: float, outcome: dict[str, Any], args: tuple) -> None:
    status = str(outcome.get("status", "ok"))
    TASK_RUNS.labels(task_name, status).inc()
    TASK_DURATION.labels(task_name).observe(seconds)
    for kind in ("prompt", "completion"):
        LLM_TOKENS.labels(kind).inc(outcome.get(f"{kind}_tokens") or 0)
    extra = {
        key: outcome[key]
        for key in ("task_id", "agent_id", "attempt", "error", "retry_in")
        if outcome.get(key) is not None
    }
    extra.setdefault("task_id", _task_id_arg(args))
    extra.update(task=task_name, status=status, duration_ms=round(seconds * 1000, 1))
    level = logging.ERROR if status in ("error", "failed") else logging.INFO
    logger.log(level, "%s %s %s in %.1f ms", task_name, extra["task_id"], status, extra["duration_ms"], extra=extra)


def _task_id_arg(args: tuple) -> str | None:
    # Bound Celery tasks receive (self, task_id); the id is the first string argument.
    return next((arg for arg in args if isinstance(arg, str)), None)

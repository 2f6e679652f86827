"""Worker: the `celery worker` process, its pool, the queues it reads, batching and task time limits."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class WorkerSettings(BaseModel):
    """Worker process: pool, queues, batches of agent-task messages, and the time limits of each task."""

    # No gevent: the LLM process's pipe reader would block its hub, and threads measured cheaper anyway.
    worker_pool: Literal["threads", "prefork", "solo"] = Field(
        "threads", description="Celery's pool: threads (recommended), prefork or solo"
    )
    worker_concurrency: int = Field(
        1536, ge=1, le=5000, description="pool size: threads (each runs one batch at a time), or processes for prefork"
    )
    worker_prefetch_multiplier: int = Field(
        1, ge=1, description="messages reserved per pool slot; with prefork, raise it so batches can fill"
    )
    worker_queues: str = Field("agent_tasks,system", description="the queues `python cli.py worker` reads, by comma")
    worker_soft_shutdown_seconds: float = Field(60.0, ge=0, description="on SIGQUIT, wait this long for running tasks")
    batch_max_size: int = Field(64, ge=1, description="agent-task messages handled together in one batch")
    batch_flush_seconds: float = Field(
        0.05,
        gt=0,
        description="a partial batch waits at most this long, and only while more messages wait in the broker",
    )
    admission_hold_seconds: float = Field(
        30.0,
        ge=0,
        description="a call an admission control defers for a moment waits, its task still claimed, this long at most"
        " in all (in its batch for a concurrency cap or a spend hold, in the LLM process for a rate-limit slot"
        " reserved ahead); beyond, the task is given back to the queue (0: always given back)",
    )
    task_soft_time_limit_seconds: int = Field(
        25 * 60,
        gt=0,
        description="Celery's soft time limit per task (above LLM_TIMEOUT_SECONDS; a task it stops is retried)",
    )
    task_time_limit_seconds: int = Field(
        30 * 60, gt=0, description="Celery's hard time limit per task (above the soft one)"
    )
    health_check_interval_seconds: float = Field(
        60.0, gt=0, description="how often beat sends the health check (the worker and its database reachable)"
    )

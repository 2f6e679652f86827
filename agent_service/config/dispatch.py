"""Dispatch: where a backlog waits, in the broker (direct) or in PostgreSQL for the fair-share dispatcher."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class DispatchSettings(BaseModel):
    """Fair-share dispatch: "direct" publishes each task as it is submitted (FIFO in the broker); "fair" keeps tasks
    `waiting` in PostgreSQL and a dispatcher in every worker publishes them in rounds, priority first, then one user
    after another, keeping the broker queue short (SQLite: always direct)."""

    dispatch_mode: Literal["direct", "fair"] = Field(
        "direct", description="direct: publish at submit; fair: tasks wait in PostgreSQL for the dispatcher"
    )
    dispatch_target_in_flight: int = Field(
        160,
        ge=1,
        description="fair: tasks published and not finished (queued or running), all workers together; about the "
        "tasks/s the workers complete times the LLM latency in seconds",
    )
    dispatch_round_size: int = Field(100, ge=1, description="fair: tasks one dispatch round publishes at most")
    dispatch_interval_seconds: float = Field(
        0.05, gt=0, description="fair: how often a worker's dispatcher looks for room when its last round was short"
    )

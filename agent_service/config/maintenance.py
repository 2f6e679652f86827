"""Maintenance: the sweeper beat runs, which re-queues lost or stuck tasks and expires what waited too long."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MaintenanceSettings(BaseModel):
    """Maintenance: the periodic sweep that finds tasks a crash or a broker outage left behind."""

    stale_task_after_seconds: int = Field(
        2 * 60 * 60, gt=0, description="a running/queued row older than this is presumed lost and re-queued"
    )
    requeue_pending_after_seconds: int = Field(
        60, gt=0, description="a row left pending (broker down) this long is re-queued"
    )
    sweep_interval_seconds: float = Field(60.0, gt=0, description="how often beat sends the sweep")
    sweep_batch_size: int = Field(1000, ge=1, description="rows one sweep handles at most, per kind of work")

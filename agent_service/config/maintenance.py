"""Maintenance: the sweeper beat runs, which re-queues lost or stuck tasks and expires what waited too long, and
the liveness lease by which it knows a worker is lost."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


class MaintenanceSettings(BaseModel):
    """Maintenance: the periodic sweep that finds tasks a crash or a broker outage left behind."""

    stale_task_after_seconds: int = Field(
        2 * 60 * 60, gt=0, description="a running/queued row older than this is presumed lost and re-queued"
    )
    requeue_pending_after_seconds: int = Field(
        60, gt=0, description="a row left pending (broker down) this long is re-queued"
    )
    sweep_interval_seconds: float = Field(15.0, gt=0, description="how often beat sends the sweep")
    sweep_batch_size: int = Field(1000, ge=1, description="rows one sweep handles at most, per kind of work")
    worker_lease_seconds: float = Field(
        30.0,
        gt=0,
        description="a worker renews its liveness lease every third of this; once it has not for this long, "
        "the next sweep re-queues its running tasks (lost within WORKER_LEASE_SECONDS + SWEEP_INTERVAL_SECONDS)",
    )

    @model_validator(mode="after")
    def _lease_is_shorter_than_the_stale_threshold(self) -> MaintenanceSettings:
        if not self.worker_lease_seconds < self.stale_task_after_seconds:
            raise ValueError("WORKER_LEASE_SECONDS must be below STALE_TASK_AFTER_SECONDS")
        return self

"""Retries: how often a task's LLM call is tried, and how long it waits between tries."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RetrySettings(BaseModel):
    """Retries: attempts per task and exponential backoff with jitter (a provider's Retry-After is honoured)."""

    task_max_attempts: int = Field(5, ge=1, description="LLM attempts per task, the first one included")
    retry_backoff_base_seconds: float = Field(2.0, gt=0, description="the wait before the first retry; then doubled")
    retry_backoff_max_seconds: float = Field(300.0, gt=0, description="the wait between tries grows to this at most")
    retry_jitter_ratio: float = Field(
        0.25, ge=0, le=1, description="each wait is randomised by up to this share, so retries do not come in waves"
    )
    db_unavailable_max_retries: int = Field(
        100, ge=0, description="a batch that found the database down is sent again this many times at most"
    )

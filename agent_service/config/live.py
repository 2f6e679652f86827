"""Live output (`live`, `python cli.py follow`): a followed task's events and tokens as they happen."""

from __future__ import annotations

from pydantic import BaseModel, Field


class LiveSettings(BaseModel):
    """Live output: one Redis stream per followed task, written only while someone follows it (needs REDIS_URL;
    without it nothing is published)."""

    live_stream_max_events: int = Field(1000, ge=1, description="a task's stream keeps about its last this many events")
    live_stream_ttl_seconds: int = Field(
        3600, ge=1, description="a task's stream expires this long after its last event"
    )
    live_token_flush_ms: float = Field(
        50.0, gt=0, description="a streamed call writes its new tokens at most this often"
    )

"""Replies: each LLM reply kept until its outcome is recorded, so a crash in between costs no second call."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ReplySettings(BaseModel):
    """Kept replies: no call paid twice. Each LLM reply is kept in Redis until its outcome is recorded, so a worker
    killed in between costs no second call (off without REDIS_URL)."""

    keep_replies: bool = Field(True, description="keep each LLM reply in Redis until its outcome is recorded")

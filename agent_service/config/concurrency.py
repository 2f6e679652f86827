"""Concurrency caps: LLM calls at once per agent and per user, across every worker."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ConcurrencySettings(BaseModel):
    """Concurrency caps (an admission control): each agent's and user's LLM calls at once, counted in Redis."""

    concurrency_caps_enabled: bool = Field(False, description="cap each agent's and user's LLM calls at once")
    agent_concurrency_cap: int = Field(0, ge=0, description="calls at once per agent (0: none); overridable")
    user_concurrency_cap: int = Field(0, ge=0, description="calls at once per user (0: none); overridable")

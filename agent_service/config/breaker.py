"""Circuit breaker: stop calling a model that keeps failing, per provider and model."""

from __future__ import annotations

from pydantic import BaseModel, Field


class BreakerSettings(BaseModel):
    """Circuit breaker (an admission control): per provider (OPENAI_BASE_URL's host) and model, shared by
    every worker through Redis."""

    breaker_enabled: bool = Field(False, description="stop calling a model that keeps failing; needs REDIS_URL")
    breaker_window_seconds: float = Field(60.0, gt=0, description="the breaker counts calls that ended this recently")
    breaker_min_calls: int = Field(10, ge=1, description="calls in the window before failures can open the breaker")
    breaker_failure_ratio: float = Field(0.5, gt=0, le=1, description="the share of failed calls that opens it")
    breaker_cooldown_seconds: float = Field(30.0, gt=0, description="open this long before one probe call goes through")

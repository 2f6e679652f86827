"""Pause: an operator stops every worker taking new LLM calls (`python cli.py pause`), and resumes them."""

from __future__ import annotations

from pydantic import BaseModel, Field


class PauseSettings(BaseModel):
    """Pause (an admission control): the switch every worker reads from Redis before each batch."""

    pause_enabled: bool = Field(False, description="workers obey `python cli.py pause` (one Redis GET per batch)")

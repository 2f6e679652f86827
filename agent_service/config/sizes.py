"""Sizes: how big a task's title, description, payload and stored result may be."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SizeSettings(BaseModel):
    """Task sizes: what a submitted task may carry (refused beyond), and how much of a result is kept."""

    max_title_length: int = Field(500, gt=0, description="a task's title, in characters, at most this long")
    max_description_length: int = Field(
        20_000, gt=0, description="a task's description, in characters, at most this long"
    )
    max_result_length: int = Field(100_000, gt=0, description="a task's result is cut after this many characters")
    max_payload_bytes: int = Field(64 * 1024, gt=0, description="a task's JSON payload, serialized, at most this big")

"""The HTTP API (`python cli.py api`): where it listens and what one request may cost."""

from __future__ import annotations

from pydantic import BaseModel, Field


class HttpApiSettings(BaseModel):
    """The HTTP API: an ASGI app under uvicorn. Every request but the health probes needs an API key
    (`python cli.py api-keys create --tenant T`)."""

    api_address: str = Field("127.0.0.1", description="the address the HTTP API listens on (loopback by default)")
    api_port: int = Field(8000, ge=1, le=65535, description="the port the HTTP API listens on")
    api_max_body_bytes: int = Field(
        1_048_576, ge=1024, description="a larger request body is refused (413) before it is read to its end"
    )
    api_requests_per_minute: int = Field(
        600, ge=1, description="requests one API key may make per minute; beyond, 429 with Retry-After"
    )
    api_page_size: int = Field(50, ge=1, le=500, description="tasks per page of `GET /v1/tasks` unless it asks fewer")

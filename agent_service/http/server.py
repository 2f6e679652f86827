"""`python cli.py api`: the app under uvicorn on API_ADDRESS:API_PORT, in this process."""

from __future__ import annotations

import uvicorn
from celery import Celery

from agent_service.http.app import create_api
from agent_service.services import services_of


def serve(celery_app: Celery) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn answers the requests under way first)."""
    settings = services_of(celery_app).settings
    config = uvicorn.Config(
        create_api(celery_app),
        host=settings.api_address,
        port=settings.api_port,
        log_level="info",
        server_header=False,
        lifespan="on",
    )
    uvicorn.Server(config).run()

"""`/healthz` (the process answers) and `/readyz` (and so do its database and broker): for a load balancer or an
orchestrator, with no key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from kombu.exceptions import OperationalError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from agent_service.database import session_scope
from agent_service.http.problems import ProblemError, problem_responses
from agent_service.http.schemas import Health
from agent_service.services import Services

router = APIRouter()
BROKER_TIMEOUT_SECONDS = 3.0


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The API process answers."""
    return Health()


@router.get("/readyz", response_model=Health, responses=problem_responses(503))
def readyz(request: Request) -> Health:
    """The API can do its job: its database and its broker answer."""
    services: Services = request.app.state.services
    try:
        with session_scope(services.session_factory) as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise ProblemError(503, f"the database does not answer: {type(exc).__name__}") from None
    try:
        with request.app.state.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_SECONDS)
    except (OperationalError, OSError) as exc:
        raise ProblemError(503, f"the broker does not answer: {type(exc).__name__}") from None
    return Health()

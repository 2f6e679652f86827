"""Errors as RFC 9457 problem details (`application/problem+json`): a stable `code`, a `title`, the HTTP
`status` and a `detail` that says what was wrong. Every error the service raises on purpose maps to one; anything
else is a 500 with no detail (and a log line here), never a traceback."""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from agent_service.errors import (
    AgentServiceError,
    ApprovalError,
    BrokerUnavailableError,
    TaskNotFoundError,
    TaskValidationError,
    database_unreachable,
)

logger = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


class ProblemCode(str, enum.Enum):
    """What went wrong, as a client tests for it (stable: renaming one breaks clients)."""

    INVALID_INPUT = "invalid_input"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    BODY_TOO_LARGE = "body_too_large"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    BAD_REQUEST = "bad_request"
    INTERNAL = "internal"


_BY_STATUS = {
    400: ProblemCode.BAD_REQUEST,
    401: ProblemCode.UNAUTHORIZED,
    404: ProblemCode.NOT_FOUND,
    405: ProblemCode.METHOD_NOT_ALLOWED,
    409: ProblemCode.CONFLICT,
    413: ProblemCode.BODY_TOO_LARGE,
    422: ProblemCode.INVALID_INPUT,
    429: ProblemCode.RATE_LIMITED,
    503: ProblemCode.UNAVAILABLE,
}


class Problem(BaseModel):
    """An error's body (RFC 9457)."""

    type: str = Field("about:blank", description="always about:blank: `code` says which problem it is")
    title: str
    status: int
    code: ProblemCode
    detail: str | None = None


class ProblemError(Exception):
    """An error answered as a problem, with its own headers (WWW-Authenticate, Retry-After)."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def problem_response(status: int, detail: str | None, *, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The problem-details response for `status`."""
    code = _BY_STATUS.get(status, ProblemCode.INTERNAL if status >= 500 else ProblemCode.BAD_REQUEST)
    body = Problem(title=code.value.replace("_", " ").capitalize(), status=status, code=code, detail=detail)
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers, media_type=MEDIA_TYPE)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entries of these error statuses."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {
        status: {"description": _BY_STATUS[status].value, "content": {MEDIA_TYPE: {"schema": schema}}}
        for status in statuses
    }


def install_handlers(app: FastAPI) -> None:
    """Answer every error of `app` as a problem."""
    app.add_exception_handler(ProblemError, _api_problem)
    app.add_exception_handler(AgentServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(Exception, _unexpected)


async def _api_problem(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.status, exc.detail, headers=exc.headers)


async def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, TaskValidationError):
        return problem_response(422, str(exc))
    if isinstance(exc, TaskNotFoundError):
        return problem_response(404, str(exc))
    if isinstance(exc, ApprovalError):
        return problem_response(409, str(exc))
    if isinstance(exc, BrokerUnavailableError):
        return problem_response(503, str(exc), headers={"Retry-After": "5"})
    return await _unexpected(_request, exc)


async def _request_invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors())
    return problem_response(422, f"invalid request: {problems}")


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400:  # FastAPI's only 400: a body it cannot read (not UTF-8), as invalid as any other
        return problem_response(422, f"invalid request: the body cannot be read: {exc.detail}")
    return problem_response(exc.status_code, str(exc.detail), headers=exc.headers)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if database_unreachable(exc):
        return problem_response(503, "the database does not answer", headers={"Retry-After": "5"})
    return await _unexpected(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem_response(500, None)

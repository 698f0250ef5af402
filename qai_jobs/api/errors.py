"""Every error leaves the API as ``{"error": {"code", "message", "details"?}}``.

Library and driver errors are mapped here, at the boundary: a validation error names the field
(and never echoes the value, which may be a secret), Postgres or Redis being down is a 503 with
``Retry-After``, and anything unexpected is a 500 whose details stay in the log.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qai_jobs.errors import (
    Conflict,
    ErrorCode,
    NotFound,
    PayloadTooLarge,
    QaiJobsError,
    ValidationFailed,
)

log = logging.getLogger("qai_jobs.api")


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def _field_of(loc: tuple[Any, ...]) -> str:
    """('body', 'files', 0, 'path') -> 'files[0].path'; the 'body'/'query'/'path' prefix goes."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if i == 0 and part in ("body", "query", "path", "header"):
            continue
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ValidationFailed)
    async def _invalid(_: Request, exc: ValidationFailed) -> JSONResponse:
        status = 413 if isinstance(exc, PayloadTooLarge) else 422
        details = {"field": exc.field} if exc.field else None
        return error_response(status, exc.code, exc.message, details)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, exc.code, exc.message)

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return error_response(409, exc.code, exc.message)

    @app.exception_handler(QaiJobsError)
    async def _ours(_: Request, exc: QaiJobsError) -> JSONResponse:
        return error_response(500, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())))
        # The message only: pydantic's "input" would echo what was sent (it may be a secret).
        message = f"{field}: {str(first.get('msg', 'invalid')).removeprefix('Value error, ')}"
        return error_response(422, ErrorCode.INVALID_REQUEST, message, {"field": field})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            404: ErrorCode.NOT_FOUND,
            405: ErrorCode.METHOD_NOT_ALLOWED,
            401: ErrorCode.UNAUTHORIZED,
        }
        return error_response(
            exc.status_code,
            codes.get(exc.status_code, ErrorCode.HTTP_ERROR),
            str(exc.detail),
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(sa.exc.OperationalError)
    async def _db_down(_: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        log.warning("Postgres unavailable: %s", str(exc.orig).splitlines()[0] if exc.orig else exc)
        return error_response(
            503,
            ErrorCode.DATABASE_UNAVAILABLE,
            "Postgres is unreachable; retry later",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(redis.RedisError)
    async def _redis_down(_: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("Redis unavailable: %s", exc)
        return error_response(
            503,
            ErrorCode.REDIS_UNAVAILABLE,
            "Redis is unreachable; retry later",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, ErrorCode.INTERNAL_ERROR, "internal error (see the API's log)")

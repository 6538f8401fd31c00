"""Faults that are not the client's: oversized bodies, storage outages, unexpected errors.

Fail closed: when the database or Redis cannot answer, the answer is 503 with a generic body — never
a token, never a misleading ``invalid_client`` (docs/security.md#faults). Internals are logged with
a request id and never echoed.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Mapping
from typing import Any

import orjson
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhirgate.oauth.errors import ServiceUnavailable
from fhirgate.storage.grant_store import ASYNCPG_ERRORS

__all__ = [
    "PLATFORM_PREFIX",
    "STORAGE_ERRORS",
    "BodyLimitMiddleware",
    "BodyTooLarge",
    "http_error",
    "is_fhir",
    "platform_body",
    "platform_item",
    "read_body",
    "replaying",
    "storage_unavailable",
    "too_large",
    "unexpected_error",
]

log = logging.getLogger("fhirgate.errors")

STORAGE_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    *ASYNCPG_ERRORS,  # the grant store's own asyncpg pool (storage/grant_store.py)
    sqlite3.Error,
    PoolTimeout,
    RedisError,
    ConnectionError,
    TimeoutError,
)


#: Paths whose errors are OperationOutcomes (the FHIR API); elsewhere, OAuth-style JSON.
FHIR_PREFIXES = ("/fhir/", "/r4/", "/stu3/", "/dstu2/")


def is_fhir(path: str) -> bool:
    return path.startswith(FHIR_PREFIXES) or path in ("/r4", "/stu3", "/dstu2", "/fhir")


#: The Platform API's paths, whose errors have its own shape (docs/platform-api.md).
PLATFORM_PREFIX = "/platform/"
PLATFORM_VERSION = "1.0.0"
#: The Platform API's codes for the faults answered outside its routes.
_PLATFORM_CODES = {413: "too_large", 500: "server_error", 503: "unavailable"}


def platform_body(items: list[dict[str, str]], request_id: str | None = None) -> dict[str, Any]:
    """A Platform API error body: ``meta``, ``errors`` and the ``requestId`` of a fault."""
    body: dict[str, Any] = {"meta": {"version": PLATFORM_VERSION}, "errors": items}
    if request_id:
        body["requestId"] = request_id
    return body


def platform_item(code: str, message: str, field: str | None = None) -> dict[str, str]:
    item = {"code": code, "message": message}
    if field:
        item["field"] = field
    return item


def error_response(
    path: str,
    status: int,
    error: str,
    description: str,
    headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
) -> Response:
    """One error in the surface's format: an OperationOutcome on the FHIR API (FHIR R4
    §3.1.0.1.5), the Platform API's ``errors`` body there, an RFC 6749 §5.2-style JSON body
    elsewhere."""
    if is_fhir(path):
        code = {404: "not-found", 405: "not-supported", 413: "too-long"}.get(status, "exception")
        issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": description}
        if request_id:
            issue["diagnostics"] = f"{description} (request id {request_id})"
        body: dict[str, Any] = {"resourceType": "OperationOutcome", "issue": [issue]}
        return Response(orjson.dumps(body), status, headers, "application/fhir+json")
    if path.startswith(PLATFORM_PREFIX):
        item = platform_item(_PLATFORM_CODES.get(status, error), description)
        return JSONResponse(platform_body([item], request_id), status_code=status, headers=headers)
    body = {"error": error, "error_description": description}
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status, headers=headers)


class BodyTooLarge(Exception):
    """The request body exceeds ``request_body_limit``."""


def too_large(path: str = "") -> Response:
    headers = {"Connection": "close"}
    return error_response(path, 413, "invalid_request", "request body too large", headers)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; :class:`BodyTooLarge` past ``limit`` bytes, judged by
    ``Content-Length`` first and then while streaming (a chunked body declares none)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and (not value.isdigit() or int(value) > limit):
            raise BodyTooLarge
    chunks, received = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes (413) by ``Content-Length`` or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.limit)
        except BodyTooLarge:
            await too_large(scope.get("path", ""))(scope, receive, send)
            return
        await self.app(scope, replaying(body, receive), send)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that delivers the body already read, then what ``receive`` says next
    (a disconnect)."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def storage_unavailable(request: Request, exc: Exception) -> Response:
    ref = secrets.token_hex(6)
    path = request.url.path
    log.error("storage unavailable [%s] %s %s: %r", ref, request.method, path, exc)
    error = ServiceUnavailable()
    headers = {"Retry-After": "5", "Cache-Control": "no-store"}
    return error_response(path, 503, error.error, error.description, headers, ref)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    ref = secrets.token_hex(6)
    path = request.url.path
    log.error("unexpected error [%s] %s %s", ref, request.method, path, exc_info=exc)
    return error_response(path, 500, "server_error", "internal error", request_id=ref)


async def http_error(request: Request, exc: Exception) -> Response:
    """404/405 and friends (405 keeps its ``Allow`` header)."""
    assert isinstance(exc, HTTPException)
    description = str(exc.detail).lower()
    return error_response(
        request.url.path, exc.status_code, "invalid_request", description, exc.headers
    )

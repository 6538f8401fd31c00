"""A small token server for the SDK's client-secret and legacy-key auths, served by uvicorn on
127.0.0.1 (tests/sdk/conftest.py starts it): it checks credentials and tokens as the real
endpoints do, records every request as it arrived, and can be told to answer otherwise.

- ``POST /oauth2/token``, ``POST /api/auth/token``: client credentials (``client_secret_basic``
  with form-urlencoded parts, or ``client_secret_post``); ``/api/auth/token`` answers as
  Pattern Health does (``expires_in`` in milliseconds, ``token_type`` ``bearer``);
- ``POST /auth/authenticate``, ``POST /auth/refreshToken``: Redox legacy API keys (JSON in,
  ``accessToken``/``expires``/``refreshToken`` out, plain-text errors; refresh tokens single-use);
- ``GET|POST /api/data``: a protected resource (401 unless the bearer token is live);
- ``GET /deny``: always 401.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import httpx
import requests
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

SECRET = "a:b%c+d é"  # form-urlencoded: a%3Ab%25c%2Bd+%C3%A9
CLIENT_ID = "client-1"
API_KEY = "8f0d1c2e-legacy-key"
LEGACY_SECRET = "legacy secret: 100% + é"
SCOPES = frozenset({"system/*.rs", "system/Patient.r"})
TOKEN_PATHS = ("/oauth2/token", "/api/auth/token")
LEGACY_PATHS = ("/auth/authenticate", "/auth/refreshToken")


@dataclass(frozen=True)
class Seen:
    """A request as it arrived: method, path, headers (lower-case names), raw body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    @property
    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class Reply:
    """An answer to give instead of the endpoint's own."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"


def iso_millis(epoch: float) -> str:
    """``2026-11-30T20:52:35.000Z``, as Redox writes ``expires``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class TokenServer:
    """The server's state (``url`` is set once it listens); ``reset`` between tests."""

    def __init__(self) -> None:
        self.url = ""
        self.reset()

    def reset(self) -> None:
        self.seen: list[Seen] = []
        self.replies: dict[str, Reply] = {}  # path → scripted answer
        self.expires_in = {"/oauth2/token": 300, "/api/auth/token": 3_600_000}  # as sent
        self.legacy_lifetime = 300.0
        self.legacy_expires: str | None = None  # the exact ``expires`` to send, if set
        self.now: Callable[[], float] = time.time  # the wall clock ``expires`` is made from
        self.delay = 0.0  # before each token answer, so that concurrent fetches would overlap
        self.access: set[str] = set()
        self.refresh: dict[str, str] = {}  # live refresh token → api key

    def hits(self, *paths: str) -> int:
        return sum(1 for seen in self.seen if seen.path in paths)

    def paths(self) -> list[str]:
        return [seen.path for seen in self.seen]

    def last(self, *paths: str) -> Seen:
        return [seen for seen in self.seen if seen.path in paths][-1]

    def revoke(self, token: str) -> None:
        self.access.discard(token)

    def _issue(self) -> str:
        token = secrets.token_urlsafe(24)
        self.access.add(token)
        return token

    # ------------------------------------------------------------------ endpoints

    async def _dispatch(self, request: Request) -> Response:
        body = await request.body()
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.seen.append(Seen(request.method, request.url.path, headers, body))
        path = request.url.path
        if path in TOKEN_PATHS + LEGACY_PATHS:
            await asyncio.sleep(self.delay)
        if path in self.replies:
            reply = self.replies[path]
            return Response(reply.body, reply.status, media_type=reply.content_type)
        if path in TOKEN_PATHS:
            return self._token(path, request.headers.get("authorization"), self.seen[-1].form)
        if path in LEGACY_PATHS:
            return self._legacy(path, body)
        if path == "/api/data":
            token = request.headers.get("authorization", "").removeprefix("Bearer ")
            if token in self.access:
                return JSONResponse({"ok": True, "body": body.decode()})
        return PlainTextResponse("Unauthorized", 401, {"WWW-Authenticate": "Bearer"})

    def _token(self, path: str, authorization: str | None, form: dict[str, str]) -> Response:
        presented = _basic(authorization) if authorization else None
        if presented is None and "client_secret" in form:
            presented = (form.get("client_id", ""), form["client_secret"])
        if presented != (CLIENT_ID, SECRET):
            return JSONResponse({"error": "invalid_client",
                                 "error_description": "client authentication failed"}, 401,
                                {"WWW-Authenticate": "Basic"})  # fmt: skip
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        scope = form.get("scope", " ".join(sorted(SCOPES)))
        if not set(scope.split()) <= SCOPES:
            return JSONResponse({"error": "invalid_scope", "error_description": "not allowed"}, 400)
        token_type = "bearer" if path == "/api/auth/token" else "Bearer"  # Pattern Health: bearer
        answer = {"access_token": self._issue(), "expires_in": self.expires_in[path],
                  "token_type": token_type, "scope": scope}  # fmt: skip
        return JSONResponse(answer)

    def _legacy(self, path: str, body: bytes) -> Response:
        try:
            sent = json.loads(body)
        except ValueError:
            return PlainTextResponse("Invalid JSON body", 400)
        authenticate = path == "/auth/authenticate"
        key = "secret" if authenticate else "refreshToken"
        sent = sent if isinstance(sent, dict) else {}
        if not isinstance(sent.get("apiKey"), str) or not isinstance(sent.get(key), str):
            return PlainTextResponse(f"Missing apiKey or {key}", 400)
        if authenticate and (sent["apiKey"], sent[key]) != (API_KEY, LEGACY_SECRET):
            return PlainTextResponse("Invalid source secret", 401)
        if not authenticate and self.refresh.pop(sent[key], None) != sent["apiKey"]:
            return PlainTextResponse("Invalid refresh token", 401)
        refresh = secrets.token_urlsafe(24)
        self.refresh[refresh] = sent["apiKey"]
        expires = self.legacy_expires or iso_millis(self.now() + self.legacy_lifetime)
        return JSONResponse({"accessToken": self._issue(), "expires": expires,
                             "refreshToken": refresh})  # fmt: skip

    def app(self) -> Starlette:
        methods = ["GET", "POST"]
        return Starlette(routes=[Route("/{path:path}", self._dispatch, methods=methods)])


def _basic(authorization: str) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1 credentials, decoded as fhirgate's server does."""
    scheme, _, encoded = authorization.partition(" ")
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    if scheme.lower() != "basic" or not colon:
        return None
    return unquote_plus(client_id, errors="strict"), unquote_plus(secret, errors="strict")


@dataclass
class FakeClock:
    """A monotonic clock that tests move by hand (``auth._clock = clock``)."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def get_in_threads(library: str, auth: Any, url: str, count: int = 20) -> list[int]:
    """``count`` GETs of ``url`` with ``auth``, from as many threads released together, through
    one ``httpx.Client`` or one ``requests.Session``; their statuses."""
    barrier = threading.Barrier(count)
    with httpx.Client(auth=auth) as http, requests.Session() as session:
        session.auth = auth

        def get(_: int) -> int:
            barrier.wait()
            if library == "httpx":
                return http.get(url).status_code
            return session.get(url, timeout=10).status_code

        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(get, range(count)))


def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


VIAS = ("httpx", "async", "requests")  # the three ways an auth is used for an API request


def call(via: str, auth: Any, url: str, body: str | None = None) -> int:
    """One API request with ``auth`` (a POST with ``body`` if given); its final status.

    ``via`` is ``httpx`` (a sync client), ``async`` (an async client), ``requests``, or
    ``get_token``/``aget_token`` (no API request: the token is fetched; the status is 0).
    """
    method = "GET" if body is None else "POST"
    if via == "httpx":
        with httpx.Client(auth=auth) as http:
            return http.request(method, url, content=body).status_code
    if via in ("async", "aget_token"):
        return asyncio.run(_acall(via, auth, url, method, body))
    if via == "requests":
        return requests.request(method, url, data=body, auth=auth, timeout=10).status_code
    assert via == "get_token", via
    auth.get_token()
    return 0


async def _acall(via: str, auth: Any, url: str, method: str, body: str | None) -> int:
    if via == "aget_token":
        await auth.aget_token()
        return 0
    async with httpx.AsyncClient(auth=auth) as http:
        return (await http.request(method, url, content=body)).status_code


@contextlib.contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """``app`` served by uvicorn from a thread, on a free port of 127.0.0.1; its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            lifespan="off", loop="asyncio", ws="none")  # fmt: skip
    uvicorn_server = uvicorn.Server(config)
    runner = threading.Thread(target=uvicorn_server.run, name="token-server", daemon=True)
    runner.start()
    give_up = time.monotonic() + 15
    while not uvicorn_server.started:
        assert runner.is_alive() and time.monotonic() < give_up, "the server did not start"
        time.sleep(0.02)
    host, port = uvicorn_server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        uvicorn_server.should_exit = True
        runner.join(15)

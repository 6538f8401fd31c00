"""``CachedTokenAuth``: what every SDK auth shares, for httpx (sync and async) and requests.

The token is cached until 30 s before it runs out; one fetch runs at a time (a
``threading.Lock`` for sync callers, an ``asyncio.Lock`` per event loop for async ones). A 401
from the API drops that token, fetches a fresh one and resends once; a second 401 is returned.

httpx: the auth flows *yield* the token requests, so httpx sends them through the same client
and transport as the API request (proxies, TLS, ``ASGITransport``). The lock is held across
those yields so that concurrent requests wait for the one fetch; httpx closes the flow on any
failure, which releases it. Hence the token exchange appears in ``response.history`` and event
hooks, and its transport failures are httpx's own exceptions. ``get_token``/``aget_token`` use
the given client (auth disabled) or a short-lived one and raise ``TokenUnavailable`` for those
instead.

A subclass says how a token is obtained. Either ``_token_request``: one request answered as
RFC 6749 §5.1 (its ``expires_in`` times ``_expires_in_scale`` is the lifetime in seconds); or
``_exchange``: a generator that yields token requests, is sent each answer (already read),
stores the token with ``_store`` and returns it. It runs under the lock, so it may keep state
between fetches (a refresh token) without further locking.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from typing import TYPE_CHECKING, Any

import httpx

from fhirgate.client._errors import asend, parse_token_response, post_with_requests, send

if TYPE_CHECKING:
    import requests

__all__ = ["REFRESH_MARGIN", "CachedTokenAuth", "TokenExchange"]

REFRESH_MARGIN = 30.0  # seconds before a token runs out when the cached token is replaced

#: Yields token requests, is sent their answers, returns the access token.
TokenExchange = Generator[httpx.Request, httpx.Response, str]


def _step(exchange: TokenExchange, answer: httpx.Response | None) -> httpx.Request | str:
    """The exchange's next request (its first one for ``answer=None``), or its token."""
    try:
        return next(exchange) if answer is None else exchange.send(answer)
    except StopIteration as done:
        token: str = done.value
        return token


def _run(exchange: TokenExchange, send: Callable[[httpx.Request], httpx.Response]) -> str:
    """Send each request of ``exchange`` (``send`` reads the answers); its token."""
    step = _step(exchange, None)
    while isinstance(step, httpx.Request):
        step = _step(exchange, send(step))
    return step


class CachedTokenAuth(httpx.Auth):
    """Bearer tokens, cached, fetched one at a time, replaced once after a 401 (see module)."""

    requires_request_body = True  # a request is resent after a 401
    _expires_in_scale = 1.0  # seconds per unit of the token answer's expires_in

    def __init__(self) -> None:
        self._clock: Callable[[], float] = time.monotonic
        self._lock = threading.Lock()
        self._alock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._token: str | None = None
        self._expires_at = 0.0

    def invalidate(self) -> None:
        """Forget the cached token; the next request fetches a new one."""
        self._token, self._expires_at = None, 0.0

    def get_token(self, client: httpx.Client | None = None) -> str:
        """The cached access token, or a new one fetched with ``client`` (or a new client)."""
        return self._locked_token(None, lambda request: send(client, request))

    async def aget_token(self, client: httpx.AsyncClient | None = None) -> str:
        """Async ``get_token``."""
        async with self._async_lock():
            token = self._current(None)
            if token is None:
                exchange = self._exchange()  # client.send reads the answers
                step = _step(exchange, None)
                while isinstance(step, httpx.Request):
                    step = _step(exchange, await asend(client, step))
                token = step
            return token

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        stale: str | None = None
        for _attempt in range(2):
            with self._lock:
                token = self._current(stale)
                if token is None:
                    token = yield from self._fetch_flow()
            request.headers["Authorization"] = f"Bearer {token}"
            response = yield request
            if response.status_code != 401:
                return
            stale = token

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        stale: str | None = None
        for _attempt in range(2):
            async with self._async_lock():
                token = self._current(stale)
                if token is None:
                    exchange = self._exchange()
                    step = _step(exchange, None)
                    while isinstance(step, httpx.Request):
                        answer = yield step
                        await answer.aread()
                        step = _step(exchange, answer)
                    token = step
            request.headers["Authorization"] = f"Bearer {token}"
            response = yield request
            if response.status_code != 401:
                return
            stale = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """``requests`` auth: a bearer token, and a hook that retries once after a 401."""
        token = self._locked_token(None, post_with_requests)
        request.headers["Authorization"] = f"Bearer {token}"
        request.register_hook("response", self._retry_on_401)  # type: ignore[no-untyped-call]
        return request

    def _retry_on_401(self, response: requests.Response, **send: Any) -> requests.Response:
        sent = response.request
        if response.status_code != 401 or not isinstance(sent.body, bytes | str | None):
            return response
        stale = str(sent.headers.get("Authorization", "")).removeprefix("Bearer ")
        token = self._locked_token(stale, post_with_requests)
        _ = response.content  # release the connection before reusing it (as HTTPDigestAuth)
        response.close()
        retry = sent.copy()
        retry.hooks = {**retry.hooks, "response": [
            hook for hook in retry.hooks.get("response", []) if hook != self._retry_on_401
        ]}  # fmt: skip
        jar = getattr(retry, "_cookies", None)
        if jar is not None:
            from requests.cookies import extract_cookies_to_jar

            extract_cookies_to_jar(jar, sent, response.raw)  # type: ignore[no-untyped-call]
            retry.prepare_cookies(jar)
        retry.headers["Authorization"] = f"Bearer {token}"
        again = response.connection.send(retry, **send)
        again.history.append(response)
        again.request = retry
        return again

    def _current(self, stale: str | None) -> str | None:
        """The cached token unless it expired or is ``stale`` (rejected by the API)."""
        if stale is not None and self._token == stale:
            self.invalidate()
        if self._token is not None and self._clock() < self._expires_at:
            return self._token
        return None

    def _locked_token(
        self, stale: str | None, send: Callable[[httpx.Request], httpx.Response]
    ) -> str:
        with self._lock:
            token = self._current(stale)
            return _run(self._exchange(), send) if token is None else token

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._alock is None or self._alock[0] is not loop:
            self._alock = (loop, asyncio.Lock())
        return self._alock[1]

    def _fetch_flow(self) -> TokenExchange:
        """``_exchange``, each answer read first (httpx's sync flow hands them on unread)."""
        exchange = self._exchange()
        step = _step(exchange, None)
        while isinstance(step, httpx.Request):
            answer = yield step
            answer.read()
            step = _step(exchange, answer)
        return step

    def _store(self, token: str, lifetime: float, started: float) -> str:
        """Cache ``token``, valid ``lifetime`` seconds from ``started`` (the clock's, when it
        was requested), until ``REFRESH_MARGIN`` seconds before that."""
        self._token = token
        self._expires_at = started + lifetime - REFRESH_MARGIN
        return token

    def _exchange(self) -> TokenExchange:
        started = self._clock()
        answer = yield self._token_request()
        parsed = parse_token_response(answer.status_code, answer.content)
        return self._store(parsed.access_token, parsed.expires_in * self._expires_in_scale, started)

    def _token_request(self) -> httpx.Request:
        raise NotImplementedError

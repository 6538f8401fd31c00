"""``PrivateKeyJWTAuth``: SMART Backend Services client credentials for httpx and requests.

    auth = PrivateKeyJWTAuth(token_url, client_id, "key.pem", kid="k1", scope="system/*.rs")
    httpx.Client(auth=auth).get(url)  # also httpx.AsyncClient; requests.get(url, auth=auth)

The token is cached until 30 s before its ``expires_in`` runs out; one fetch runs at a time (a
``threading.Lock`` for sync callers, an ``asyncio.Lock`` per event loop for async ones). A 401
from the API drops that token, fetches a fresh one and resends once; a second 401 is returned.

httpx: the auth flows *yield* the token request, so httpx sends it through the same client and
transport as the API request (proxies, TLS, ``ASGITransport``). The lock is held across that
yield so that concurrent requests wait for the one fetch; httpx closes the flow on any failure,
which releases it. Hence the token exchange appears in ``response.history`` and event hooks, and
its transport failures are httpx's own exceptions. ``get_token``/``aget_token`` use the given
client (auth disabled) or a short-lived one and raise ``TokenUnavailable`` for those instead.

Exceptions::

    ValueError               unusable key, kid or alg (raised when the auth is built)
    OAuthError               the token endpoint refused: .error .description .status_code .body
    └── TokenUnavailable     5xx, non-JSON or unusable answer, unreachable endpoint; retry later
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from typing import TYPE_CHECKING, Any

import httpx

from fhirgate.client._assertion import (
    KeyInput,
    build_client_assertion,
    check_signer,
    load_private_key,
    token_form,
)
from fhirgate.client._errors import asend, parse_token_response, post_with_requests, send

if TYPE_CHECKING:
    import requests

__all__ = ["REFRESH_MARGIN", "PrivateKeyJWTAuth"]

REFRESH_MARGIN = 30.0  # seconds before expires_in elapses when a cached token is replaced


class PrivateKeyJWTAuth(httpx.Auth):
    """Bearer tokens from a ``private_key_jwt`` client-credentials grant (RFC 7523 §2.2)."""

    requires_request_body = True  # a request is resent after a 401

    def __init__(
        self,
        token_url: str,
        client_id: str,
        private_key: KeyInput,
        kid: str,
        alg: str = "RS384",
        scope: str | None = None,
    ) -> None:
        self.token_url, self.client_id, self.kid, self.alg = token_url, client_id, kid, alg
        self.scope = scope
        self._key = load_private_key(private_key)
        check_signer(self._key, alg, kid)
        self._clock: Callable[[], float] = time.monotonic
        self._lock = threading.Lock()
        self._alock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._token: str | None = None
        self._expires_at = 0.0

    def __repr__(self) -> str:
        return (
            f"PrivateKeyJWTAuth(token_url={self.token_url!r}, client_id={self.client_id!r}, "
            f"kid={self.kid!r}, alg={self.alg!r}, scope={self.scope!r})"
        )

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
                started = self._clock()
                token = self._accept(await asend(client, self._token_request()), started)
            return token

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        stale: str | None = None
        for _attempt in range(2):
            with self._lock:
                token = self._current(stale)
                if token is None:
                    started = self._clock()
                    answer = yield self._token_request()
                    answer.read()
                    token = self._accept(answer, started)
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
                    started = self._clock()
                    answer = yield self._token_request()
                    await answer.aread()
                    token = self._accept(answer, started)
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
            if token is None:
                started = self._clock()
                token = self._accept(send(self._token_request()), started)
            return token

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._alock is None or self._alock[0] is not loop:
            self._alock = (loop, asyncio.Lock())
        return self._alock[1]

    def _token_request(self) -> httpx.Request:
        assertion = build_client_assertion(
            client_id=self.client_id, token_url=self.token_url, private_key=self._key,
            kid=self.kid, alg=self.alg,
        )  # fmt: skip
        return httpx.Request("POST", self.token_url, data=token_form(assertion, self.scope),
                             headers={"Accept": "application/json"})  # fmt: skip

    def _accept(self, answer: httpx.Response, started: float) -> str:
        parsed = parse_token_response(answer.status_code, answer.content)
        self._token = parsed.access_token
        self._expires_at = started + parsed.expires_in - REFRESH_MARGIN
        return parsed.access_token

"""``LegacyKeyAuth``: Redox legacy API keys (an API key and its secret), for httpx and requests.

    auth = LegacyKeyAuth("https://api.redoxengine.com", api_key, secret)
    httpx.Client(auth=auth).get(url)  # also httpx.AsyncClient; requests.get(url, auth=auth)

The first token comes from ``POST {base_url}/auth/authenticate`` with the JSON body
``{"apiKey", "secret"}``, answered ``{"accessToken", "expires", "refreshToken"}`` where
``expires`` is an ISO 8601 instant (``2026-11-30T20:52:35.000Z``; without an offset, UTC).
Once the token is within 30 s of ``expires``, the next one comes from
``POST {base_url}/auth/refreshToken`` with ``{"apiKey", "refreshToken"}`` (the same answer, a
new pair: a refresh token is sent once at most). If that is refused (a 4xx other than 429),
the auth falls back to ``/auth/authenticate``; a 5xx, a 429 (throttled) or an unreachable
endpoint is raised instead, and the next fetch authenticates.

``expires`` is compared with the local clock, so a skewed clock shortens or lengthens the
caching (never the token's validity: a 401 from the API still replaces it). An answer without
a readable ``expires`` gives a token used for one request, then refreshed.

Caching, single flight and the one retry after a 401 work as for ``PrivateKeyJWTAuth``
(``CachedTokenAuth`` in ``_base``); a 401 from the API is answered with a refresh, too.

Exceptions::

    ValueError               an empty base_url, api_key or secret
    OAuthError               refused (a 4xx with a plain-text reason, e.g. 401 "Invalid source
                             secret"): .error is invalid_client for a 401, else invalid_request;
                             .description the reason; .body {"text": reason}; .status_code
    └── TokenUnavailable     5xx or 429, non-JSON or unusable answer, unreachable endpoint;
                             retry later
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from fhirgate.client._base import CachedTokenAuth, TokenExchange
from fhirgate.client._errors import parse_legacy_response

__all__ = ["AUTHENTICATE_PATH", "REFRESH_PATH", "LegacyKeyAuth"]

AUTHENTICATE_PATH = "/auth/authenticate"
REFRESH_PATH = "/auth/refreshToken"


class LegacyKeyAuth(CachedTokenAuth):
    """Bearer tokens for a Redox legacy API key: authenticate once, then refresh."""

    def __init__(self, base_url: str, api_key: str, secret: str) -> None:
        if not base_url or not api_key or not secret:
            raise ValueError("base_url, api_key and secret are required")
        self.base_url, self.api_key = base_url.rstrip("/"), api_key
        self._secret = secret
        self._refresh_token: str | None = None
        self._now: Callable[[], float] = time.time  # the wall clock that ``expires`` is read by
        super().__init__()

    def __repr__(self) -> str:
        return f"LegacyKeyAuth(base_url={self.base_url!r}, api_key={self.api_key!r})"

    def _exchange(self) -> TokenExchange:
        refresh, self._refresh_token = self._refresh_token, None  # spent, whatever the answer
        if refresh is not None:
            started = self._clock()
            answer = yield self._post(REFRESH_PATH, refreshToken=refresh)
            if not 400 <= answer.status_code < 500 or answer.status_code == 429:
                return self._accept(answer, started)  # a token, or raise (5xx, throttled)
        started = self._clock()
        answer = yield self._post(AUTHENTICATE_PATH, secret=self._secret)
        return self._accept(answer, started)

    def _post(self, path: str, **credential: str) -> httpx.Request:
        body = {"apiKey": self.api_key, **credential}
        headers = {"Accept": "application/json"}
        return httpx.Request("POST", f"{self.base_url}{path}", json=body, headers=headers)

    def _accept(self, answer: httpx.Response, started: float) -> str:
        tokens = parse_legacy_response(answer.status_code, answer.content)
        self._refresh_token = tokens.refresh_token
        lifetime = 0.0 if tokens.expires_at is None else tokens.expires_at - self._now()
        return self._store(tokens.access_token, lifetime, started)

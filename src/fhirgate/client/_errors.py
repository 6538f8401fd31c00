"""The SDK's errors, and the token exchange's I/O edge: sending a token request (httpx or
requests) and reading the answer into a token or one of these errors: an RFC 6749 answer, or
a Redox legacy API key answer (``accessToken``, ``expires``, ``refreshToken``; plain-text errors).

Nothing here ever puts a client assertion, a client secret or an access or refresh token into
a message, a ``repr`` or an error's ``body`` (token members are removed from it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from requests import PreparedRequest as _Prepared

__all__ = [
    "LegacyTokens",
    "OAuthError",
    "TokenResponse",
    "TokenUnavailable",
    "asend",
    "parse_expires",
    "parse_legacy_response",
    "parse_token_response",
    "post_with_requests",
    "send",
    "unavailable",
]

TIMEOUT = 10.0  # for token requests sent by a client created here
_MAX_DESCRIPTION = 500
_RETRY_LATER = frozenset({429, 502, 503, 504})
_SECRET_MEMBERS = frozenset(
    {"access_token", "refresh_token", "id_token", "accessToken", "refreshToken"}
)


class OAuthError(Exception):
    """The token endpoint refused: RFC 6749 §5.2 ``error`` and ``error_description``.

    ``body`` is the decoded JSON answer, for extras such as the Redox dialect's ``error_uri``;
    for a plain-text answer (Redox legacy API keys) it is ``{"text": <the answer>}``.
    """

    error: str
    description: str
    status_code: int
    body: dict[str, object]

    def __init__(
        self,
        error: str,
        description: str = "",
        *,
        status_code: int = 0,
        body: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(error, description)
        self.error = error
        self.description = description
        self.status_code = status_code
        self.body = {k: v for k, v in (body or {}).items() if k not in _SECRET_MEMBERS}

    def __str__(self) -> str:
        text = f"{self.error}: {self.description}" if self.description else self.error
        return f"{text} (HTTP {self.status_code})" if self.status_code else text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(error={self.error!r}, description={self.description!r}, "
            f"status_code={self.status_code})"
        )

    def __reduce__(self) -> tuple[type[OAuthError], tuple[str, str], dict[str, object]]:
        state = {"status_code": self.status_code, "body": self.body}
        return type(self), (self.error, self.description), state


class TokenUnavailable(OAuthError):
    """No token for now: a 5xx or 429, a non-JSON or unusable answer, an unreachable endpoint.

    ``error`` is ``server_error`` or ``temporarily_unavailable``; retrying later may succeed.
    """


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """A successful RFC 6749 §5.1 answer; the token stays out of the ``repr``."""

    access_token: str = field(repr=False)
    expires_in: int
    scope: str | None


def unavailable(exc: BaseException) -> TokenUnavailable:
    """The error for a transport failure (its type only: messages may carry request data)."""
    reason = f"the token endpoint could not be reached ({type(exc).__name__})"
    return TokenUnavailable("temporarily_unavailable", reason)


def _json_object(content: bytes) -> dict[str, object] | None:
    try:
        value = json.loads(content)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _fallback(status: int) -> str:
    """The ``error`` of an answer that names none and is not a client error."""
    return "temporarily_unavailable" if status in _RETRY_LATER else "server_error"


def _retry_later(status: int) -> bool:
    """A 5xx, or 429 (throttled): no token for now, but the request itself may be fine."""
    return status >= 500 or status == 429


def _error(cls: type[OAuthError], status: int, body: Mapping[str, object]) -> OAuthError:
    error, description = body.get("error"), body.get("error_description")
    return cls(
        error if isinstance(error, str) and error else _fallback(status),
        description[:_MAX_DESCRIPTION] if isinstance(description, str) else "",
        status_code=status,
        body=body,
    )


def _expires_in(value: object) -> int:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def parse_token_response(status: int, content: bytes) -> TokenResponse:
    """The token of a 200 answer, else raise :class:`OAuthError` / :class:`TokenUnavailable`."""
    body = _json_object(content)
    if body is None:
        reason = "the token endpoint's answer is not a JSON object"
        raise TokenUnavailable(_fallback(status), reason, status_code=status)
    if _retry_later(status):
        raise _error(TokenUnavailable, status, body)
    if status != 200 or "error" in body:
        raise _error(OAuthError, status, body)
    token, token_type = body.get("access_token"), body.get("token_type")
    if not isinstance(token, str) or not token:
        raise TokenUnavailable("server_error", "the answer has no access_token", status_code=status)
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        reason = "the answer's token_type is not Bearer"
        raise TokenUnavailable("server_error", reason, status_code=status, body=body)
    scope = body.get("scope")
    granted = scope if isinstance(scope, str) else None
    return TokenResponse(token, _expires_in(body.get("expires_in")), granted)


@dataclass(frozen=True, slots=True)
class LegacyTokens:
    """A successful Redox legacy answer; the tokens stay out of the ``repr``.

    ``expires_at`` is ``expires`` in seconds since the epoch, ``None`` if missing or unreadable.
    """

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: float | None


def parse_expires(value: object) -> float | None:
    """An ISO 8601 instant (``2026-11-30T20:52:35.000Z``; no offset means UTC) as epoch seconds."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _legacy_error(status: int, content: bytes, body: dict[str, object] | None) -> OAuthError:
    """A refusal is a 4xx with a plain-text reason (401 ``Invalid source secret``)."""
    text = content.decode("utf-8", "replace").strip()
    described = body.get("error_description", body.get("message")) if body else text
    description = described[:_MAX_DESCRIPTION] if isinstance(described, str) else ""
    fields = body if body is not None else {"text": text} if text else {}
    if 400 <= status < 500 and not _retry_later(status):
        error = "invalid_client" if status == 401 else "invalid_request"
        return OAuthError(error, description, status_code=status, body=fields)
    return TokenUnavailable(_fallback(status), description, status_code=status, body=fields)


def parse_legacy_response(status: int, content: bytes) -> LegacyTokens:
    """The tokens of a 200 ``/auth/authenticate`` or ``/auth/refreshToken`` answer, else raise
    :class:`OAuthError` (4xx: ``invalid_client`` for a 401, else ``invalid_request``) or
    :class:`TokenUnavailable` (5xx, 429, or an answer without a usable ``accessToken``)."""
    body = _json_object(content)
    if status != 200:
        raise _legacy_error(status, content, body)
    if body is None:
        reason = "the token endpoint's answer is not a JSON object"
        raise TokenUnavailable("server_error", reason, status_code=status)
    token, refresh = body.get("accessToken"), body.get("refreshToken")
    if not isinstance(token, str) or not token:
        reason = "the answer has no accessToken"
        raise TokenUnavailable("server_error", reason, status_code=status, body=body)
    refresh_token = refresh if isinstance(refresh, str) and refresh else None
    return LegacyTokens(token, refresh_token, parse_expires(body.get("expires")))


def send(client: httpx.Client | None, request: httpx.Request) -> httpx.Response:
    """Send with ``client`` (its auth disabled) or a short-lived client."""
    try:
        if client is not None:
            return client.send(request, auth=None)
        with httpx.Client(timeout=TIMEOUT) as own:
            return own.send(request)
    except httpx.TransportError as exc:
        raise unavailable(exc) from exc


async def asend(client: httpx.AsyncClient | None, request: httpx.Request) -> httpx.Response:
    """Async ``send``."""
    try:
        if client is not None:
            return await client.send(request, auth=None)
        async with httpx.AsyncClient(timeout=TIMEOUT) as own:
            return await own.send(request)
    except httpx.TransportError as exc:
        raise unavailable(exc) from exc


_TRANSPORT_HEADERS = frozenset(
    {"host", "content-length", "connection", "accept-encoding", "user-agent", "accept"}
)


def post_with_requests(request: httpx.Request) -> httpx.Response:
    """Send with ``requests.post`` (for the requests integration), answer as httpx's."""
    import requests  # optional dependency

    # the request's own headers (Basic, 1upHealth's client_id/client_secret), but not those
    # that describe httpx's connection or body encoding: requests sets its own
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower() not in _TRANSPORT_HEADERS
    }
    headers["Accept"] = "application/json"
    try:  # an auth of its own, so that requests does not put ~/.netrc credentials instead
        answer = requests.post(str(request.url), data=request.content, headers=headers,
                               timeout=TIMEOUT, auth=_as_built)  # fmt: skip
    except requests.RequestException as exc:
        raise unavailable(exc) from exc
    return httpx.Response(answer.status_code, content=answer.content)


def _as_built(request: _Prepared) -> _Prepared:
    return request

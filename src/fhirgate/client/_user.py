"""``AppUserAuth``: an application acting for one of its users (1upHealth's per-user delegated
access), for httpx (sync and async) and requests.

    auth = AppUserAuth("https://fhirgate.example", client_id, client_secret, app_user_id="alice")
    httpx.Client(auth=auth).get(url)  # also httpx.AsyncClient; requests.get(url, auth=auth)
    auth.oneup_user_id                # the server's number for the user, after the first token

The first token: a code from ``POST {user_management_url}/user/auth-code`` for ``app_user_id``
(with ``scope`` if given; the server's default is ``user/*.*``). When the application has no
such user and ``create`` is true, ``POST {user_management_url}/user`` creates it, and its answer
carries the code. The application's credentials go to the user-management API as the headers
``client_id`` and ``client_secret`` (as 1upHealth documents; a proxy must pass header names with
underscores). The code is exchanged at ``token_url`` with ``grant_type=authorization_code``
(RFC 6749 §4.1.3), the credentials as form fields (``method="post"``) or Basic
(``method="basic"``), as the application was registered.

Once the access token is within 30 s of its ``expires_in``, the next one comes from
``grant_type=refresh_token`` (RFC 6749 §6): the answer's new refresh token replaces the one
sent, which the server has spent (without a new one, the old is kept). A refresh refused with
``invalid_grant`` (expired; the grant revoked; the user deactivated and reactivated) starts
over with a new code; other refusals, a 5xx, a 429 or an unreachable endpoint are raised and
the refresh token is kept for the next fetch. ``id_token`` holds the last id token (asked for
with ``openid`` in ``scope``).

Caching, single flight and the one retry after a 401 work as for ``PrivateKeyJWTAuth``
(``CachedTokenAuth`` in ``_base``); a 401 from the API (a revoked grant) is answered with a
refresh, hence a new code.

Exceptions::

    ValueError               no base_url and no explicit URLs, or an empty credential
    OAuthError               refused: by the token endpoint (RFC 6749 §5.2), or by the
                             user-management API (.error invalid_client for a 401, else
                             invalid_request; .description its message, e.g. "this user is not
                             active"); .status_code .body
    ├── UnknownAppUser       create=False and the application has no such user
    └── TokenUnavailable     5xx or 429, non-JSON or unusable answer, unreachable endpoint;
                             retry later
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Literal

import httpx

from fhirgate.client._base import CachedTokenAuth, TokenExchange
from fhirgate.client._errors import (
    OAuthError,
    TokenUnavailable,
    _fallback,
    _json_object,
    _retry_later,
    parse_token_response,
)
from fhirgate.client._secret import basic_authorization

__all__ = ["TOKEN_PATH", "USER_MANAGEMENT_PATH", "AppUserAuth", "UnknownAppUser"]

TOKEN_PATH = "/oauth2/token"  # noqa: S105 (a path)
USER_MANAGEMENT_PATH = "/user-management/v1"
#: The user-management API's answers (``{"error": message}``, status 400) that this auth acts on.
NO_SUCH_USER = "Could not find a user matching this query"
USER_EXISTS = "this user already exists"
_MAX_DESCRIPTION = 500

TokenMethod = Literal["post", "basic"]
CodeFetch = Generator[httpx.Request, httpx.Response, str]


class UnknownAppUser(OAuthError):
    """The application has no user of that ``app_user_id``, and the auth may not create it."""


class AppUserAuth(CachedTokenAuth):
    """Bearer tokens for one user of an application: a code from the user-management API, then
    the authorization-code and refresh-token grants (RFC 6749 §4.1.3, §6)."""

    oneup_user_id: int | None
    id_token: str | None

    def __init__(
        self,
        base_url: str | None,
        client_id: str,
        client_secret: str,
        *,
        app_user_id: str,
        scope: str | None = None,
        create: bool = True,
        method: TokenMethod = "post",
        token_url: str | None = None,
        user_management_url: str | None = None,
    ) -> None:
        base = base_url.rstrip("/") if base_url else None
        token_url = token_url or (f"{base}{TOKEN_PATH}" if base else None)
        user_management_url = user_management_url or (
            f"{base}{USER_MANAGEMENT_PATH}" if base else None
        )
        if not token_url or not user_management_url:
            raise ValueError("give base_url, or both token_url and user_management_url")
        if not client_id or not client_secret or not app_user_id:
            raise ValueError("client_id, client_secret and app_user_id are required")
        if method not in ("post", "basic"):
            raise ValueError("method must be 'post' or 'basic'")
        self.token_url, self.user_management_url = token_url, user_management_url.rstrip("/")
        self.client_id, self.app_user_id, self.scope = client_id, app_user_id, scope
        self.create = create
        self.method: TokenMethod = method
        self.oneup_user_id = None
        self.id_token = None
        self._secret = client_secret
        self._refresh_token: str | None = None
        super().__init__()

    def __repr__(self) -> str:
        return (
            f"AppUserAuth(token_url={self.token_url!r}, "
            f"user_management_url={self.user_management_url!r}, client_id={self.client_id!r}, "
            f"app_user_id={self.app_user_id!r}, scope={self.scope!r}, create={self.create!r}, "
            f"method={self.method!r})"
        )

    # ------------------------------------------------------------------ the token exchange

    def _exchange(self) -> TokenExchange:
        if self._refresh_token is not None:
            started = self._clock()
            answer = yield self._token_request_for(
                grant_type="refresh_token", refresh_token=self._refresh_token
            )
            try:
                return self._accept(answer, started)
            except OAuthError as error:
                if isinstance(error, TokenUnavailable) or error.error != "invalid_grant":
                    raise
                self._refresh_token = None  # spent, expired or revoked: start over
        code = yield from self._code()
        started = self._clock()
        answer = yield self._token_request_for(grant_type="authorization_code", code=code)
        return self._accept(answer, started)

    def _code(self) -> CodeFetch:
        """A new code for the user, creating the user first if allowed and needed."""
        answer = yield self._user_request("/user/auth-code")
        if self.create and _says(answer, NO_SUCH_USER):
            answer = yield self._user_request("/user")
            if _says(answer, USER_EXISTS):  # created meanwhile by another process
                answer = yield self._user_request("/user/auth-code")
        return self._read_code(answer)

    def _user_request(self, path: str) -> httpx.Request:
        form = {"app_user_id": self.app_user_id}
        if self.scope:
            form["scope"] = self.scope
        headers = {
            "Accept": "application/json",
            "client_id": self.client_id,
            "client_secret": self._secret,
        }
        url = f"{self.user_management_url}{path}"
        return httpx.Request("POST", url, data=form, headers=headers)

    def _read_code(self, answer: httpx.Response) -> str:
        if _says(answer, NO_SUCH_USER):
            reason = f"the application has no user {self.app_user_id!r}"
            if not self.create:
                reason += " (create=False)"
            raise UnknownAppUser("unknown_user", reason, status_code=answer.status_code)
        body = _user_management_body(answer)
        code, number = body.get("code"), body.get("oneup_user_id")
        if not isinstance(code, str) or not code:
            raise _unusable(answer, "code")
        if not isinstance(number, int) or isinstance(number, bool):
            raise _unusable(answer, "oneup_user_id")
        self.oneup_user_id = number
        return code

    def _token_request_for(self, **form: str) -> httpx.Request:
        headers = {"Accept": "application/json"}
        if self.method == "basic":
            headers["Authorization"] = basic_authorization(self.client_id, self._secret)
        else:
            form |= {"client_id": self.client_id, "client_secret": self._secret}
        return httpx.Request("POST", self.token_url, data=form, headers=headers)

    def _accept(self, answer: httpx.Response, started: float) -> str:
        """Store the answer's tokens (RFC 6749 §5.1; a new refresh token replaces the old)."""
        parsed = parse_token_response(answer.status_code, answer.content)
        body = _json_object(answer.content) or {}
        refresh, id_token = body.get("refresh_token"), body.get("id_token")
        if isinstance(refresh, str) and refresh:
            self._refresh_token = refresh
        if isinstance(id_token, str) and id_token:
            self.id_token = id_token
        return self._store(parsed.access_token, parsed.expires_in, started)


def _unusable(answer: httpx.Response, member: str) -> TokenUnavailable:
    reason = f"the user-management answer has no usable {member}"
    return TokenUnavailable("server_error", reason, status_code=answer.status_code)


def _says(answer: httpx.Response, message: str) -> bool:
    """Whether the user-management API answered 400 ``{"error": message}``."""
    body = _json_object(answer.content) if answer.status_code == 400 else None
    return body is not None and body.get("error") == message


def _user_management_body(answer: httpx.Response) -> dict[str, object]:
    """A 200 answer's JSON object; else raise ``OAuthError`` or ``TokenUnavailable``."""
    status, body = answer.status_code, _json_object(answer.content)
    if status == 200 and body is not None:
        return body
    message = body.get("error") if body is not None else None
    description = message[:_MAX_DESCRIPTION] if isinstance(message, str) else ""
    if body is None or _retry_later(status) or status < 400:
        reason = description or "the user-management API gave no usable answer"
        raise TokenUnavailable(_fallback(status), reason, status_code=status, body=body)
    error = "invalid_client" if status == 401 else "invalid_request"
    raise OAuthError(error, description, status_code=status, body=body)

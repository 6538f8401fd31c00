"""``ClientSecretAuth``: client credentials with a client secret, for httpx and requests.

    auth = ClientSecretAuth(token_url, client_id, client_secret, scope="system/*.rs")
    httpx.Client(auth=auth).get(url)  # also httpx.AsyncClient; requests.get(url, auth=auth)

The token request is RFC 6749 §4.4.2 (``grant_type=client_credentials``, ``scope`` if given).
The client authenticates as RFC 6749 §2.3.1 says, by ``method``:

- ``"basic"`` (``client_secret_basic``): ``Authorization: Basic base64(id ":" secret)``, where
  id and secret are each ``application/x-www-form-urlencoded`` first, so that a secret with
  ``:``, ``%``, ``+`` or non-ASCII characters arrives intact;
- ``"post"`` (``client_secret_post``): ``client_id`` and ``client_secret`` as form fields.

``expires_in`` is in seconds (RFC 6749 §5.1), except in the Pattern Health dialect, whose token
endpoint (``POST /api/auth/token``) answers it in *milliseconds* (``3600000`` for one hour).
``expires_in_unit`` says which: ``"s"``, ``"ms"``, or ``None`` (the default) for milliseconds if
the token URL's path ends in ``/api/auth/token`` and seconds otherwise. ``token_type`` must be
Bearer in any case (Pattern Health writes ``bearer``).

Caching (until 30 s before expiry), single flight and the one retry after a 401 work as
for ``PrivateKeyJWTAuth`` (``CachedTokenAuth`` in ``_base``).

Exceptions::

    ValueError               an unknown method or expires_in_unit, an empty id or secret
    OAuthError               the token endpoint refused: .error .description .status_code .body
    └── TokenUnavailable     5xx or 429, non-JSON or unusable answer, unreachable endpoint;
                             retry later
"""

from __future__ import annotations

import base64
from typing import Literal
from urllib.parse import quote_plus

import httpx

from fhirgate.client._base import CachedTokenAuth

__all__ = ["PATTERN_HEALTH_TOKEN_PATH", "ClientSecretAuth", "basic_authorization"]

PATTERN_HEALTH_TOKEN_PATH = "/api/auth/token"  # noqa: S105 (a path; expires_in in milliseconds)

SecretMethod = Literal["basic", "post"]
ExpiresInUnit = Literal["s", "ms"]


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` value of RFC 6749 §2.3.1: each part form-urlencoded (UTF-8), then
    joined by ``:`` and base64-encoded as RFC 7617 Basic credentials."""
    joined = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(joined.encode("ascii")).decode("ascii")


class ClientSecretAuth(CachedTokenAuth):
    """Bearer tokens from a client-credentials grant with ``client_secret_basic`` or
    ``client_secret_post`` (RFC 6749 §2.3.1, §4.4)."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        method: SecretMethod = "basic",
        scope: str | None = None,
        *,
        expires_in_unit: ExpiresInUnit | None = None,
    ) -> None:
        if method not in ("basic", "post"):
            raise ValueError("method must be 'basic' or 'post'")
        if expires_in_unit not in ("s", "ms", None):
            raise ValueError("expires_in_unit must be 's', 'ms' or None")
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret are required")
        if expires_in_unit is None:
            path = httpx.URL(token_url).path.rstrip("/")
            expires_in_unit = "ms" if path.endswith(PATTERN_HEALTH_TOKEN_PATH) else "s"
        self.token_url, self.client_id, self.scope = token_url, client_id, scope
        self.method: SecretMethod = method
        self.expires_in_unit: ExpiresInUnit = expires_in_unit
        self._expires_in_scale = 0.001 if expires_in_unit == "ms" else 1.0
        self._secret = client_secret
        super().__init__()

    def __repr__(self) -> str:
        return (
            f"ClientSecretAuth(token_url={self.token_url!r}, client_id={self.client_id!r}, "
            f"method={self.method!r}, scope={self.scope!r}, "
            f"expires_in_unit={self.expires_in_unit!r})"
        )

    def _token_request(self) -> httpx.Request:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        headers = {"Accept": "application/json"}
        if self.method == "basic":
            headers["Authorization"] = basic_authorization(self.client_id, self._secret)
        else:
            form |= {"client_id": self.client_id, "client_secret": self._secret}
        return httpx.Request("POST", self.token_url, data=form, headers=headers)

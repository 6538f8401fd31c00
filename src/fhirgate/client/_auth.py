"""``PrivateKeyJWTAuth``: SMART Backend Services client credentials for httpx and requests.

    auth = PrivateKeyJWTAuth(token_url, client_id, "key.pem", kid="k1", scope="system/*.rs")
    httpx.Client(auth=auth).get(url)  # also httpx.AsyncClient; requests.get(url, auth=auth)

The token is cached until 30 s before its ``expires_in`` runs out; one fetch runs at a time; a
401 from the API drops that token, fetches a fresh one and resends once; a second 401 is
returned (``CachedTokenAuth`` in ``_base``, shared by every SDK auth, explains how, and what the
token exchange looks like to httpx).

Exceptions::

    ValueError               unusable key, kid or alg (raised when the auth is built)
    OAuthError               the token endpoint refused: .error .description .status_code .body
    └── TokenUnavailable     5xx or 429, non-JSON or unusable answer, unreachable endpoint;
                             retry later
"""

from __future__ import annotations

import httpx

from fhirgate.client._assertion import (
    KeyInput,
    build_client_assertion,
    check_signer,
    load_private_key,
    token_form,
)
from fhirgate.client._base import REFRESH_MARGIN, CachedTokenAuth

__all__ = ["REFRESH_MARGIN", "PrivateKeyJWTAuth"]


class PrivateKeyJWTAuth(CachedTokenAuth):
    """Bearer tokens from a ``private_key_jwt`` client-credentials grant (RFC 7523 §2.2)."""

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
        super().__init__()

    def __repr__(self) -> str:
        return (
            f"PrivateKeyJWTAuth(token_url={self.token_url!r}, client_id={self.client_id!r}, "
            f"kid={self.kid!r}, alg={self.alg!r}, scope={self.scope!r})"
        )

    def _token_request(self) -> httpx.Request:
        assertion = build_client_assertion(
            client_id=self.client_id, token_url=self.token_url, private_key=self._key,
            kid=self.kid, alg=self.alg,
        )  # fmt: skip
        return httpx.Request("POST", self.token_url, data=token_form(assertion, self.scope),
                             headers={"Accept": "application/json"})  # fmt: skip

"""OpenID Connect id_tokens for application users (OpenID Connect Core 1.0 §2, §3.1.3.6).

Signed RS256 (OIDC Core §15.1 makes it the one algorithm every party must support; SMART App
Launch requires it) with the keyring's RS256 key, published in the JWK Set under its ``kid``.
Claims: ``iss``, ``sub`` (the ``oneup_user_id`` as a string), ``aud`` (the application's client
id), ``iat``, ``exp`` and ``auth_time`` (when the user's authorization code was issued: the
moment the application vouched for the user).
"""

from __future__ import annotations

import time

from fhirgate.domain.tokens import UserGrant
from fhirgate.oauth.keys import ID_TOKEN_ALG, Keyring, KeySigner

__all__ = ["IdTokenIssuer"]


class IdTokenIssuer:
    """Signs id_tokens for the user of a grant."""

    def __init__(self, keyring: Keyring, issuer: str, ttl: int) -> None:
        self._signer = KeySigner(keyring, ID_TOKEN_ALG, "JWT")
        self._issuer = issuer
        self._ttl = ttl

    def issue(self, grant: UserGrant) -> str:
        now = int(time.time())
        return self._signer.sign(
            {
                "iss": self._issuer,
                "sub": str(grant.oneup_user_id),
                "aud": grant.client_id,
                "iat": now,
                "exp": now + min(self._ttl, grant.expires_at - now),
                "auth_time": grant.auth_time,
            }
        )

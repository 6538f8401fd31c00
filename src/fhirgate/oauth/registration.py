"""Validation of what a client registers: its keys (a JWK Set, a PEM public key or a JWKS URL)
and its allowed scope. Shared by the CLI and, later, the dashboard and the Platform API.

SMART client-confidential-asymmetric §registering-a-client: each JWK has ``kty`` and ``kid``;
keys are public only. A kid left out of a PEM registration is the key's RFC 7638 thumbprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from fhirgate.config import MAX_TOKEN_LIFETIME
from fhirgate.domain.clients import AuthMethod
from fhirgate.oauth.jose import b64url_encode, jwk_from_public_key
from fhirgate.oauth.keyset import JWKSetError, validate_jwks
from fhirgate.oauth.scopes import ScopeError, parse_scopes

__all__ = [
    "DEFAULT_SCOPE",
    "ClientKeys",
    "RegistrationError",
    "jwk_thumbprint",
    "keys_from_pem",
    "validate_keys",
    "validate_scope",
    "validate_token_lifetime",
]

#: Least privilege by default: read and search every resource type as a system.
DEFAULT_SCOPE = "system/*.rs"
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}


class RegistrationError(ValueError):
    """A registration value is invalid; the message says which and why."""


@dataclass(frozen=True, slots=True)
class ClientKeys:
    jwks: dict[str, Any] | None
    jwks_url: str | None


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 §3 JWK thumbprint (SHA-256, base64url)."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


def keys_from_pem(pem: bytes, kid: str | None = None) -> dict[str, Any]:
    """A one-key JWK Set from a PEM public key."""
    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise RegistrationError("the file is not a PEM public key") from exc
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise RegistrationError("only RSA and EC public keys are supported")
    jwk = jwk_from_public_key(key, kid="")
    jwk["kid"] = kid or jwk_thumbprint(jwk)
    return {"keys": [jwk]}


def _check_jwks_url(url: str, allow_insecure: bool) -> str:
    parts = urlsplit(url)
    schemes = {"https", "http"} if allow_insecure else {"https"}
    if parts.scheme not in schemes or not parts.hostname:
        raise RegistrationError("the JWKS URL must be an absolute https:// URL")
    if parts.username or parts.password or parts.fragment:
        raise RegistrationError("the JWKS URL must not carry credentials or a fragment")
    return url


def validate_keys(
    jwks: dict[str, Any] | None, jwks_url: str | None, *, allow_insecure: bool = False
) -> ClientKeys:
    """Keys for a private_key_jwt client: a valid JWK Set and/or a JWKS URL, at least one."""
    if jwks is None and not jwks_url:
        raise RegistrationError("a private_key_jwt client needs a JWK Set or a JWKS URL")
    if jwks is not None:
        try:
            validate_jwks(jwks)
        except JWKSetError as exc:
            raise RegistrationError(f"invalid JWK Set: {exc}") from exc
        jwks = {"keys": [dict(jwk) for jwk in jwks["keys"]]}
    return ClientKeys(jwks, _check_jwks_url(jwks_url, allow_insecure) if jwks_url else None)


def validate_scope(scope: str | None) -> str:
    """The allowed scope of a client, normalised; ``DEFAULT_SCOPE`` when not given."""
    try:
        return str(parse_scopes(scope if scope is not None else DEFAULT_SCOPE))
    except ScopeError as exc:
        raise RegistrationError(f"invalid scope: {exc}") from exc


#: SMART Backend Services: access tokens of asymmetric clients live at most five minutes.
MAX_ASYMMETRIC_LIFETIME = 300


def validate_token_lifetime(auth_method: str, lifetime: int | None) -> int | None:
    """A client's own access-token lifetime in seconds, if it has one."""
    if lifetime is None:
        return None
    limit = (
        MAX_ASYMMETRIC_LIFETIME if auth_method == AuthMethod.PRIVATE_KEY_JWT else MAX_TOKEN_LIFETIME
    )
    if not 1 <= lifetime <= limit:
        raise RegistrationError(f"the token lifetime of a {auth_method} client is 1-{limit} s")
    return lifetime

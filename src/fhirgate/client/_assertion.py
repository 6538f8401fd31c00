"""Private keys and ``private_key_jwt`` client assertions (RFC 7523 §2.2, SMART Backend Services).

Keys are loaded from PEM text or bytes (PKCS#8 or traditional), a PEM file's path, a private JWK
(as a mapping or JSON text) or an already-loaded ``cryptography`` key; unencrypted RSA or EC only.
Error messages never quote the input: it may be key material.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhirgate.client._jws import PrivateKey, b64url_decode, key_fits_alg, sign_compact

__all__ = [
    "JWT_BEARER",
    "MAX_LIFETIME",
    "SIGNING_ALGORITHMS",
    "build_client_assertion",
    "check_signer",
    "load_private_key",
    "token_form",
]

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_LIFETIME = 300  # SMART Backend Services: exp no more than five minutes after iat
SIGNING_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                "ES256", "ES384", "ES512"})  # fmt: skip
_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}

KeyInput = str | bytes | PrivateKey | Mapping[str, Any]


def load_private_key(value: KeyInput) -> PrivateKey:
    """An RSA or EC private key from PEM, a PEM file path, a private JWK or a loaded key."""
    if isinstance(value, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return value
    if isinstance(value, Mapping):
        return _from_jwk(value)
    if isinstance(value, str):
        if value.lstrip().startswith("{"):
            return _from_jwk(_json_jwk(value))
        value = _pem_text_or_file(value)
    if isinstance(value, bytes):
        return _from_pem(value)
    raise ValueError(f"unsupported private key value of type {type(value).__name__}")


def _json_jwk(text: str) -> Mapping[str, Any]:
    try:
        jwk = json.loads(text)
    except ValueError:
        raise ValueError("private key text looks like JSON but is not valid JSON") from None
    if not isinstance(jwk, dict):
        raise ValueError("a JWK must be a JSON object")
    return jwk


def _pem_text_or_file(text: str) -> bytes:
    if "-----BEGIN" in text:
        return text.encode("ascii", "replace")
    if len(text) < 4096 and os.path.isfile(text):
        return Path(text).read_bytes()
    raise ValueError("private key is neither PEM text nor the path of an existing file")


def _from_pem(data: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError("encrypted private keys are not supported; decrypt it first") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not an unencrypted PEM private key (PKCS#8 or traditional)") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"only RSA and EC keys are supported, not {type(key).__name__}")
    return key


def _int(jwk: Mapping[str, Any], name: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"private JWK member {name!r} is missing")
    try:
        return int.from_bytes(b64url_decode(value), "big")
    except ValueError:
        raise ValueError(f"private JWK member {name!r} is not base64url") from None


def _from_jwk(jwk: Mapping[str, Any]) -> PrivateKey:
    kty = jwk.get("kty")
    if kty not in ("RSA", "EC"):
        raise ValueError("JWK kty must be RSA or EC")
    if "d" not in jwk:
        raise ValueError("the JWK has no private member 'd' (is it a public key?)")
    try:
        if kty == "RSA":
            if "oth" in jwk:
                raise ValueError("multi-prime RSA JWKs are not supported")
            public = rsa.RSAPublicNumbers(_int(jwk, "e"), _int(jwk, "n"))
            return rsa.RSAPrivateNumbers(
                _int(jwk, "p"), _int(jwk, "q"), _int(jwk, "d"), _int(jwk, "dp"),
                _int(jwk, "dq"), _int(jwk, "qi"), public,
            ).private_key()  # fmt: skip
        curve = _CURVES.get(str(jwk.get("crv")))
        if curve is None:
            raise ValueError("JWK crv must be P-256, P-384 or P-521")
        point = ec.EllipticCurvePublicNumbers(_int(jwk, "x"), _int(jwk, "y"), curve())
        return ec.EllipticCurvePrivateNumbers(_int(jwk, "d"), point).private_key()
    except ValueError as exc:
        raise ValueError(f"invalid private {kty} JWK: {exc}") from None


def check_signer(key: PrivateKey, alg: str, kid: str) -> None:
    """Raise ``ValueError`` without a ``kid`` or unless ``key`` can sign the known ``alg``."""
    if not kid:
        raise ValueError("kid is required")
    if alg not in SIGNING_ALGORITHMS:
        raise ValueError(f"alg must be one of {', '.join(sorted(SIGNING_ALGORITHMS))}")
    if not key_fits_alg(key, alg):
        raise ValueError(f"a {type(key).__name__} (or its curve) cannot sign {alg}")


def build_client_assertion(
    *,
    client_id: str,
    token_url: str,
    private_key: PrivateKey,
    kid: str,
    alg: str = "RS384",
    lifetime: int = MAX_LIFETIME,
) -> str:
    """A signed assertion: ``iss`` = ``sub`` = client id, ``aud`` = token URL, fresh ``jti``.

    ``lifetime`` (seconds until ``exp``) is clamped to at most 300.
    """
    if lifetime < 1:
        raise ValueError("lifetime must be at least one second")
    check_signer(private_key, alg, kid)
    now = int(time.time())
    header = {"alg": alg, "kid": kid, "typ": "JWT"}
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": now,
        "exp": now + min(lifetime, MAX_LIFETIME),
        "jti": secrets.token_urlsafe(24),
    }
    return sign_compact(header, claims, private_key)


def token_form(assertion: str, scope: str | None) -> dict[str, str]:
    """The token request's form: RFC 6749 §4.4.2 with RFC 7523 §2.2 client authentication."""
    form = {"grant_type": "client_credentials", "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion}  # fmt: skip
    if scope:
        form["scope"] = scope
    return form

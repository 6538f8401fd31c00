"""Compact JWS signing (RFC 7515 §7.1) for the SDK's client assertions, with ``cryptography``.

Only the signing side, and only RSA (RS*/PS*, RFC 7518 §3.3 and §3.5) and ECDSA (ES*, RFC 7518
§3.4) with a caller-chosen ``alg``; the SDK imports nothing of the server, so this is not
``fhirgate.oauth.jose``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["PrivateKey", "b64url_decode", "key_fits_alg", "sign_compact"]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_CURVE_FOR_ALG = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded base64url (RFC 7515 §2); raise ``ValueError`` for anything else."""
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("segment is not unpadded base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def key_fits_alg(key: PrivateKey, alg: str) -> bool:
    """Whether ``key`` can sign ``alg`` (RSA for RS*/PS*, the alg's own curve for ES*)."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPrivateKey)
    if alg in _CURVE_FOR_ALG and isinstance(key, ec.EllipticCurvePrivateKey):
        return key.curve.name == _CURVE_FOR_ALG[alg]
    return False


def _sign(alg: str, key: PrivateKey, data: bytes) -> bytes:
    digest = _HASHES[alg[2:]]()
    if isinstance(key, rsa.RSAPrivateKey):
        pad: padding.AsymmetricPadding = (
            padding.PKCS1v15()
            if alg.startswith("RS")
            else padding.PSS(mgf=padding.MGF1(_HASHES[alg[2:]]()),
                             salt_length=padding.PSS.DIGEST_LENGTH)
        )  # fmt: skip
        return key.sign(data, pad, digest)
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest)))  # DER to r || s (RFC 7518 §3.4)
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def sign_compact(header: Mapping[str, Any], claims: Mapping[str, Any], key: PrivateKey) -> str:
    """A compact JWS; ``header['alg']`` picks the algorithm and must fit ``key``."""
    alg = str(header["alg"])
    if not key_fits_alg(key, alg):
        raise ValueError(f"key does not fit {alg}")
    signed = (
        b64url_encode(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url_encode(orjson.dumps(claims))  # compact UTF-8 JSON
    )
    return f"{signed}.{b64url_encode(_sign(alg, key, signed.encode('ascii')))}"

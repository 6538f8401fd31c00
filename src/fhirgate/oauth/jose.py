"""Compact JWS (RFC 7515 §7.1) parsing, signing and verification, and JWK import (RFC 7517).

Only what an authorization server needs, and strict about it: exactly three segments, unpadded
base64url from the URL-safe alphabet, JSON objects without duplicate members (RFC 8725 §2.6),
an explicit algorithm chosen by the caller's allow-list (RFC 8725 §3.1), never ``none`` or HMAC.
Keys come only from the caller: header parameters such as ``jwk``, ``x5c`` and ``x5u`` are never
looked at here (RFC 8725 §3.10).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "CompactSigner",
    "JWSError",
    "ParsedJWS",
    "PrivateKey",
    "PublicKey",
    "b64url_decode",
    "b64url_encode",
    "jwk_from_public_key",
    "key_fits_alg",
    "parse_compact",
    "public_key_from_jwk",
    "sign_compact",
    "verify_signature",
]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}
_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_CURVE_NAMES = {"P-256": "secp256r1", "P-384": "secp384r1", "P-521": "secp521r1"}
#: Per-alg hash, padding and ECDSA objects, built once (they are immutable).
_HASH: dict[str, hashes.HashAlgorithm] = {
    f"{family}{bits}": _HASHES[bits]() for family in ("RS", "PS", "ES") for bits in _HASHES
}
_RSA_PADDING: dict[str, padding.AsymmetricPadding] = {
    **{f"RS{bits}": padding.PKCS1v15() for bits in _HASHES},
    **{
        f"PS{bits}": padding.PSS(
            mgf=padding.MGF1(_HASHES[bits]()), salt_length=padding.PSS.DIGEST_LENGTH
        )
        for bits in _HASHES
    },
}
_ECDSA = {f"ES{bits}": ec.ECDSA(_HASHES[bits]()) for bits in _HASHES}
MIN_RSA_BITS = 2048


class JWSError(ValueError):
    """The input is not a well-formed compact JWS, or a key is unusable."""


@dataclass(frozen=True, slots=True)
class ParsedJWS:
    """A compact JWS split into its parts; nothing about it is trusted yet."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded base64url (RFC 7515 §2); anything else is an error."""
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise JWSError("segment is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex already guards
        raise JWSError("segment is not base64url") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JWSError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise JWSError(f"{name} is not a JSON number (RFC 8259 §6)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JWSError(f"number {text[:32]!r} is out of range (RFC 8259 §6)")
    return value


def _json_object(segment: str, what: str) -> dict[str, Any]:
    """A segment's JSON object (RFC 7515 §5.2 steps 2-4). Every way its text can fail — not
    UTF-8, not JSON, nested too deep, an integer beyond Python's 4,300-digit conversion limit,
    ``NaN``, ``Infinity``, a number too large for a float (``1e999``) — is a
    :class:`JWSError`, never another exception."""
    raw = b64url_decode(segment)
    try:
        value = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite,
        )
    except JWSError:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError among them
        raise JWSError(f"{what} is not JSON") from exc
    if not isinstance(value, dict):
        raise JWSError(f"{what} is not a JSON object")
    return value


def parse_compact(token: str) -> ParsedJWS:
    """Split a compact JWS and decode its header and claims (RFC 7515 §5.2 steps 1-7)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JWSError("a compact JWS has exactly three segments")
    header_b64, claims_b64, signature_b64 = parts
    header = _json_object(header_b64, "header")
    claims = _json_object(claims_b64, "payload")
    signature = b64url_decode(signature_b64)
    return ParsedJWS(header, claims, f"{header_b64}.{claims_b64}".encode("ascii"), signature)


def key_fits_alg(key: PublicKey, alg: str) -> bool:
    """Whether ``key`` can verify ``alg`` (RSA for RS*/PS*, the alg's own curve for ES*)."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _CURVE_FOR_ALG and isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.name == _CURVE_NAMES[_CURVE_FOR_ALG[alg]]
    return False


def verify_signature(alg: str, key: PublicKey, signing_input: bytes, signature: bytes) -> bool:
    """Verify a JWS signature (RFC 7518 §3.3-3.5) with a caller-chosen ``alg`` and key."""
    if alg not in _HASH or not key_fits_alg(key, alg):
        return False
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, _RSA_PADDING[alg], _HASH[alg])
            return True
        size = (key.curve.key_size + 7) // 8
        if len(signature) != 2 * size:
            return False
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        key.verify(encode_dss_signature(r, s), signing_input, _ECDSA[alg])
        return True
    except InvalidSignature:
        return False


def _sign(alg: str, key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, _RSA_PADDING[alg], _HASH[alg])
    r, s = decode_dss_signature(key.sign(data, _ECDSA[alg]))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


class CompactSigner:
    """Signs compact JWSs (RFC 7515 §7.1) with one key under one fixed protected header.

    The key is checked against ``header["alg"]`` and the header encoded once, not per token.
    """

    def __init__(self, header: Mapping[str, Any], key: PrivateKey) -> None:
        self._alg = str(header["alg"])
        if not key_fits_alg(key.public_key(), self._alg):
            raise JWSError(f"key does not fit {self._alg}")
        self._key = key
        self._prefix = b64url_encode(json.dumps(header, separators=(",", ":")).encode()) + "."

    def sign(self, claims: Mapping[str, Any]) -> str:
        signed = self._prefix + b64url_encode(orjson.dumps(claims))  # compact UTF-8 JSON
        signature = _sign(self._alg, self._key, signed.encode("ascii"))
        return f"{signed}.{b64url_encode(signature)}"


def sign_compact(header: Mapping[str, Any], claims: Mapping[str, Any], key: PrivateKey) -> str:
    """Produce a compact JWS; ``header['alg']`` picks the algorithm and must fit ``key``."""
    return CompactSigner(header, key).sign(claims)


def _b64_int(jwk: Mapping[str, Any], member: str) -> int:
    value = jwk.get(member)
    if not isinstance(value, str) or not value:
        raise JWSError(f"JWK member {member!r} is missing")
    return int.from_bytes(b64url_decode(value), "big")


_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    """Import a public RSA or EC JWK (RFC 7518 §6.2-6.3), refusing private and weak keys."""
    if _PRIVATE_MEMBERS & jwk.keys():
        raise JWSError("JWK contains private key material")
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            rsa_key = rsa.RSAPublicNumbers(_b64_int(jwk, "e"), _b64_int(jwk, "n")).public_key()
            if rsa_key.key_size < MIN_RSA_BITS:
                raise JWSError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
            return rsa_key
        if kty == "EC":
            curve = _CURVES.get(str(jwk.get("crv")))
            if curve is None:
                raise JWSError("unsupported EC curve")
            # cryptography checks that the point lies on the curve (RFC 8725 §3.4).
            numbers = ec.EllipticCurvePublicNumbers(_b64_int(jwk, "x"), _b64_int(jwk, "y"), curve())
            return numbers.public_key()
    except ValueError as exc:
        if isinstance(exc, JWSError):
            raise
        raise JWSError(f"invalid {kty} key: {exc}") from exc
    raise JWSError("JWK kty must be RSA or EC")


def _int_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(size, "big"))


def jwk_from_public_key(key: PublicKey, kid: str, alg: str | None = None) -> dict[str, str]:
    """Export a public key as a bare JWK (SMART client-confidential-asymmetric §registration)."""
    jwk: dict[str, str]
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        jwk = {"kty": "RSA", "n": _int_b64(nums.n), "e": _int_b64(nums.e)}
    else:
        pub = key.public_numbers()
        size = (key.curve.key_size + 7) // 8
        crv = next(crv for crv, name in _CURVE_NAMES.items() if name == key.curve.name)
        jwk = {"kty": "EC", "crv": crv, "x": _int_b64(pub.x, size), "y": _int_b64(pub.y, size)}
    jwk["kid"] = kid
    if alg:
        jwk["alg"] = alg
    return jwk

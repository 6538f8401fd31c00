"""A client's public keys: a JWK Set (RFC 7517 §5) reduced to the keys fhirgate can use."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fhirgate.oauth.jose import JWSError, PublicKey, key_fits_alg, public_key_from_jwk

__all__ = ["ClientKey", "JWKSetError", "match_key", "parse_jwks", "validate_jwks"]


class JWKSetError(ValueError):
    """A JWK Set document is malformed (not ``{"keys": [...]}``) or holds an unusable key."""


@dataclass(frozen=True, slots=True)
class ClientKey:
    """One usable public key of a client, with the ``kid`` it is selected by."""

    kid: str
    key: PublicKey


def _keys_member(document: object) -> list[Any]:
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JWKSetError('a JWK Set is a JSON object with a "keys" array')
    return list(document["keys"])


def _client_key(jwk: object) -> ClientKey:
    if not isinstance(jwk, Mapping):
        raise JWKSetError("each key must be a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JWKSetError("each key needs a kid (SMART client-confidential-asymmetric)")
    try:
        return ClientKey(kid, public_key_from_jwk(jwk))
    except JWSError as exc:
        raise JWKSetError(f"key {kid!r}: {exc}") from exc


def parse_jwks(document: object) -> tuple[ClientKey, ...]:
    """The usable keys of a fetched JWK Set; keys fhirgate cannot use are skipped."""
    usable = []
    for jwk in _keys_member(document):
        try:
            usable.append(_client_key(jwk))
        except JWKSetError:
            continue
    return tuple(usable)


def validate_jwks(document: object) -> tuple[ClientKey, ...]:
    """Strictly validate a JWK Set given at registration: every key must be usable."""
    keys = tuple(_client_key(jwk) for jwk in _keys_member(document))
    kids = [k.kid for k in keys]
    if len(set(kids)) != len(kids):
        raise JWKSetError("kid values must be unique within the JWK Set")
    return keys


def match_key(keys: Iterable[ClientKey], kid: str, alg: str) -> PublicKey | None:
    """The single key whose ``kid`` matches and whose type fits ``alg``; else ``None``.

    SMART client-confidential-asymmetric §signature-verification step 3: no match, or more than
    one, fails verification.
    """
    found = [k.key for k in keys if k.kid == kid and key_fits_alg(k.key, alg)]
    return found[0] if len(found) == 1 else None

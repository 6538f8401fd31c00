"""Client-assertion rules (RFC 7523 §3, SMART client-confidential-asymmetric), one named check each.

Every check raises :class:`InvalidClient` with its ``check`` name and, where a claim or header
member is missing or malformed, that ``claim``. Checks that run before the signature is verified
and that could reveal whether a client exists share one generic description.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhirgate.oauth.errors import InvalidClient
from fhirgate.oauth.jose import JWSError, ParsedJWS, parse_compact

__all__ = [
    "AssertionRules",
    "ValidatedClaims",
    "check_claims",
    "check_header",
    "check_subject",
    "parse_assertion",
]

MAX_JTI_CHARS = 255


@dataclass(frozen=True, slots=True)
class AssertionRules:
    """What an endpoint accepts. The Redox dialect relaxes ``exp`` and adds an ``iat`` window."""

    audiences: frozenset[str]
    algorithms: frozenset[str]
    leeway: int
    max_chars: int
    max_lifetime: int = 300
    require_exp: bool = True
    iat_max_age: int | None = None
    iat_skew: int = 10


@dataclass(frozen=True, slots=True)
class ValidatedClaims:
    jti: str
    expires_at: int


def _claim_error(claim: str, detail: str) -> InvalidClient:
    return InvalidClient(
        f"the assertion's {claim} is missing or malformed",
        claim=claim,
        check=f"claim_{claim}",
        detail=detail,
    )


def parse_assertion(assertion: str, rules: AssertionRules) -> ParsedJWS:
    """check ``assertion_size`` and ``assertion_malformed`` (RFC 7515 §7.1, RFC 8725 §2.6)."""
    if len(assertion) > rules.max_chars:
        raise InvalidClient("client_assertion is too large", check="assertion_size")
    try:
        return parse_compact(assertion)
    except JWSError as exc:
        raise InvalidClient(
            "client_assertion is not a well-formed compact JWS",
            check="assertion_malformed",
            detail=str(exc),
        ) from exc


def check_header(header: Mapping[str, Any], rules: AssertionRules) -> tuple[str, str]:
    """Checks ``alg``, ``kid``, ``typ``, ``crit`` and ``jku`` type; returns ``(alg, kid)``."""
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise _claim_error("alg", "alg missing")
    if alg not in rules.algorithms:
        allowed = ", ".join(sorted(rules.algorithms))
        raise InvalidClient(
            f"alg must be one of {allowed}",
            check="alg_not_allowed",
            detail=f"alg {alg!r} not allowed",
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidClient("the assertion header must carry a kid", check="kid_required")
    if "typ" in header and header["typ"] != "JWT":
        raise _claim_error("typ", f"typ {header['typ']!r}")
    if "crit" in header:
        raise _claim_error("crit", "crit header parameters are not supported")
    if "jku" in header and not isinstance(header["jku"], str):
        raise _claim_error("jku", "jku is not a string")
    return alg, kid


def check_subject(claims: Mapping[str, Any], form_client_id: str | None) -> str:
    """``iss`` = ``sub`` = client id, and a form ``client_id`` must agree (RFC 7521 §4.2)."""
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise _claim_error("iss", "iss missing")
    if claims.get("sub") != iss:
        raise _claim_error("sub", "sub differs from iss")
    if form_client_id is not None and form_client_id != iss:
        raise InvalidClient(
            check="client_id_mismatch", claim="iss", detail="form client_id differs from iss"
        )
    return iss


def _number(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _claim_error(name, f"{name} is not a number")
    return int(value)


def _check_audience(claims: Mapping[str, Any], rules: AssertionRules) -> None:
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    if aud is None:
        raise _claim_error("aud", "aud missing")
    if not isinstance(aud, str) or aud not in rules.audiences:
        raise InvalidClient(
            "aud must be this server's token endpoint URL or issuer",
            check="aud_mismatch",
            detail=f"aud {aud!r}",
        )


def _check_iat(iat: int | None, now: int, rules: AssertionRules) -> None:
    if rules.iat_max_age is not None:  # Redox: iat within the past 5 minutes, 10 s skew
        if iat is None:
            raise _claim_error("iat", "iat missing")
        if not now - rules.iat_max_age - rules.iat_skew <= iat <= now + rules.iat_skew:
            raise InvalidClient("iat is outside the accepted window", check="iat_window")
    elif iat is not None and iat > now + rules.leeway:
        raise InvalidClient("iat is in the future", check="iat_future")


def _expiry(exp: int | None, iat: int | None, now: int, rules: AssertionRules) -> int:
    if exp is None:
        if rules.require_exp or iat is None:
            raise _claim_error("exp", "exp missing")
        return iat + rules.max_lifetime  # Redox: no exp, fresh iat
    if exp <= now - rules.leeway:
        raise InvalidClient("the assertion has expired", check="expired", claim="exp")
    if exp > now + rules.max_lifetime + rules.leeway:
        raise InvalidClient(
            f"exp may be at most {rules.max_lifetime} seconds in the future",
            check="exp_too_far",
            claim="exp",
        )
    return exp


def _check_jti(claims: Mapping[str, Any]) -> str:
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
        raise _claim_error("jti", "jti missing, empty or longer than 255 characters")
    return jti


def check_claims(claims: Mapping[str, Any], rules: AssertionRules) -> ValidatedClaims:
    """Checks run after the signature: ``aud``, ``exp``, ``nbf``, ``iat`` and ``jti``."""
    now = int(time.time())
    _check_audience(claims, rules)
    exp, nbf, iat = (_number(claims, name) for name in ("exp", "nbf", "iat"))
    _check_iat(iat, now, rules)
    expires_at = _expiry(exp, iat, now, rules)
    if nbf is not None and nbf > now + rules.leeway:
        raise InvalidClient("the assertion is not yet valid", check="not_yet_valid", claim="nbf")
    return ValidatedClaims(_check_jti(claims), expires_at)

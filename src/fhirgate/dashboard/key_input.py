"""What people give when they manage API keys — names, public keys (PEM, JWK, JWK Set), JWKS
URLs — checked and normalised, with messages fit to show them (the dashboard and the Platform
API use the same rules through :mod:`fhirgate.dashboard.api_keys`).

Keys are public only (RFC 7517 §4; SMART client-confidential-asymmetric
§registering-a-client): a private member (RFC 7518 §6.2.2, §6.3.2, §6.4) or a PEM private key
is refused, naming what was wrong. A kid left out is the key's RFC 7638 thumbprint.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from fhirgate.domain.clients import AuthMethod
from fhirgate.oauth.jose import JWSError, jwk_from_public_key, public_key_from_jwk
from fhirgate.oauth.jwks import JWKSFetchError
from fhirgate.oauth.registration import (
    DEFAULT_SCOPE,
    RegistrationError,
    jwk_thumbprint,
    keys_from_pem,
    validate_keys,
    validate_scope,
)

__all__ = [
    "MAX_KEYS",
    "MAX_NAME",
    "PLATFORM_SCOPE",
    "PRIVATE_JWK_MEMBERS",
    "KeyChangeError",
    "checked_auth_method",
    "checked_jwks_url",
    "checked_set",
    "clean_kid",
    "clean_name",
    "environment_scope",
    "fetch_problem",
    "keys_from_text",
    "public_jwk",
    "public_jwks",
    "url_detail",
]

#: The scope of user-level keys: the Platform API and nothing else (no FHIR access).
PLATFORM_SCOPE: Final = "platform"
#: RFC 7518 §6.2.2, §6.3.2, §6.4: members that only a private or symmetric key has.
PRIVATE_JWK_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
MAX_NAME = 100
MAX_KEYS = 20
MAX_KID = 200
MAX_URL = 2048  # clients.jwks_url
MAX_KEY_TEXT = 20_000
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class KeyChangeError(ValueError):
    """A value a person gave is not acceptable; the message says why, fit to show them.
    ``field`` names the input at fault (``name``, ``auth_method``, ``scope``, ``jwk_set``,
    ``jwks_url``, ``public_key``, ``kid``) when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def clean_name(name: object) -> str:
    """A key's name: stripped, 1-100 characters, no control characters (line breaks, bidi
    overrides: they would garble lists and logs)."""
    if not isinstance(name, str):
        raise KeyChangeError("the name must be text", "name")
    cleaned = name.strip()
    if not cleaned:
        raise KeyChangeError("the name must not be empty", "name")
    if len(cleaned) > MAX_NAME:
        raise KeyChangeError(f"the name has at most {MAX_NAME} characters", "name")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI for c in cleaned):
        raise KeyChangeError("the name must not contain control characters", "name")
    return cleaned


def clean_kid(kid: object, where: str = "kid") -> str:
    """A key id (RFC 7517 §4.5): 1-200 characters, no spaces or control characters (it is
    shown, and matched against the ``kid`` of an assertion's header)."""
    if not isinstance(kid, str) or not kid.strip():
        raise KeyChangeError("a key's kid must be non-empty text", where)
    if len(kid) > MAX_KID or any(unicodedata.category(c).startswith(("C", "Z")) for c in kid):
        raise KeyChangeError(
            f"a kid has at most {MAX_KID} characters, without spaces or control characters", where
        )
    return kid


def public_jwk(jwk: object, kid: str | None = None, where: str = "public_key") -> dict[str, Any]:
    """One public JWK (RFC 7517 §4) as it will be stored; its kid is ``kid``, else its own,
    else its RFC 7638 thumbprint."""
    if not isinstance(jwk, Mapping):
        raise KeyChangeError("each key must be a JSON object (a JWK)", where)
    private = sorted(PRIVATE_JWK_MEMBERS & jwk.keys())
    if private:
        raise KeyChangeError(
            f"this JWK holds private key material ({', '.join(private)}): "
            "register the public key only, and keep the private key to yourself",
            where,
        )
    if not isinstance(jwk.get("kty"), str) or not jwk["kty"]:
        raise KeyChangeError("a JWK needs its kty (RSA or EC)", where)
    try:
        key = public_key_from_jwk(jwk)
    except JWSError as exc:
        raise KeyChangeError(f"unusable public key: {exc}", where) from None
    chosen = kid if kid is not None else jwk.get("kid")
    if chosen is None:
        chosen = jwk_thumbprint(jwk_from_public_key(key, kid=""))
    return {**jwk, "kid": clean_kid(chosen, where)}


def public_jwks(document: object, where: str = "jwk_set") -> dict[str, Any]:
    """A whole JWK Set given at once (the Platform API): every key public and usable, each with
    its own unique kid (SMART client-confidential-asymmetric)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise KeyChangeError('a JWK Set is a JSON object with a "keys" array', where)
    keys = []
    for jwk in document["keys"]:
        if isinstance(jwk, Mapping) and "kid" not in jwk:
            raise KeyChangeError("each key of a JWK Set needs its kid", where)
        keys.append(public_jwk(jwk, where=where))
    return checked_set(keys, where)


def checked_set(keys: list[dict[str, Any]], where: str) -> dict[str, Any]:
    """The JWK Set of these keys, if their kids are unique and there are not too many."""
    kids = [jwk["kid"] for jwk in keys]
    duplicate = next((kid for kid in kids if kids.count(kid) > 1), None)
    if duplicate is not None:
        raise KeyChangeError(f"a key with kid {duplicate!r} is already registered", where)
    if len(keys) > MAX_KEYS:
        raise KeyChangeError(f"an API key holds at most {MAX_KEYS} public keys", where)
    return {"keys": keys}


def keys_from_text(text: str, kid: str | None) -> list[dict[str, Any]]:
    """The public key(s) a person pasted: a PEM public key, a JWK, or a JWK Set (JSON)."""
    text = text.strip()
    if not text:
        raise KeyChangeError("paste a PEM public key or a JWK", "public_key")
    if len(text) > MAX_KEY_TEXT:
        raise KeyChangeError("that is too long for a public key", "public_key")
    if kid is not None:
        kid = clean_kid(kid.strip())
    if text.startswith("-----BEGIN"):
        if "PRIVATE KEY" in text.splitlines()[0]:
            raise KeyChangeError(
                "that is a private key: register its public key only "
                "(openssl pkey -in key.pem -pubout)",
                "public_key",
            )
        try:
            jwk = keys_from_pem(text.encode(), kid)["keys"][0]
        except RegistrationError as exc:
            raise KeyChangeError(str(exc).replace("the file", "that"), "public_key") from None
        except StopIteration:  # an EC curve JOSE does not name
            raise KeyChangeError("unsupported EC curve", "public_key") from None
        return [public_jwk(jwk)]  # the checks a JWK gets (RSA size, curve)
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise KeyChangeError("that is neither a PEM public key nor a JWK", "public_key") from None
    if isinstance(document, dict) and isinstance(document.get("keys"), list):
        if kid is not None and len(document["keys"]) != 1:
            raise KeyChangeError("a kid can be given for one key only", "kid")
        return [public_jwk(jwk, kid) for jwk in document["keys"]]
    return [public_jwk(document, kid)]


def checked_auth_method(auth_method: str) -> AuthMethod:
    """One of the ``token_endpoint_auth_method`` values fhirgate knows (RFC 7591 §2)."""
    try:
        return AuthMethod(auth_method)
    except ValueError:
        names = ", ".join(m.value for m in AuthMethod)
        raise KeyChangeError(
            f"the authentication method is one of {names}", "auth_method"
        ) from None


def environment_scope(scope: str | None) -> str:
    """The allowed scope of an environment's key (SMART scopes; ``system/*.rs`` by default),
    never ``platform``, which is for user-level keys."""
    try:
        allowed = validate_scope(scope if scope is not None else DEFAULT_SCOPE)
    except RegistrationError as exc:
        raise KeyChangeError(str(exc), "scope") from None
    if PLATFORM_SCOPE in allowed.split(" "):
        raise KeyChangeError("the platform scope belongs to user-level API keys only", "scope")
    return allowed


def fetch_problem(exc: JWKSFetchError, timeout: float) -> str:
    """What a failed JWKS fetch means, for the person testing it (no internal addresses)."""
    text = str(exc)
    if text.startswith("host resolves to a non-public address"):
        text = "the host resolves to a private, loopback or reserved address, never fetched"
    elif text == "timed out":
        text = f"no complete answer within {timeout:g} s"
    elif text == "not a JWK Set":
        text = 'the document is not a JWK Set (a JSON object with a "keys" array)'
    elif text == "no usable keys":
        text = "the JWK Set holds no usable public key (RSA of 2048 bits or more, or EC, with kid)"
    return f"the JWKS URL could not be used: {text}"


def url_detail(url: str | None) -> str:
    """A JWKS URL in the audit log: its host only (a query may carry a signature)."""
    return f"host={urlsplit(url).hostname}" if url else "cleared"


def checked_jwks_url(url: str | None, allow_insecure: bool) -> str | None:
    """A JWKS URL to register (the registration rule: absolute ``https://``, or ``http`` too
    with ``allow_insecure_jwks``; no credentials or fragment), ``None`` for none."""
    if url is None or url == "":
        return None
    if not isinstance(url, str) or len(url) > MAX_URL:
        raise KeyChangeError(f"the JWKS URL has at most {MAX_URL} characters", "jwks_url")
    try:
        checked = validate_keys(None, url, allow_insecure=allow_insecure)
    except RegistrationError as exc:
        raise KeyChangeError(str(exc), "jwks_url") from None
    return checked.jwks_url

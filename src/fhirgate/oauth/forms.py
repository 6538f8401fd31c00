"""Form bodies of the OAuth endpoints (``application/x-www-form-urlencoded``, RFC 6749 §3.2,
WHATWG URL §5.1), read strictly: every field ``name=value``, no parameter repeated."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import unquote_plus

from fhirgate.oauth.errors import InvalidRequest

__all__ = ["FORM_CONTENT_TYPE", "KEEP_EMPTY_SCOPE", "parse_form"]

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
#: The token endpoints keep an empty ``scope=`` so that it can be told from no ``scope``.
KEEP_EMPTY_SCOPE = frozenset({"scope"})
_MAX_FIELDS = 64


@lru_cache(maxsize=1024)
def _unquote_short(text: str) -> str:
    """Short values repeat from request to request (``client_assertion_type``, ``scope``)."""
    return unquote_plus(text, errors="strict")


def _decode(text: str) -> str:
    if "%" not in text and "+" not in text:
        return text
    return _unquote_short(text) if len(text) <= 256 else unquote_plus(text, errors="strict")


def _form_pairs(text: str) -> list[tuple[str, str]]:
    """``application/x-www-form-urlencoded`` pairs, strictly: every field is ``name=value``
    (WHATWG URL §5.1; ``parse_qsl(strict_parsing=True)`` without its per-field overhead)."""
    if not text:
        return []
    fields = text.split("&")
    if len(fields) > _MAX_FIELDS:
        raise ValueError(f"more than {_MAX_FIELDS} fields")
    pairs = []
    for field in fields:
        name, equals, value = field.partition("=")
        if not equals:
            raise ValueError("a field is not name=value")
        pairs.append((_decode(name), _decode(value)))
    return pairs


def parse_form(
    body: bytes, content_type: str | None, *, keep_empty: frozenset[str] = frozenset()
) -> dict[str, str]:
    """A form body as a dict (RFC 6749 §3.2: no repeated parameters; §3.1: a parameter without
    a value counts as omitted, except those in ``keep_empty``, whose caller judges it)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != FORM_CONTENT_TYPE:
        raise InvalidRequest(f"Content-Type must be {FORM_CONTENT_TYPE}", check="content_type")
    try:
        pairs = _form_pairs(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(
            "the request body is not a valid form", check="form_malformed", detail=str(exc)
        ) from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise InvalidRequest(f"parameter {name!r} is repeated", check="duplicate_parameter")
        form[name] = value
    return {name: value for name, value in form.items() if value != "" or name in keep_empty}

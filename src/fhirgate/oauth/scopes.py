"""SMART on FHIR scopes: grammar, v1 ⇒ v2 meaning, coverage and narrowing.

Grammar (SMART App Launch 2.x, scopes-and-launch-context §fhir-resource-scope-syntax)::

    ( patient | user | system ) "/" ( <FHIR resource type> | "*" ) "." <permissions>
        [ "?" param=value ( "&" param=value )* ]

Permissions are SMART v2 ``c r u d s`` (a non-empty subset, in that order) or SMART v1 ``read`` (⇒
``rs``), ``write`` (⇒ ``cud``) or ``*`` (⇒ ``cruds``). ``?param=value`` restrictions are v2 only. A
scope is kept as the client wrote it, so the v1 or v2 syntax a client used is the syntax it gets
back (SMART App Launch 2.x, "Scopes and Launch Context": v1 and v2 scope syntax). Scope tokens
follow RFC 6749 §3.3: printable ASCII without space, ``"`` or ``\\``; runs of spaces between them
are tolerated.

Coverage is the union of scopes (``Observation.rs`` ≡ ``Observation.r Observation.s``); a
restricted scope covers only requests restricted at least as much.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from fhirgate.domain.resource_types import R4_RESOURCE_TYPES

__all__ = [
    "CONTEXTS",
    "IDENTITY_SCOPES",
    "OTHER_SCOPES",
    "PERMISSIONS",
    "ResourceScope",
    "ScopeError",
    "ScopeSet",
    "narrow",
    "parse_scope",
    "parse_scopes",
    "within",
]

CONTEXTS = frozenset({"patient", "user", "system"})
PERMISSIONS = "cruds"
#: Scopes without a resource (SMART §scopes-for-requesting-context-data / -identity-data),
#: and ``platform``: the Platform API, granted only to user-level API keys (docs/platform-api.md).
OTHER_SCOPES = frozenset({
    "openid", "fhirUser", "profile", "offline_access", "online_access",
    "launch", "launch/patient", "launch/encounter", "platform",
})  # fmt: skip
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
MAX_SCOPE_CHARS = 2048
MAX_SCOPE_TOKENS = 100

_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 §3.3 scope-token
_RESOURCE = re.compile(
    r"(?P<context>[a-z]+)/(?P<type>\*|[A-Za-z]+)\.(?P<perms>[^?]*)(?:\?(?P<q>.*))?"
)
_V2_PERMISSIONS = re.compile(r"c?r?u?d?s?")
#: Search parameters that add results rather than filter them; a restriction must only narrow.
WIDENING_PARAMETERS = frozenset({"_include", "_revinclude", "_has"})
_PARAM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-.:]*")


class ScopeError(ValueError):
    """A scope string is malformed, names an unknown type or action, or is not allowed."""


@dataclass(frozen=True, slots=True)
class ResourceScope:
    """One resource scope, with its permissions in v2 letters and its restrictions."""

    context: str
    resource_type: str
    permissions: frozenset[str]
    restrictions: frozenset[tuple[str, str]]
    text: str

    def matches(self, context: str, resource_type: str) -> bool:
        return self.context == context and self.resource_type in ("*", resource_type)

    def covers(self, other: ResourceScope, permission: str) -> bool:
        """Whether this scope grants ``permission`` on everything ``other`` could reach."""
        return (
            permission in self.permissions
            and self.matches(other.context, other.resource_type)
            and self.restrictions <= other.restrictions
        )


def _permissions(text: str, token: str) -> frozenset[str]:
    letters = V1_PERMISSIONS.get(text)
    if letters is None:
        if not text or not _V2_PERMISSIONS.fullmatch(text):
            raise ScopeError(f"unknown action {text!r} in {token!r}")
        letters = text
    return frozenset(letters)


def _restrictions(query: str | None, v1: bool, token: str) -> frozenset[tuple[str, str]]:
    if query is None:
        return frozenset()
    if v1:
        raise ScopeError(f"restrictions need SMART v2 permissions in {token!r}")
    pairs = []
    for part in query.split("&"):
        name, equals, value = part.partition("=")
        if not equals or not value or not _PARAM.fullmatch(name):
            raise ScopeError(f"malformed restriction {part!r} in {token!r}")
        if name.split(":", 1)[0] in WIDENING_PARAMETERS:
            raise ScopeError(f"restriction {name!r} would widen, not narrow, {token!r}")
        pairs.append((name, value))
    return frozenset(pairs)


def parse_scope(token: str) -> ResourceScope | str:
    """A resource scope, or one of :data:`OTHER_SCOPES` as is; else :class:`ScopeError`."""
    if token in OTHER_SCOPES:
        return token
    if not _TOKEN.fullmatch(token):
        raise ScopeError(f"scope {token!r} contains characters RFC 6749 §3.3 forbids")
    match = _RESOURCE.fullmatch(token)
    if match is None or match["context"] not in CONTEXTS:
        raise ScopeError(f"unknown scope {token!r}")
    resource_type, perms = match["type"], match["perms"]
    if resource_type != "*" and resource_type not in R4_RESOURCE_TYPES:
        raise ScopeError(f"unknown resource type {resource_type!r} in {token!r}")
    permissions = _permissions(perms, token)
    restrictions = _restrictions(match["q"], perms in V1_PERMISSIONS, token)
    return ResourceScope(match["context"], resource_type, permissions, restrictions, token)


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """Parsed scopes, in the order first given, without duplicates."""

    resource_scopes: tuple[ResourceScope, ...]
    other_scopes: tuple[str, ...]
    texts: tuple[str, ...]

    def __str__(self) -> str:
        return " ".join(self.texts)

    def covers(self, scope: ResourceScope | str) -> bool:
        """Whether the union of these scopes grants all that ``scope`` grants."""
        if isinstance(scope, str):
            return scope in self.other_scopes
        return all(
            any(mine.covers(scope, permission) for mine in self.resource_scopes)
            for permission in scope.permissions
        )


def _scope_set(parsed: Iterable[ResourceScope | str]) -> ScopeSet:
    resources: dict[str, ResourceScope] = {}
    others: dict[str, None] = {}
    texts: dict[str, None] = {}
    for scope in parsed:
        if isinstance(scope, str):
            others[scope] = None
            texts[scope] = None
        else:
            resources.setdefault(scope.text, scope)
            texts[scope.text] = None
    return ScopeSet(tuple(resources.values()), tuple(others), tuple(texts))


@lru_cache(maxsize=4096)
def parse_scopes(text: str) -> ScopeSet:
    """Parse a space-separated scope string (RFC 6749 §3.3); empty → :class:`ScopeError`.

    Cached: clients send the same few scope strings, and a :class:`ScopeSet` is immutable.
    """
    if len(text) > MAX_SCOPE_CHARS:
        raise ScopeError(f"scope is longer than {MAX_SCOPE_CHARS} characters")
    tokens = [token for token in text.split(" ") if token]
    if not tokens:
        raise ScopeError("scope is empty")
    if len(tokens) > MAX_SCOPE_TOKENS:
        raise ScopeError(f"more than {MAX_SCOPE_TOKENS} scopes")
    return _scope_set(parse_scope(token) for token in tokens)


def narrow(requested: ScopeSet | None, allowed: ScopeSet) -> ScopeSet:
    """The scope to grant: all of ``allowed`` when nothing was requested, else ``requested``
    when ``allowed`` covers every requested scope (SMART Backend Services
    §evaluate-requested-access); anything beyond it → :class:`ScopeError`.
    """
    if requested is None:
        return allowed
    wanted: list[ResourceScope | str] = [*requested.resource_scopes, *requested.other_scopes]
    beyond = [scope for scope in wanted if not allowed.covers(scope)]
    if beyond:
        names = " ".join(scope if isinstance(scope, str) else scope.text for scope in beyond)
        raise ScopeError(f"not allowed for this client: {names}")
    return requested


#: Scopes about the user's identity and session, never about data (SMART App Launch
#: §scopes-for-requesting-identity-data): any application may ask for them for its users.
IDENTITY_SCOPES = parse_scopes("openid fhirUser profile offline_access online_access")


@lru_cache(maxsize=4096)
def within(scopes: ScopeSet, allowed: str, *, identity: bool = False) -> bool:
    """Whether ``allowed`` — a client's registered scope text, with :data:`IDENTITY_SCOPES`
    when ``identity`` — covers every scope of ``scopes``; an unparsable ``allowed`` covers
    nothing. Cached: a client's scopes change rarely, and the arguments are immutable."""
    try:
        permitted = parse_scopes(f"{allowed} {IDENTITY_SCOPES}" if identity else allowed)
    except ScopeError:
        return False
    wanted: list[ResourceScope | str] = [*scopes.resource_scopes, *scopes.other_scopes]
    return all(permitted.covers(scope) for scope in wanted)

"""Client authentication at the token, revocation and introspection endpoints: detect the
method a request uses, verify it, and throttle and audit failures.

Detection follows RFC 6749 §2.3: a request uses exactly one method — a ``client_assertion``
(RFC 7523 §2.2), an ``Authorization: Basic`` header (§2.3.1) or a ``client_secret`` form field
— and a second one makes it ``invalid_request``. Each URL accepts a set of methods (the Pattern
Health dialect: Basic only); each client may use only the method it registered.

Brute force (RFC 6819 §4.4.1.5, §5.1.4.2.3): failed attempts are counted per source address and
per (client id, source address) (:mod:`fhirgate.oauth.throttle`); past the limit a request is
answered 429 before anything is verified. Every failure is written to the audit log.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from fhirgate.domain.clients import AuthMethod, Client
from fhirgate.domain.stores import AuditSink
from fhirgate.oauth.assertions import AssertionRules
from fhirgate.oauth.client_auth.client_secret import (
    SecretAuthenticator,
    SecretCredentials,
    SecretHasher,
    is_basic,
    parse_basic,
)
from fhirgate.oauth.client_auth.private_key_jwt import PrivateKeyJWTAuthenticator
from fhirgate.oauth.clients import ClientDirectory
from fhirgate.oauth.errors import InvalidClient, InvalidRequest, OAuthError, TooManyAttempts
from fhirgate.oauth.throttle import FailureLimiter

__all__ = [
    "JWT_BEARER",
    "AssertionCredentials",
    "ClientAuthenticator",
    "ClientCredentials",
    "PrivateKeyJWTAuthenticator",
    "SecretAuthenticator",
    "SecretCredentials",
    "SecretHasher",
    "detect_credentials",
    "is_basic",
]

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True, slots=True)
class AssertionCredentials:
    assertion: str
    client_id: str | None  # the form's client_id, if sent (it must then equal iss)


ClientCredentials = AssertionCredentials | SecretCredentials


def _assertion(form: Mapping[str, str]) -> AssertionCredentials:
    assertion_type = form.get("client_assertion_type")
    if assertion_type is None:
        raise InvalidRequest("client_assertion_type is required", check="assertion_type_missing")
    if assertion_type != JWT_BEARER:
        raise InvalidRequest(
            f"client_assertion_type must be {JWT_BEARER}", check="assertion_type_invalid"
        )
    assertion = form.get("client_assertion")
    if assertion is None:
        raise InvalidRequest("client_assertion is required", check="assertion_missing")
    return AssertionCredentials(assertion, form.get("client_id"))


def _basic(form: Mapping[str, str], authorization: str | None) -> SecretCredentials:
    if authorization is None or not is_basic(authorization):
        raise InvalidClient(
            "HTTP Basic client authentication is required", check="credentials_missing"
        )
    client_id, secret = parse_basic(authorization)
    if form.get("client_id", client_id) != client_id:
        raise InvalidRequest(
            "client_id differs from the Basic credentials", check="client_id_mismatch"
        )
    return SecretCredentials(client_id, secret, AuthMethod.CLIENT_SECRET_BASIC)


def _post(form: Mapping[str, str]) -> SecretCredentials:
    client_id = form.get("client_id")
    if client_id is None:
        raise InvalidRequest("client_id is required with client_secret", check="client_id_missing")
    return SecretCredentials(client_id, form["client_secret"], AuthMethod.CLIENT_SECRET_POST)


def detect_credentials(
    form: Mapping[str, str], authorization: str | None, accepted: Collection[AuthMethod]
) -> ClientCredentials:
    """The one client authentication method a request uses (RFC 6749 §2.3), if accepted here."""
    present = {
        AuthMethod.PRIVATE_KEY_JWT: "client_assertion" in form or "client_assertion_type" in form,
        AuthMethod.CLIENT_SECRET_BASIC: is_basic(authorization),
        AuthMethod.CLIENT_SECRET_POST: "client_secret" in form,
    }
    used = [method for method, is_present in present.items() if is_present]
    if len(used) > 1:
        raise InvalidRequest(
            "use exactly one client authentication method", check="multiple_auth_methods"
        )
    if not used and len(accepted) > 1:
        raise InvalidClient("client authentication is required", check="credentials_missing")
    method = used[0] if used else next(iter(accepted))
    if method not in accepted:
        names = " or ".join(sorted(accepted))
        raise InvalidClient(f"this endpoint accepts {names}", check="unsupported_auth_method")
    if method is AuthMethod.PRIVATE_KEY_JWT:
        return _assertion(form)
    if method is AuthMethod.CLIENT_SECRET_BASIC:
        return _basic(form, authorization)
    return _post(form)


class ClientAuthenticator:
    """Verifies any method's credentials; throttles and audits failures."""

    def __init__(
        self,
        private_key_jwt: PrivateKeyJWTAuthenticator,
        secret: SecretAuthenticator,
        limiter: FailureLimiter,
        audit: AuditSink,
        directory: ClientDirectory,
    ) -> None:
        self._directory = directory
        self._jwt = private_key_jwt
        self._secret = secret
        self._limiter = limiter
        self._audit = audit

    async def from_form(
        self,
        form: Mapping[str, str],
        authorization: str | None,
        methods: Collection[AuthMethod],
        rules: AssertionRules | None,
        source: str,
        *,
        also: Collection[str] = (),
    ) -> Client:
        """The client a form request authenticates as, by the one method it uses among
        ``methods`` (:func:`detect_credentials`), verified by :meth:`authenticate`: the step
        the token, introspection and revocation endpoints share."""
        credentials = detect_credentials(form, authorization, methods)
        return await self.authenticate(credentials, rules, source, also=also)

    async def authenticate(
        self,
        credentials: ClientCredentials,
        rules: AssertionRules | None,
        source: str,
        *,
        also: Collection[str] = (),
    ) -> Client:
        """The authenticated client; ``rules`` apply to assertions (``None``: none accepted);
        a secret is accepted from clients registered for any method in ``also`` besides the
        one it was presented by (legacy API keys at introspection and revocation; either
        secret method for 1upHealth's header, form and query credentials)."""
        claimed_id = None
        try:
            if isinstance(credentials, SecretCredentials):
                claimed_id = credentials.client_id
                self.throttle(source, claimed_id)
                return await self._secret.authenticate(credentials, also)
            if rules is None:
                raise InvalidClient(check="unsupported_auth_method", detail="no assertions here")
            claimed = self._jwt.claim(credentials.assertion, credentials.client_id, rules)
            claimed_id = claimed.client_id
            self.throttle(source, claimed_id)
            return await self._jwt.authenticate(claimed, rules)
        except InvalidClient as error:
            await self.failed(error, source, claimed_id)
            raise

    def throttle(self, source: str, client_id: str | None) -> None:
        """Refuse (429) a source, or a client id from a source, that failed too often."""
        retry_after = self._limiter.check(source, client_id)
        if retry_after is not None:
            raise TooManyAttempts(retry_after)

    async def failed(self, error: OAuthError, source: str, client_id: str | None) -> None:
        """Count and audit one failed authentication. A claimed id that names no client is
        audited as a digest only: it may be a secret pasted into the wrong field."""
        audited, detail = client_id, error.check
        if client_id is not None and await self._directory.get(client_id) is None:
            audited = None
            detail = f"{error.check} unknown_id={self._secret.hasher.fingerprint(client_id)}"
        self._audit.enqueue("client_auth.failure", client_id=audited, source=source, detail=detail)
        await self._limiter.record_failure(source, client_id)

"""OAuth errors (RFC 6749 §5.2, RFC 6750 §3.1).

Deep code raises these; each HTTP surface converts them once. ``description`` is safe to send
to the client; ``detail`` is for the server log only and never leaves the process. ``check``
names the rule that failed so that a dialect can reshape the answer (the Redox dialect maps it
to Redox's documented descriptions) without re-validating anything.

    OAuthError
    ├── InvalidRequest        400 invalid_request
    ├── InvalidClient         401 invalid_client
    ├── InvalidGrant          400 invalid_grant
    ├── UnauthorizedClient    400 unauthorized_client
    ├── UnsupportedGrantType  400 unsupported_grant_type
    ├── InvalidScope          400 invalid_scope
    ├── InvalidToken          401 invalid_token       (RFC 6750, resource guard)
    ├── InsufficientScope     403 insufficient_scope  (RFC 6750, resource guard)
    ├── TooManyAttempts       429 temporarily_unavailable (failed authentications throttled)
    └── ServiceUnavailable    503 server_error        (storage or Redis down: fail closed)
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "InsufficientScope",
    "InvalidClient",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidScope",
    "InvalidToken",
    "OAuthError",
    "ServiceUnavailable",
    "TooManyAttempts",
    "UnauthorizedClient",
    "UnsupportedGrantType",
]


class OAuthError(Exception):
    """An OAuth error with a registered ``error`` code and an HTTP status."""

    error: ClassVar[str] = "invalid_request"
    status_code: ClassVar[int] = 400
    default_description: ClassVar[str] = ""

    def __init__(
        self,
        description: str | None = None,
        *,
        check: str = "",
        detail: str = "",
        claim: str = "",
    ) -> None:
        self.description = self.default_description if description is None else description
        self.check = check
        self.detail = detail or self.description
        self.claim = claim
        super().__init__(f"{self.error}[{check}]: {self.detail}")

    def body(self) -> dict[str, str]:
        """The RFC 6749 §5.2 JSON body."""
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


class InvalidRequest(OAuthError):
    error = "invalid_request"
    status_code = 400


class InvalidClient(OAuthError):
    error = "invalid_client"
    status_code = 401
    default_description = "client authentication failed"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"
    status_code = 400
    default_description = "grant_type must be client_credentials"


class UnauthorizedClient(OAuthError):
    """RFC 6749 §5.2: the authenticated client may not use this grant type."""

    error = "unauthorized_client"
    status_code = 400
    default_description = "this client is not allowed to use this grant type"


class InvalidScope(OAuthError):
    error = "invalid_scope"
    status_code = 400


class InvalidToken(OAuthError):
    error = "invalid_token"
    status_code = 401
    default_description = "the access token is invalid, expired or revoked"


class InsufficientScope(OAuthError):
    error = "insufficient_scope"
    status_code = 403
    default_description = "the access token does not grant this access"


class ServiceUnavailable(OAuthError):
    error = "server_error"
    status_code = 503
    default_description = "the service is temporarily unavailable; try again shortly"


class TooManyAttempts(OAuthError):
    """Too many failed client authentications from this source (RFC 6819 §4.4.1.5); the
    answer carries ``Retry-After`` (RFC 9110 §10.2.3)."""

    error = "temporarily_unavailable"
    status_code = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many failed authentication attempts; retry in {retry_after} seconds",
            check="throttled",
        )
        self.retry_after = retry_after


class InvalidGrant(OAuthError):
    """RFC 6749 §5.2: the grant (a refresh token, a code) is invalid, expired, revoked or
    was issued to another client."""

    error = "invalid_grant"
    status_code = 400
    default_description = "the grant is invalid, expired or revoked"

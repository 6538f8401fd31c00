"""fhirgate's client SDK: ``private_key_jwt`` client credentials for httpx and requests.

``requests`` is optional: ``PrivateKeyJWTAuth`` imports it only when used as a requests auth.
"""

from fhirgate.client._assertion import build_client_assertion, load_private_key
from fhirgate.client._auth import PrivateKeyJWTAuth
from fhirgate.client._errors import OAuthError, TokenUnavailable

__all__ = [
    "OAuthError",
    "PrivateKeyJWTAuth",
    "TokenUnavailable",
    "build_client_assertion",
    "load_private_key",
]

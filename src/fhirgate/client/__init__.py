"""fhirgate's client SDK: auths for httpx (sync and async) and requests that fetch, cache and
renew bearer tokens.

- ``PrivateKeyJWTAuth``: SMART Backend Services, ``private_key_jwt`` client credentials;
- ``ClientSecretAuth``: client credentials with ``client_secret_basic`` or ``client_secret_post``
  (also the Pattern Health dialect, whose ``expires_in`` is in milliseconds);
- ``LegacyKeyAuth``: Redox legacy API keys (``/auth/authenticate``, ``/auth/refreshToken``).

``requests`` is optional: an auth imports it only when used as a requests auth.
"""

from fhirgate.client._assertion import build_client_assertion, load_private_key
from fhirgate.client._auth import PrivateKeyJWTAuth
from fhirgate.client._errors import OAuthError, TokenUnavailable
from fhirgate.client._legacy import LegacyKeyAuth
from fhirgate.client._secret import ClientSecretAuth

__all__ = [
    "ClientSecretAuth",
    "LegacyKeyAuth",
    "OAuthError",
    "PrivateKeyJWTAuth",
    "TokenUnavailable",
    "build_client_assertion",
    "load_private_key",
]

"""fhirgate's client SDK: auths for httpx (sync and async) and requests that fetch, cache and
renew bearer tokens.

- ``PrivateKeyJWTAuth``: SMART Backend Services, ``private_key_jwt`` client credentials;
- ``ClientSecretAuth``: client credentials with ``client_secret_basic`` or ``client_secret_post``
  (also the Pattern Health dialect, whose ``expires_in`` is in milliseconds);
- ``LegacyKeyAuth``: Redox legacy API keys (``/auth/authenticate``, ``/auth/refreshToken``);
- ``AppUserAuth``: an application acting for one of its users (1upHealth per-user delegation: a
  code from ``/user-management/v1``, then the authorization-code and refresh-token grants).

``requests`` is optional: an auth imports it only when used as a requests auth.
"""

from fhirgate.client._assertion import build_client_assertion, load_private_key
from fhirgate.client._auth import PrivateKeyJWTAuth
from fhirgate.client._errors import OAuthError, TokenUnavailable
from fhirgate.client._legacy import LegacyKeyAuth
from fhirgate.client._secret import ClientSecretAuth
from fhirgate.client._user import AppUserAuth, UnknownAppUser

__all__ = [
    "AppUserAuth",
    "ClientSecretAuth",
    "LegacyKeyAuth",
    "OAuthError",
    "PrivateKeyJWTAuth",
    "TokenUnavailable",
    "UnknownAppUser",
    "build_client_assertion",
    "load_private_key",
]

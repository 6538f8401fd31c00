"""API keys as people manage them, one core behind the dashboard's pages and the Platform API
(docs/dashboard.md, docs/platform-api.md), split by concept:

* :mod:`~fhirgate.dashboard.api_keys.access` — who may see or change the keys of an
  environment (the acting person and their roles);
* :mod:`~fhirgate.dashboard.api_keys.views` — the records pages and the Platform API render;
* :mod:`~fhirgate.dashboard.api_keys.activity` — a key's use, read from the audit log;
* :mod:`~fhirgate.dashboard.api_keys.jwks_probe` — testing a JWKS URL on request;
* :mod:`~fhirgate.dashboard.api_keys.lifecycle` — :class:`ApiKeys`, every operation on a key.

The names importers use are re-exported here.
"""

from fhirgate.dashboard.api_keys.access import Actor, Forbidden
from fhirgate.dashboard.api_keys.jwks_probe import JWKS_TESTS_PER_MINUTE
from fhirgate.dashboard.api_keys.lifecycle import UNSET, ApiKeys, ConcurrentChange, Unset
from fhirgate.dashboard.api_keys.views import (
    ApiKeyView,
    CreatedKey,
    DailyCount,
    EnvironmentAccess,
    Failure,
    JwksCheck,
    KeyActivity,
    PublicKeyInfo,
)
from fhirgate.dashboard.key_input import (
    PLATFORM_SCOPE,
    PRIVATE_JWK_MEMBERS,
    KeyChangeError,
    clean_name,
)
from fhirgate.domain.errors import NotFound

__all__ = [
    "JWKS_TESTS_PER_MINUTE",
    "PLATFORM_SCOPE",
    "PRIVATE_JWK_MEMBERS",
    "UNSET",
    "Actor",
    "ApiKeyView",
    "ApiKeys",
    "ConcurrentChange",
    "CreatedKey",
    "DailyCount",
    "EnvironmentAccess",
    "Failure",
    "Forbidden",
    "JwksCheck",
    "KeyActivity",
    "KeyChangeError",
    "NotFound",
    "PublicKeyInfo",
    "Unset",
    "clean_name",
]

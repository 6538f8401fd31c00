"""Settings, read once from ``FHIRGATE_*`` environment variables and passed down explicitly."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ASSERTION_ALGORITHMS", "MAX_TOKEN_LIFETIME", "Settings"]

#: Client-assertion algorithms fhirgate can verify. ``none`` and HMAC are never among them
#: (RFC 8725 §3.1-3.2); only the subset in ``Settings.assertion_algorithms`` is accepted.
ASSERTION_ALGORITHMS = frozenset({"RS256", "RS384", "PS384", "ES256", "ES384"})

#: The longest access-token lifetime a client may be given (seconds). Retired signing keys stay
#: published this long, so every token they signed can still be verified.
MAX_TOKEN_LIFETIME = 86_400


class Settings(BaseSettings):
    """Server configuration. Every field maps to ``FHIRGATE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FHIRGATE_", frozen=True, extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./var/fhirgate.db"
    redis_url: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    var_dir: Path = Path("./var")
    secret_key: str | None = Field(default=None, repr=False)

    assertion_algorithms: frozenset[str] = frozenset({"RS384", "ES384"})
    assertion_leeway: int = Field(default=60, ge=0, le=60)
    assertion_max_chars: int = 16_384
    access_token_ttl: int = Field(default=300, ge=1, le=300)
    secret_token_ttl: int = Field(default=3600, ge=1, le=MAX_TOKEN_LIFETIME)
    legacy_api_keys: bool = True
    legacy_token_ttl: int = Field(default=86_400, ge=60, le=86_400)
    legacy_refresh_ttl: int = Field(default=30 * 86_400, ge=3600)
    auth_failure_limit: int = Field(default=20, ge=0)
    #: Requests refused by the resource guard for want of a valid credential (no, bad, expired
    #: or revoked token; wrong client headers) a minute per source address; past it, 429 until
    #: the minute ends (0: no limit). Valid credentials are served all the same.
    bearer_failure_limit: int = Field(default=60, ge=0)
    #: Dashboard password hashes (argon2id, 64 MiB and a core's tens of milliseconds each) in
    #: flight at once in this process, and per (email, source address); more get 429 at once.
    password_verify_concurrency: int = Field(default=4, ge=1)
    password_verify_concurrency_per_key: int = Field(default=1, ge=1)
    #: 1upHealth-style delegation: code, access-token and refresh-token lifetimes (seconds),
    #: the absolute lifetime of a grant (a token family), and user-management calls per hour
    #: per application (0: unlimited).
    auth_code_ttl: int = Field(default=600, ge=10, le=3600)
    user_token_ttl: int = Field(default=7200, ge=60, le=MAX_TOKEN_LIFETIME)
    refresh_token_ttl: int = Field(default=30 * 86_400, ge=3600)
    grant_lifetime: int = Field(default=90 * 86_400, ge=3600)
    user_management_rate_limit: int = Field(default=300, ge=0)
    request_body_limit: int = Field(default=65_536, ge=1024)
    client_cache_ttl: float = Field(default=5.0, ge=0, le=5)
    #: A batch or transaction Bundle's budget (docs/fhir.md "Bundles"): its entries, the
    #: resources its answer carries, and the seconds it may run.
    bundle_max_entries: int = Field(default=1000, ge=1, le=10_000)
    bundle_max_resources: int = Field(default=5000, ge=1)
    bundle_max_seconds: float = Field(default=5.0, gt=0)
    #: How many ``_include``, ``_revinclude`` and ``_sort`` parameters one search may carry
    #: (each of them).
    search_max_repeats: int = Field(default=10, ge=1, le=100)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: Proxies whose ``X-Forwarded-For`` names the client (comma-separated addresses or ``*``);
    #: unset: the peer address is the client (throttling counts per client address).
    forwarded_allow_ips: str | None = None

    allow_insecure_jwks: bool = False
    jwks_timeout: float = Field(default=2.0, gt=0, le=10)
    jwks_max_bytes: int = Field(default=262_144, ge=1024)
    jwks_default_ttl: int = Field(default=300, ge=0)
    jwks_max_ttl: int = Field(default=3600, ge=0)
    jwks_refetch_interval: int = Field(default=60, ge=1)

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("public_url must be an absolute http(s) URL")
        return value.rstrip("/")

    @field_validator("assertion_algorithms", mode="before")
    @classmethod
    def _parse_algs(cls, value: object) -> object:
        if isinstance(value, str):
            value = {part.strip() for part in value.replace(",", " ").split() if part.strip()}
        return value

    @field_validator("assertion_algorithms")
    @classmethod
    def _known_algs(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = value - ASSERTION_ALGORITHMS
        if unknown or not value:
            allowed = ", ".join(sorted(ASSERTION_ALGORITHMS))
            raise ValueError(f"assertion_algorithms must be a non-empty subset of {allowed}")
        return value

    @property
    def issuer(self) -> str:
        """The issuer identifier (RFC 8414 §2): the configured public URL, never the Host header."""
        return self.public_url

    def url(self, path: str) -> str:
        """An absolute URL under the public base URL."""
        return f"{self.public_url}{path}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

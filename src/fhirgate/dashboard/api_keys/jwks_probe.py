"""Testing a JWKS URL on a person's request: a real fetch through the SSRF-guarded fetcher
(docs/security.md, "JWKS URLs"), bypassing its cache, rate-limited per person since each test
makes the server fetch a URL someone chose."""

from __future__ import annotations

from collections.abc import Callable

from fhirgate.config import Settings
from fhirgate.dashboard.api_keys.views import JwksCheck
from fhirgate.dashboard.key_input import KeyChangeError, fetch_problem
from fhirgate.oauth.jwks import JWKSFetcher, JWKSFetchError
from fhirgate.oauth.quota import CallQuota

#: JWKS URL tests a person may make a minute (each one is a fetch the server makes for them).
JWKS_TESTS_PER_MINUTE = 20


class JwksProbe:
    """Fetches a JWKS URL now and lists the kids it serves."""

    def __init__(
        self,
        settings: Settings,
        fetcher: Callable[[], JWKSFetcher] | None = None,
        quota: CallQuota | None = None,
    ) -> None:
        """``fetcher`` makes the fetcher a test uses (default: a fresh :class:`JWKSFetcher`
        with the server's settings); ``quota`` bounds the tests each person may make (default:
        :data:`JWKS_TESTS_PER_MINUTE` a minute, counted in this process)."""
        self._settings = settings
        self._new_fetcher = fetcher or (lambda: JWKSFetcher(settings))
        self._quota = quota or CallQuota(JWKS_TESTS_PER_MINUTE, 60, None, "")

    async def check(self, user_id: str, url: str) -> JwksCheck:
        """The kids ``url`` serves; :class:`KeyChangeError` saying what went wrong otherwise,
        or that ``user_id`` made too many tests."""
        retry_after = await self._quota.take(user_id)
        if retry_after is not None:
            raise KeyChangeError(
                f"too many JWKS URL tests: try again in {retry_after} seconds", "jwks_url"
            )
        fetcher = self._new_fetcher()
        try:
            keys = await fetcher.keys(url)
        except JWKSFetchError as exc:
            raise KeyChangeError(
                fetch_problem(exc, self._settings.jwks_timeout), "jwks_url"
            ) from None
        except ValueError:  # e.g. a host name IDNA refuses
            raise KeyChangeError("the JWKS URL's host name is not valid", "jwks_url") from None
        finally:
            await fetcher.aclose()
        return JwksCheck(url, tuple(key.kid for key in keys))

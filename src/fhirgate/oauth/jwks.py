"""Fetching a client's JWKS URL (SMART client-confidential-asymmetric §registering-a-client).

A JWKS URL is a request the server makes on a client's behalf, so it is treated as hostile
(server-side request forgery, RFC 9700 §4.17; docs/security.md#jwks-urls):

* ``https`` only; ``FHIRGATE_ALLOW_INSECURE_JWKS=true`` (local testing) also admits ``http``
  and loopback addresses.
* The host is resolved once and every address must be public
  (:func:`~fhirgate.oauth.addresses.is_public`: no private, loopback, link-local — which holds
  cloud metadata at 169.254.169.254 — shared, reserved or multicast ranges, and an IPv4 address
  carried inside an IPv6 one — NAT64, 6to4, Teredo, SIIT, IPv4-compatible or -mapped — is
  judged as that IPv4 address). The connection goes to that vetted address, with the original
  host in ``Host`` and in TLS SNI and certificate checks, so DNS cannot rebind in between.
* No redirects, no proxies from the environment, a time limit on the whole fetch
  (``jwks_timeout``, 2 s) and a size cap (``jwks_max_bytes``, 256 KB) enforced while streaming.
* Cached per ``Cache-Control``: ``no-store``, ``no-cache`` or ``max-age=0`` → not cached;
  ``max-age=N`` → ``min(N, jwks_max_ttl)``; otherwise ``jwks_default_ttl`` (5 min). A failed
  fetch is remembered for ``FAILURE_TTL`` seconds; an expired entry is never used as a fallback.
* One fetch at a time per URL: concurrent callers share it.
* An unknown ``kid`` may force a refetch at most once per client per ``jwks_refetch_interval``.
* A document with no usable key is a failure: the client cannot authenticate (fail closed).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from fhirgate.config import Settings
from fhirgate.oauth.addresses import Address, is_loopback, is_public
from fhirgate.oauth.keyset import ClientKey, JWKSetError, parse_jwks

__all__ = ["FAILURE_TTL", "JWKSFetchError", "JWKSFetcher", "cache_ttl"]

FAILURE_TTL = 5.0


class JWKSFetchError(Exception):
    """The JWKS URL could not be used; the message is for logs, never for the client."""


@dataclass(frozen=True, slots=True)
class _Entry:
    keys: tuple[ClientKey, ...] | JWKSFetchError
    expires_at: float


def cache_ttl(cache_control: str | None, default: float, maximum: float) -> float:
    """Seconds a response may be cached under its ``Cache-Control`` (RFC 9111 §5.2.2)."""
    directives = {}
    for part in (cache_control or "").lower().split(","):
        name, _, value = part.strip().partition("=")
        directives[name] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    max_age = directives.get("max-age")
    if max_age is None:
        return min(default, maximum)
    return min(float(max_age), maximum) if max_age.isdigit() else 0.0


class JWKSFetcher:
    """JWKS URL fetcher with an SSRF guard, limits, a per-URL cache and single flight."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        *,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """``clock`` drives cache expiry; ``verify`` is the TLS trust (tests pass their CA)."""
        self._settings = settings
        self._clock = clock
        self._http = httpx.AsyncClient(
            verify=verify,
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(settings.jwks_timeout),
            headers={"Accept": "application/jwk-set+json, application/json"},
        )
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}
        self._last_forced: dict[str, float] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def keys(self, url: str) -> tuple[ClientKey, ...]:
        """The usable keys at ``url``, from the cache while it is fresh."""
        entry = self._cache.get(url)
        if entry is None or self._clock() >= entry.expires_at:
            entry = await self._load(url)
        return _unwrap(entry)

    async def keys_after_unknown_kid(
        self, url: str, client_id: str
    ) -> tuple[ClientKey, ...] | None:
        """Refetch ``url`` because a client used a ``kid`` it lacks; ``None`` when this client
        already forced a refetch within ``jwks_refetch_interval`` seconds."""
        now = self._clock()
        last = self._last_forced.get(client_id)
        if last is not None and now - last < self._settings.jwks_refetch_interval:
            return None
        self._last_forced[client_id] = now
        return _unwrap(await self._load(url))

    async def _load(self, url: str) -> _Entry:
        pending = self._inflight.get(url)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch_entry(url))
            self._inflight[url] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(url, None))
        return await asyncio.shield(pending)

    async def _fetch_entry(self, url: str) -> _Entry:
        try:
            async with asyncio.timeout(self._settings.jwks_timeout):
                keys, ttl = await self._fetch(url)
        except TimeoutError:
            entry = _Entry(JWKSFetchError("timed out"), self._clock() + FAILURE_TTL)
        except JWKSFetchError as exc:
            entry = _Entry(exc, self._clock() + FAILURE_TTL)
        else:
            entry = _Entry(keys, self._clock() + ttl)
        self._cache[url] = entry
        return entry

    async def _fetch(self, url: str) -> tuple[tuple[ClientKey, ...], float]:
        target = self._check_url(url)
        for address in await self._vetted_addresses(target):
            try:
                body, cache_control = await self._get(target, address)
            except httpx.ConnectError:
                continue  # e.g. an AAAA record without IPv6 here: try the next address
            except httpx.HTTPError as exc:
                raise JWKSFetchError(f"fetch failed: {type(exc).__name__}") from None
            ttl = cache_ttl(
                cache_control, self._settings.jwks_default_ttl, self._settings.jwks_max_ttl
            )
            return _keys_from(body), ttl
        raise JWKSFetchError("could not connect to any address of the host")

    async def _get(self, target: httpx.URL, address: Address) -> tuple[bytes, str | None]:
        """GET ``target`` from ``address``, with the original host for ``Host`` and TLS."""
        request = self._http.build_request(
            "GET",
            target.copy_with(host=str(address)),
            headers={"Host": target.netloc.decode("ascii")},
            extensions={"sni_hostname": target.host},
        )
        response = await self._http.send(request, stream=True)
        try:
            return await self._read_capped(response), response.headers.get("cache-control")
        finally:
            await response.aclose()

    def _check_url(self, url: str) -> httpx.URL:
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            raise JWKSFetchError("not a valid URL") from None
        allowed = ("https", "http") if self._settings.allow_insecure_jwks else ("https",)
        if target.scheme not in allowed or not target.host:
            raise JWKSFetchError(f"scheme {target.scheme!r} not allowed")
        if target.userinfo:
            raise JWKSFetchError("credentials in the URL are not allowed")
        return target

    async def _vetted_addresses(self, target: httpx.URL) -> list[Address]:
        """Every address of the host, or an error if any of them is not allowed."""
        port = target.port or (443 if target.scheme == "https" else 80)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(target.host, port, type=socket.SOCK_STREAM)
        except OSError:
            raise JWKSFetchError("host does not resolve") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        refused = [str(a) for a in addresses if not self._address_allowed(a)]
        if refused or not addresses:
            raise JWKSFetchError(f"host resolves to a non-public address {refused[:1]}")
        return addresses

    def _address_allowed(self, address: Address) -> bool:
        if is_loopback(address):
            return self._settings.allow_insecure_jwks
        return is_public(address)

    async def _read_capped(self, response: httpx.Response) -> bytes:
        if response.status_code != 200:
            raise JWKSFetchError(f"HTTP {response.status_code} (redirects are not followed)")
        limit = self._settings.jwks_max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise JWKSFetchError(f"document larger than {limit} bytes")
        body = bytearray()
        async for chunk in response.aiter_bytes():  # decoded, so the cap bounds gzip too
            body += chunk
            if len(body) > limit:
                raise JWKSFetchError(f"document larger than {limit} bytes")
        return bytes(body)


def _keys_from(body: bytes) -> tuple[ClientKey, ...]:
    try:
        keys = parse_jwks(json.loads(body))
    except (ValueError, RecursionError, JWKSetError):
        raise JWKSFetchError("not a JWK Set") from None
    if not keys:
        raise JWKSFetchError("no usable keys")
    return keys


def _unwrap(entry: _Entry) -> tuple[ClientKey, ...]:
    if isinstance(entry.keys, JWKSFetchError):
        raise entry.keys
    return entry.keys

"""JWKS URLs (SMART client-confidential-asymmetric): SSRF guard, limits, cache, single flight,
unknown-kid refetch, TLS; and through the token endpoint, the jku rule and fail-closed keys."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest
import trustme
from tests.jwks_server import JWKSServer, Reply, jwks_reply
from tests.support import MakeClient, SigningClient, private_key

from fhirgate.config import Settings
from fhirgate.oauth.addresses import embedded_ipv4, is_public
from fhirgate.oauth.jose import jwk_from_public_key
from fhirgate.oauth.jwks import FAILURE_TTL, JWKSFetcher, JWKSFetchError, cache_ttl

RS_JWK = jwk_from_public_key(private_key("RS384").public_key(), "rs-1", "RS384")
ES_JWK = jwk_from_public_key(private_key("ES384").public_key(), "es-1", "ES384")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fetcher(clock: Clock | None = None, **settings: object) -> JWKSFetcher:
    config = Settings(allow_insecure_jwks=True, **settings)  # type: ignore[arg-type]
    return JWKSFetcher(config, clock or Clock())


@pytest.fixture
async def server() -> AsyncIterator[JWKSServer]:
    async with JWKSServer() as running:
        running.replies["/jwks.json"] = jwks_reply(RS_JWK, ES_JWK)
        yield running


# Where a JWKS URL may point ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://jwks.example.com/jwks.json",
        "ftp://jwks.example.com/jwks.json",
        "https://user:pw@jwks.example.com/jwks.json",
        "not a url",
        "https:///jwks.json",
    ],
)
async def test_only_plain_https_urls_are_fetched(url: str) -> None:
    strict = JWKSFetcher(Settings())
    with pytest.raises(JWKSFetchError, match=r"scheme|credentials|valid URL"):
        await strict.keys(url)
    await strict.aclose()


async def test_loopback_is_refused_unless_insecure_jwks_is_allowed(server: JWKSServer) -> None:
    strict = JWKSFetcher(Settings())
    for host in ("127.0.0.1", "localhost", "[::1]"):
        url = f"https://{host}:{server.port}/jwks.json"
        with pytest.raises(JWKSFetchError, match="non-public"):
            await strict.keys(url)
    await strict.aclose()
    assert server.hits["/jwks.json"] == 0


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",  # noqa: S104 - an address to refuse, not to bind
        "224.0.0.1",
        "[fd00::1]",
        "[fe80::1]",
        "[::ffff:10.0.0.1]",  # IPv4-mapped private
    ],
)
async def test_private_link_local_and_metadata_addresses_are_refused_even_when_insecure(
    host: str,
) -> None:
    insecure = fetcher()
    with pytest.raises(JWKSFetchError, match="non-public"):
        await insecure.keys(f"http://{host}/jwks.json")
    await insecure.aclose()


# IPv4 carried inside IPv6 (NAT64, 6to4, Teredo, SIIT, IPv4-compatible, IPv4-mapped): the
# embedded IPv4 decides. (form, address, embedded IPv4 addresses, public?)
EMBEDDED_IPV4 = [
    ("NAT64", "64:ff9b::a9fe:a9fe", ["169.254.169.254"], False),
    ("NAT64", "64:ff9b::10.0.0.1", ["10.0.0.1"], False),
    ("NAT64", "64:ff9b::127.0.0.1", ["127.0.0.1"], False),
    ("NAT64", "64:ff9b::808:808", ["8.8.8.8"], True),
    ("NAT64 local-use", "64:ff9b:1::a9fe:a9fe", [], False),
    ("NAT64 local-use", "64:ff9b:1::808:808", [], False),  # refused whatever it carries
    ("6to4", "2002:a9fe:a9fe::1", ["169.254.169.254"], False),
    ("6to4", "2002:c0a8:101::1", ["192.168.1.1"], False),
    ("6to4", "2002:808:808::1", ["8.8.8.8"], True),
    ("IPv4-compatible", "::a9fe:a9fe", ["169.254.169.254"], False),
    ("IPv4-compatible", "::10.0.0.1", ["10.0.0.1"], False),
    ("IPv4-compatible", "::8.8.8.8", ["8.8.8.8"], True),
    ("IPv4-mapped", "::ffff:169.254.169.254", ["169.254.169.254"], False),
    ("IPv4-mapped", "::ffff:a00:1", ["10.0.0.1"], False),
    ("IPv4-mapped", "::ffff:8.8.8.8", ["8.8.8.8"], True),
    ("SIIT", "::ffff:0:169.254.169.254", ["169.254.169.254"], False),
    ("SIIT", "::ffff:0:a00:1", ["10.0.0.1"], False),
    ("SIIT", "::ffff:0:8.8.8.8", ["8.8.8.8"], True),
    # Teredo: server IPv4 in bits 32-63, client IPv4 in the last 32 bits inverted
    (
        "Teredo client",
        "2001:0:4136:e378:8000:63bf:5601:5601",
        ["65.54.227.120", "169.254.169.254"],
        False,
    ),
    ("Teredo client", "2001:0:4136:e378::f5ff:fffe", ["65.54.227.120", "10.0.0.1"], False),
    ("Teredo server", "2001:0:a9fe:a9fe::f7f7:f7f7", ["169.254.169.254", "8.8.8.8"], False),
    ("Teredo server", "2001:0:a00:1::f7f7:f7f7", ["10.0.0.1", "8.8.8.8"], False),
    ("Teredo", "2001:0:4136:e378::f7f7:f7f7", ["65.54.227.120", "8.8.8.8"], True),
]


@pytest.mark.parametrize(
    ("address", "embedded"),
    [(address, embedded) for _form, address, embedded, _public in EMBEDDED_IPV4],
    ids=[f"{form}-{address}" for form, address, _embedded, _public in EMBEDDED_IPV4],
)
def test_the_ipv4_an_ipv6_address_carries_is_unwrapped(address: str, embedded: list[str]) -> None:
    found = embedded_ipv4(ipaddress.IPv6Address(address))
    assert [str(ipv4) for ipv4 in found] == embedded


@pytest.mark.parametrize(
    ("address", "public"),
    [(address, public) for _form, address, _embedded, public in EMBEDDED_IPV4],
    ids=[f"{form}-{address}" for form, address, _embedded, _public in EMBEDDED_IPV4],
)
def test_an_address_carrying_ipv4_is_public_only_if_every_ipv4_it_carries_is(
    address: str, public: bool
) -> None:
    assert is_public(ipaddress.IPv6Address(address)) is public


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::", False),
        ("::1", False),
        ("::1:a9fe:a9fe", False),  # reserved ::/8, outside every form
        ("100::1", False),  # discard-only
        ("2001:db8::1", False),  # documentation
        ("ff02::1", False),  # multicast
        ("fec0::1", False),  # site-local
    ],
)
def test_plain_addresses_are_public_only_in_global_unicast(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    "address",
    [address for _form, address, _embedded, public in EMBEDDED_IPV4 if not public],
    ids=[f"{form}-{address}" for form, address, _embedded, public in EMBEDDED_IPV4 if not public],
)
async def test_jwks_urls_at_ipv6_addresses_carrying_a_non_public_ipv4_are_refused(
    address: str,
) -> None:
    """Even with insecure JWKS allowed: another host's loopback is not ours to reach."""
    for strict in (JWKSFetcher(Settings()), fetcher()):
        with pytest.raises(JWKSFetchError, match="non-public"):
            await strict.keys(f"https://[{address}]/jwks.json")
        await strict.aclose()


async def test_only_this_hosts_loopback_is_loopback(server: JWKSServer) -> None:
    """An IPv4-mapped ``127.0.0.1`` is this host (admitted only with insecure JWKS allowed); a
    NAT64 ``127.0.0.1`` is the translator's loopback, refused even then."""
    mapped = f"[::ffff:127.0.0.1]:{server.port}/jwks.json"
    with pytest.raises(JWKSFetchError, match="non-public"):
        await JWKSFetcher(Settings()).keys(f"https://{mapped}")
    assert [key.kid for key in await fetcher().keys(f"http://{mapped}")] == ["rs-1", "es-1"]
    with pytest.raises(JWKSFetchError, match="non-public"):
        await fetcher().keys(f"http://[64:ff9b::7f00:1]:{server.port}/jwks.json")
    assert server.hits["/jwks.json"] == 1


async def test_an_unresolvable_host_is_an_error() -> None:
    with pytest.raises(JWKSFetchError, match="does not resolve"):
        await fetcher().keys("http://no-such-host.invalid/jwks.json")


async def test_keys_are_fetched_with_the_original_host_header(server: JWKSServer) -> None:
    keys = await fetcher().keys(server.url("/jwks.json", host="localhost"))
    assert [key.kid for key in keys] == ["rs-1", "es-1"]
    assert server.hosts == [f"localhost:{server.port}"]


# Limits ---------------------------------------------------------------------------------------


async def test_redirects_are_not_followed(server: JWKSServer) -> None:
    server.replies["/moved"] = Reply(status=302, headers={"Location": "/jwks.json"})
    with pytest.raises(JWKSFetchError, match="HTTP 302"):
        await fetcher().keys(server.url("/moved"))
    assert server.hits["/jwks.json"] == 0


async def test_error_statuses_are_errors(server: JWKSServer) -> None:
    with pytest.raises(JWKSFetchError, match="HTTP 404"):
        await fetcher().keys(server.url("/missing"))


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_document_over_the_size_cap_is_refused(server: JWKSServer, chunked: bool) -> None:
    padding = {"kty": "oct", "k": "A" * 3000, "kid": "pad"}
    server.replies["/big"] = jwks_reply(RS_JWK, padding)
    server.replies["/big"].chunked = chunked
    with pytest.raises(JWKSFetchError, match="larger than 2048 bytes"):
        await fetcher(jwks_max_bytes=2048).keys(server.url("/big"))
    assert len(await fetcher(jwks_max_bytes=8192).keys(server.url("/big"))) == 1


async def test_a_slow_server_times_out(server: JWKSServer) -> None:
    server.replies["/slow"] = Reply(delay=5)
    server.replies["/drip"] = Reply(stall=True)
    for path in ("/slow", "/drip"):
        with pytest.raises(JWKSFetchError, match=r"timed out|fetch failed"):
            await fetcher(jwks_timeout=0.3).keys(server.url(path))


@pytest.mark.parametrize(
    "body",
    [
        b"<html>not json</html>",
        b'["keys"]',
        b'{"keys": "none"}',
        b'{"keys": []}',
        b'{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]}',
        b'{"keys": [], "n": ' + b"1" * 5000 + b"}",  # beyond Python's int-string limit
        b"[" * 50_000,  # deeper than Python's parser goes
        b'{"keys": [{"kty": "RSA", "kid": "k", "e": 1e999, "n": NaN}]}',
    ],
)
async def test_documents_without_a_usable_key_are_errors(server: JWKSServer, body: bytes) -> None:
    server.replies["/bad"] = Reply(body=body)
    with pytest.raises(JWKSFetchError, match=r"not a JWK Set|no usable keys"):
        await fetcher().keys(server.url("/bad"))


async def test_unusable_keys_are_skipped_and_usable_ones_kept(server: JWKSServer) -> None:
    small = rsa_1024_jwk()
    server.replies["/mixed"] = jwks_reply(small, {"kty": "EC", "kid": "no-coords"}, ES_JWK)
    assert [key.kid for key in await fetcher().keys(server.url("/mixed"))] == ["es-1"]


def rsa_1024_jwk() -> dict[str, str]:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(65537, 1024)  # noqa: S505 - the key that must be skipped
    return jwk_from_public_key(weak.public_key(), "small", "RS384")


# Cache -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "ttl"),
    [
        (None, 300.0),
        ("public", 300.0),
        ("max-age=10", 10.0),
        ("public, max-age=600", 600.0),
        ("max-age=99999", 3600.0),
        ('max-age="20"', 20.0),
        ("max-age=0", 0.0),
        ("no-cache", 0.0),
        ("no-store, max-age=600", 0.0),
        ("max-age=-1", 0.0),
        ("max-age=soon", 0.0),
    ],
)
def test_cache_ttl_follows_cache_control(header: str | None, ttl: float) -> None:
    assert cache_ttl(header, 300, 3600) == ttl


async def test_a_fetched_set_is_reused_until_its_ttl_ends(server: JWKSServer) -> None:
    clock = Clock()
    jwks = fetcher(clock)
    url = server.url("/jwks.json")
    await jwks.keys(url)
    clock.now += 299
    await jwks.keys(url)
    assert server.hits["/jwks.json"] == 1
    clock.now += 2
    await jwks.keys(url)
    assert server.hits["/jwks.json"] == 2


@pytest.mark.parametrize(
    ("cache_control", "reused_for"),
    [("max-age=10", 10), ("max-age=99999", 3600), ("no-store", 0), ("no-cache", 0)],
)
async def test_cache_control_sets_how_long_a_set_is_reused(
    server: JWKSServer, cache_control: str, reused_for: int
) -> None:
    server.replies["/cc"] = jwks_reply(RS_JWK, **{"Cache-Control": cache_control})
    clock = Clock()
    jwks = fetcher(clock)
    await jwks.keys(server.url("/cc"))
    if reused_for:
        clock.now += reused_for - 1
        await jwks.keys(server.url("/cc"))
        assert server.hits["/cc"] == 1
        clock.now += 1
    await jwks.keys(server.url("/cc"))
    assert server.hits["/cc"] == 2


async def test_a_failure_is_remembered_briefly_then_retried(server: JWKSServer) -> None:
    server.replies["/flaky"] = Reply(status=500)
    clock = Clock()
    jwks = fetcher(clock)
    for _ in range(3):
        with pytest.raises(JWKSFetchError):
            await jwks.keys(server.url("/flaky"))
    assert server.hits["/flaky"] == 1
    server.replies["/flaky"] = jwks_reply(RS_JWK)
    clock.now += FAILURE_TTL
    assert len(await jwks.keys(server.url("/flaky"))) == 1


async def test_an_expired_set_is_never_used_when_the_refetch_fails(server: JWKSServer) -> None:
    clock = Clock()
    jwks = fetcher(clock)
    await jwks.keys(server.url("/jwks.json"))
    server.replies["/jwks.json"] = Reply(status=503)
    clock.now += 301
    with pytest.raises(JWKSFetchError, match="HTTP 503"):
        await jwks.keys(server.url("/jwks.json"))


async def test_concurrent_callers_share_one_fetch(server: JWKSServer) -> None:
    server.replies["/slowish"] = jwks_reply(RS_JWK)
    server.replies["/slowish"].delay = 0.2
    jwks = fetcher()
    results = await asyncio.gather(*(jwks.keys(server.url("/slowish")) for _ in range(20)))
    assert server.hits["/slowish"] == 1
    assert all(result == results[0] for result in results)


async def test_an_unknown_kid_refetches_at_most_once_per_client_per_interval(
    server: JWKSServer,
) -> None:
    clock = Clock()
    jwks = fetcher(clock)
    url = server.url("/jwks.json")
    await jwks.keys(url)
    assert await jwks.keys_after_unknown_kid(url, "client-a") is not None
    assert server.hits["/jwks.json"] == 2  # despite the fresh cache
    clock.now += 59
    assert await jwks.keys_after_unknown_kid(url, "client-a") is None
    assert server.hits["/jwks.json"] == 2
    assert await jwks.keys_after_unknown_kid(url, "client-b") is not None
    assert server.hits["/jwks.json"] == 3
    clock.now += 1
    assert await jwks.keys_after_unknown_kid(url, "client-a") is not None
    assert server.hits["/jwks.json"] == 4


# TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server(ca: trustme.CA, hostname: str) -> JWKSServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(hostname).configure_cert(context)
    return JWKSServer(tls=context)


def trusting(ca: trustme.CA) -> JWKSFetcher:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return JWKSFetcher(Settings(allow_insecure_jwks=True), verify=context)


async def test_https_verifies_the_certificate_against_the_url_host(ca: trustme.CA) -> None:
    async with tls_server(ca, "localhost") as server:
        server.replies["/jwks.json"] = jwks_reply(ES_JWK)
        keys = await trusting(ca).keys(server.url("/jwks.json", host="localhost"))
    assert [key.kid for key in keys] == ["es-1"]
    assert server.hosts == [f"localhost:{server.port}"]


async def test_https_refuses_a_certificate_for_another_host(ca: trustme.CA) -> None:
    async with tls_server(ca, "example.org") as server:
        server.replies["/jwks.json"] = jwks_reply(ES_JWK)
        with pytest.raises(JWKSFetchError):
            await trusting(ca).keys(server.url("/jwks.json", host="localhost"))
        assert server.hits["/jwks.json"] == 0


async def test_https_refuses_an_untrusted_certificate(ca: trustme.CA) -> None:
    async with tls_server(ca, "localhost") as server:
        server.replies["/jwks.json"] = jwks_reply(ES_JWK)
        with pytest.raises(JWKSFetchError):
            await fetcher().keys(server.url("/jwks.json", host="localhost"))


# Through the token endpoint ------------------------------------------------------------------


async def token(http: httpx.AsyncClient, form: dict[str, str]) -> httpx.Response:
    return await http.post("/oauth2/token", data=form)


async def test_a_client_with_only_a_jwks_url_gets_a_token(
    server: JWKSServer, http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = await make_client("ES384", kid="es-1", inline=False, jwks_url=server.url("/jwks.json"))
    response = await token(http, client.form())
    assert response.status_code == 200, response.text


async def test_jku_must_equal_the_registered_jwks_url(
    server: JWKSServer, http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    url = server.url("/jwks.json")
    client = await make_client("ES384", kid="es-1", inline=False, jwks_url=url)
    assert (await token(http, client.form(header={"jku": url}))).status_code == 200
    server.replies["/evil.json"] = jwks_reply(ES_JWK)
    refused = await token(http, client.form(header={"jku": server.url("/evil.json")}))
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    assert server.hits["/evil.json"] == 0


async def test_jku_without_a_registered_url_is_refused(
    http: httpx.AsyncClient, make_client: MakeClient, server: JWKSServer
) -> None:
    client = await make_client()
    response = await token(http, client.form(header={"jku": server.url("/jwks.json")}))
    assert response.status_code == 401
    assert server.hits["/jwks.json"] == 0


async def test_a_jku_selects_the_url_keys_not_the_inline_ones(
    server: JWKSServer, http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    """With jku, candidate keys come from the URL only: an inline-only kid is not found."""
    server.replies["/other.json"] = jwks_reply(ES_JWK)
    url = server.url("/other.json")
    client = await make_client("RS384", kid="rs-inline", inline=True, jwks_url=url)
    assert (await token(http, client.form())).status_code == 200  # inline key, no jku
    refused = await token(http, client.form(header={"jku": url}))
    assert refused.status_code == 401


async def test_a_key_added_at_the_url_is_found_by_the_unknown_kid_refetch(
    server: JWKSServer, http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    server.replies["/rotating.json"] = jwks_reply(RS_JWK)
    client = await make_client(
        "RS384", kid="rs-1", inline=False, jwks_url=server.url("/rotating.json")
    )
    assert (await token(http, client.form())).status_code == 200
    assert server.hits["/rotating.json"] == 1  # now cached
    server.replies["/rotating.json"] = jwks_reply(RS_JWK, ES_JWK)
    rotated = SigningClient(client.client_id, private_key("ES384"), "es-1", "ES384")
    assert (await token(http, rotated.form())).status_code == 200
    assert server.hits["/rotating.json"] == 2
    unknown = SigningClient(client.client_id, private_key("ES384"), "es-2", "ES384")
    assert (await token(http, unknown.form())).status_code == 401
    assert server.hits["/rotating.json"] == 2  # this client's refetch is spent for a minute


@pytest.mark.parametrize(
    "reply", [jwks_reply(), Reply(status=500), Reply(body=b"{}"), Reply(delay=5)]
)
async def test_an_unusable_jwks_url_fails_closed_with_invalid_client(
    server: JWKSServer, make_client: MakeClient, http: httpx.AsyncClient, reply: Reply
) -> None:
    server.replies["/broken.json"] = reply
    client = await make_client(
        "ES384", kid="es-1", inline=False, jwks_url=server.url("/broken.json")
    )
    response = await token(http, client.form())
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert "access_token" not in response.json()


async def test_an_unreachable_jwks_url_fails_closed(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    async with JWKSServer() as gone:
        url = gone.url("/jwks.json")
    client = await make_client("ES384", kid="es-1", inline=False, jwks_url=url)
    response = await token(http, client.form())
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"

"""``ClientSecretAuth`` against the token server of tests/sdk/token_server.py over TCP (httpx
sync and async, requests): ``client_secret_basic`` and ``client_secret_post``, scope, the
Pattern Health dialect's ``expires_in`` in milliseconds, caching, single flight, the retry after
a 401 and the error mapping. One test scripts httpx's ``MockTransport`` to check exact bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
import requests
from tests.sdk.token_server import (
    CLIENT_ID,
    SECRET,
    VIAS,
    FakeClock,
    Reply,
    TokenServer,
    call,
    get_in_threads,
    unused_port,
)

from fhirgate.client import ClientSecretAuth, OAuthError, TokenUnavailable

TOKEN = "/oauth2/token"
PATTERN = "/api/auth/token"


def secret_auth(server: TokenServer, path: str = TOKEN, **options: object) -> ClientSecretAuth:
    return ClientSecretAuth(f"{server.url}{path}", CLIENT_ID, SECRET, **options)  # type: ignore[arg-type]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --------------------------------------------------------------------------- the token request


@pytest.mark.parametrize("via", VIAS)
def test_basic_credentials_are_form_urlencoded_then_base64(server: TokenServer, via: str) -> None:
    """RFC 6749 §2.3.1: ``a:b%c+d é`` goes as ``a%3Ab%25c%2Bd+%C3%A9`` inside the Basic value."""
    assert call(via, secret_auth(server), f"{server.url}/api/data") == 200
    seen = server.last(TOKEN)
    assert seen.headers["authorization"] == "Basic " + b64(b"client-1:a%3Ab%25c%2Bd+%C3%A9")
    assert seen.headers["content-type"] == "application/x-www-form-urlencoded"
    assert seen.headers["accept"] == "application/json"
    assert seen.form == {"grant_type": "client_credentials"}
    assert server.paths() == [TOKEN, "/api/data"]


def test_basic_credentials_exact_bytes_with_an_encoded_client_id() -> None:
    sent: list[httpx.Request] = []

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"access_token": "t", "token_type": "Bearer",
                                         "expires_in": 60})  # fmt: skip

    auth = ClientSecretAuth("https://as.example/oauth2/token", "id:é+%/~", "s p:", scope="a b")
    with httpx.Client(transport=httpx.MockTransport(token_endpoint)) as http:
        assert auth.get_token(http) == "t"
    (request,) = sent
    assert request.method == "POST" and str(request.url) == "https://as.example/oauth2/token"
    assert request.headers["Authorization"] == "Basic " + b64(b"id%3A%C3%A9%2B%25%2F~:s+p%3A")
    assert request.content == b"grant_type=client_credentials&scope=a+b"


@pytest.mark.parametrize("via", VIAS)
def test_post_method_sends_the_credentials_as_form_fields(server: TokenServer, via: str) -> None:
    auth = secret_auth(server, method="post", scope="system/Patient.r")
    assert call(via, auth, f"{server.url}/api/data") == 200
    seen = server.last(TOKEN)
    assert "authorization" not in seen.headers
    assert seen.form == {"grant_type": "client_credentials", "scope": "system/Patient.r",
                         "client_id": CLIENT_ID, "client_secret": SECRET}  # fmt: skip


@pytest.mark.parametrize("scope", ["system/Patient.r", "system/*.rs system/Patient.r", None, ""])
@pytest.mark.parametrize("method", ["basic", "post"])
def test_scope_is_sent_only_when_given(server: TokenServer, scope: str | None, method: str) -> None:
    secret_auth(server, scope=scope, method=method).get_token()
    assert server.last(TOKEN).form.get("scope") == (scope or None)


def test_bad_options_are_refused_when_the_auth_is_built() -> None:
    url = "https://as.example/oauth2/token"
    for method in ("digest", "BASIC", "client_secret_basic", ""):
        with pytest.raises(ValueError, match="method must be 'basic' or 'post'"):
            ClientSecretAuth(url, CLIENT_ID, SECRET, method=method)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expires_in_unit"):
        ClientSecretAuth(url, CLIENT_ID, SECRET, expires_in_unit="min")  # type: ignore[arg-type]
    for client_id, secret in (("", SECRET), (CLIENT_ID, "")):
        with pytest.raises(ValueError, match="required"):
            ClientSecretAuth(url, client_id, secret)


# --------------------------------------------------------------------------- expires_in


@pytest.mark.parametrize(
    ("url", "unit"),
    [("https://ph.example/api/auth/token", "ms"), ("https://ph.example/api/auth/token/", "ms"),
     ("https://ph.example/tenant/api/auth/token?x=1", "ms"),
     ("https://as.example/oauth2/token", "s"), ("https://as.example/api/auth/tokens", "s"),
     ("https://as.example/api/auth/token/x", "s")],
)  # fmt: skip
def test_the_unit_of_expires_in_is_inferred_from_the_token_path(url: str, unit: str) -> None:
    assert ClientSecretAuth(url, CLIENT_ID, SECRET).expires_in_unit == unit
    other = "s" if unit == "ms" else "ms"
    assert ClientSecretAuth(url, CLIENT_ID, SECRET, expires_in_unit=other).expires_in_unit == other


@pytest.mark.parametrize(
    ("path", "unit", "expires_in", "lifetime"),
    [(PATTERN, None, 3_600_000, 3600),  # Pattern Health: milliseconds, one hour (not 1000 h)
     (TOKEN, None, 300, 300),  # RFC 6749: seconds
     (PATTERN, "s", 300, 300),  # the flag wins over the path
     (TOKEN, "ms", 3_600_000, 3600)],
)  # fmt: skip
def test_token_is_cached_until_30_seconds_before_expires_in_in_its_unit(
    server: TokenServer, path: str, unit: str | None, expires_in: int, lifetime: float
) -> None:
    server.expires_in[path] = expires_in
    auth = secret_auth(server, path, expires_in_unit=unit)
    auth._clock = clock = FakeClock(1000.0)
    token = auth.get_token()
    clock.now = 1000.0 + lifetime - 30 - 0.5
    assert auth.get_token() == token
    assert server.hits(path) == 1
    clock.now = 1000.0 + lifetime - 30
    assert auth.get_token() != token
    assert server.hits(path) == 2


def test_a_token_shorter_than_the_margin_is_used_but_not_cached(server: TokenServer) -> None:
    server.expires_in[PATTERN] = 1_500  # 1.5 s; were it seconds, it would be cached 25 min
    auth = secret_auth(server, PATTERN)
    auth._clock = FakeClock(1000.0)
    assert auth.get_token() != auth.get_token()
    assert server.hits(PATTERN) == 2


async def test_pattern_health_token_is_reused_for_an_hour_over_async_httpx(
    server: TokenServer,
) -> None:
    auth = secret_auth(server, PATTERN)
    auth._clock = clock = FakeClock(5000.0)
    async with httpx.AsyncClient(auth=auth) as http:
        for elapsed in (0, 60, 1800, 3569):
            clock.now = 5000.0 + elapsed
            assert (await http.get(f"{server.url}/api/data")).status_code == 200
        assert server.hits(PATTERN) == 1
        clock.now = 5000.0 + 3570
        assert (await http.get(f"{server.url}/api/data")).status_code == 200
    assert server.hits(PATTERN) == 2


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", "Bearer"])
def test_token_type_is_compared_case_insensitively(server: TokenServer, token_type: str) -> None:
    body = {"access_token": "tok", "expires_in": 3_600_000, "token_type": token_type}
    server.replies[PATTERN] = Reply(200, json.dumps(body).encode())
    assert secret_auth(server, PATTERN).get_token() == "tok"


# ---------------------------------------------------------------------- caching and concurrency


async def test_twenty_concurrent_async_requests_make_one_token_request(server: TokenServer) -> None:
    server.delay = 0.1
    async with httpx.AsyncClient(auth=secret_auth(server)) as http:
        responses = await asyncio.gather(*(http.get(f"{server.url}/api/data") for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert server.hits(TOKEN) == 1
    assert server.hits("/api/data") == 20
    assert len({r.request.headers["authorization"] for r in responses}) == 1


async def test_twenty_concurrent_aget_token_calls_make_one_token_request(
    server: TokenServer,
) -> None:
    server.delay = 0.1
    auth = secret_auth(server, PATTERN, method="post")
    tokens = await asyncio.gather(*(auth.aget_token() for _ in range(20)))
    assert len(set(tokens)) == 1
    assert server.hits(PATTERN) == 1


@pytest.mark.parametrize("library", ["httpx", "requests"])
def test_twenty_threads_make_one_token_request(server: TokenServer, library: str) -> None:
    server.delay = 0.1
    statuses = get_in_threads(library, secret_auth(server), f"{server.url}/api/data")
    assert statuses == [200] * 20
    assert server.hits(TOKEN) == 1
    assert server.hits("/api/data") == 20


def test_invalidate_forgets_the_token(server: TokenServer) -> None:
    auth = secret_auth(server)
    first = auth.get_token()
    assert auth.get_token() == first
    auth.invalidate()
    assert auth.get_token() != first
    assert server.hits(TOKEN) == 2


# --------------------------------------------------------------------------- 401 from the API


@pytest.mark.parametrize("via", VIAS)
def test_a_revoked_token_is_replaced_once_and_the_request_resent(
    server: TokenServer, via: str
) -> None:
    auth = secret_auth(server)
    old = auth.get_token()
    server.revoke(old)
    assert call(via, auth, f"{server.url}/api/data", body="payload") == 200
    assert server.hits(TOKEN) == 2
    attempts = [seen for seen in server.seen if seen.path == "/api/data"]
    assert [seen.body for seen in attempts] == [b"payload", b"payload"]
    assert attempts[0].headers["authorization"] == f"Bearer {old}"
    assert attempts[1].headers["authorization"] == f"Bearer {auth.get_token()}" != f"Bearer {old}"


def test_requests_keeps_the_401_in_the_history(server: TokenServer) -> None:
    auth = secret_auth(server, method="post")
    server.revoke(auth.get_token())
    response = requests.get(f"{server.url}/api/data", auth=auth, timeout=10)
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]


@pytest.mark.parametrize("via", VIAS)
def test_a_second_401_is_returned(server: TokenServer, via: str) -> None:
    assert call(via, secret_auth(server), f"{server.url}/deny") == 401
    assert server.hits("/deny") == 2
    assert server.hits(TOKEN) == 2


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("via", [*VIAS, "get_token", "aget_token"])
@pytest.mark.parametrize("method", ["basic", "post"])
def test_a_refused_secret_raises_oauth_error(server: TokenServer, via: str, method: str) -> None:
    wrong = "wrong:secret+é"
    auth = ClientSecretAuth(f"{server.url}{TOKEN}", CLIENT_ID, wrong, method=method)  # type: ignore[arg-type]
    with pytest.raises(OAuthError) as caught:
        call(via, auth, f"{server.url}/api/data")
    error = caught.value
    assert type(error) is OAuthError
    assert (error.error, error.status_code) == ("invalid_client", 401)
    assert error.description == "client authentication failed"
    assert "wrong" not in str(error) + repr(error) + json.dumps(error.body) + repr(auth)
    assert server.hits("/api/data") == 0


def test_a_refused_scope_raises_oauth_error(server: TokenServer) -> None:
    with pytest.raises(OAuthError) as caught:
        secret_auth(server, scope="system/*.cruds").get_token()
    assert (caught.value.error, caught.value.status_code) == ("invalid_scope", 400)
    assert not isinstance(caught.value, TokenUnavailable)


@pytest.mark.parametrize(
    ("reply", "error"),
    [(Reply(503, b'{"error": "temporarily_unavailable"}'), "temporarily_unavailable"),
     (Reply(429, b'{"error": "temporarily_unavailable"}'), "temporarily_unavailable"),
     (Reply(429, b"Too Many Requests", "text/plain"), "temporarily_unavailable"),
     (Reply(500, b"<html>oops</html>", "text/html"), "server_error"),
     (Reply(502, b"Bad Gateway", "text/plain"), "temporarily_unavailable"),
     (Reply(200, b"<html>maintenance</html>", "text/html"), "server_error"),
     (Reply(200, b'{"access_token": "t", "token_type": "MAC", "expires_in": 60}'), "server_error"),
     (Reply(200, b'{"token_type": "Bearer", "expires_in": 60}'), "server_error")],
)  # fmt: skip
@pytest.mark.parametrize("via", [*VIAS, "aget_token"])
def test_server_errors_and_unusable_answers_raise_token_unavailable(
    server: TokenServer, reply: Reply, error: str, via: str
) -> None:
    server.replies[TOKEN] = reply
    with pytest.raises(TokenUnavailable) as caught:
        call(via, secret_auth(server), f"{server.url}/api/data")
    assert (caught.value.error, caught.value.status_code) == (error, reply.status)
    assert server.hits("/api/data") == 0


@pytest.mark.parametrize("via", ["get_token", "aget_token", "requests"])
def test_an_unreachable_token_endpoint_raises_token_unavailable(via: str) -> None:
    port = unused_port()
    auth = ClientSecretAuth(f"http://127.0.0.1:{port}{TOKEN}", CLIENT_ID, SECRET)
    with pytest.raises(TokenUnavailable) as caught:
        call(via, auth, f"http://127.0.0.1:{port}/api/data")
    assert caught.value.error == "temporarily_unavailable"


def test_repr_hides_the_secret_and_the_token(server: TokenServer) -> None:
    auth = secret_auth(server, PATTERN, method="post", scope="system/*.rs")
    token = auth.get_token()
    text = repr(auth)
    assert text == (
        f"ClientSecretAuth(token_url='{server.url}{PATTERN}', client_id='client-1', "
        "method='post', scope='system/*.rs', expires_in_unit='ms')"
    )
    assert token not in text and "%" not in text


def test_exported_from_the_package() -> None:
    import fhirgate.client

    assert "ClientSecretAuth" in fhirgate.client.__all__
    assert isinstance(fhirgate.client.ClientSecretAuth("https://as/t", "c", "s"), httpx.Auth)

"""``LegacyKeyAuth`` (Redox legacy API keys) against the token server of
tests/sdk/token_server.py over TCP (httpx sync and async, requests): ``/auth/authenticate``,
the refresh through ``/auth/refreshToken`` and its fallback, ``expires`` as ISO 8601, caching,
single flight, the retry after a 401 and the mapping of plain-text errors.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import httpx
import pytest
from tests.sdk.token_server import (
    API_KEY,
    LEGACY_SECRET,
    VIAS,
    FakeClock,
    Reply,
    TokenServer,
    call,
    get_in_threads,
    unused_port,
)

from fhirgate.client import LegacyKeyAuth, OAuthError, TokenUnavailable
from fhirgate.client._errors import parse_expires

AUTHENTICATE = "/auth/authenticate"
REFRESH = "/auth/refreshToken"
EXPIRES = "2026-11-30T20:52:35.000Z"
EXPIRES_AT = datetime(2026, 11, 30, 20, 52, 35, tzinfo=UTC).timestamp()


def legacy_auth(server: TokenServer, secret: str = LEGACY_SECRET) -> LegacyKeyAuth:
    return LegacyKeyAuth(server.url, API_KEY, secret)


def frozen(server: TokenServer, auth: LegacyKeyAuth, wall: float = EXPIRES_AT - 300) -> FakeClock:
    """Both clocks under the test's control: the monotonic one moves, the wall clocks (the
    server's, which makes ``expires``, and the auth's, which reads it) stay at ``wall``."""
    server.now = auth._now = lambda: wall
    auth._clock = clock = FakeClock(1000.0)
    return clock


# --------------------------------------------------------------------------- the token requests


@pytest.mark.parametrize("via", VIAS)
def test_authenticate_posts_the_key_and_secret_as_json(server: TokenServer, via: str) -> None:
    auth = LegacyKeyAuth(f"{server.url}/", API_KEY, LEGACY_SECRET)  # a trailing slash is fine
    assert call(via, auth, f"{server.url}/api/data") == 200
    assert server.paths() == [AUTHENTICATE, "/api/data"]
    seen = server.last(AUTHENTICATE)
    assert seen.method == "POST"
    assert seen.headers["content-type"] == "application/json"
    assert seen.json == {"apiKey": API_KEY, "secret": LEGACY_SECRET}
    assert server.last("/api/data").headers["authorization"].startswith("Bearer ")


def test_the_token_is_refreshed_within_30_seconds_of_expires(server: TokenServer) -> None:
    auth = legacy_auth(server)
    clock = frozen(server, auth)
    first = auth.get_token()
    issued = server.last(AUTHENTICATE)  # the answer's refresh token is the live one on the server
    (first_refresh,) = server.refresh
    clock.now = 1000.0 + 300 - 30 - 0.5
    assert auth.get_token() == first
    clock.now = 1000.0 + 300 - 30
    second = auth.get_token()
    assert second != first
    assert server.paths() == [AUTHENTICATE, REFRESH]
    assert issued.json == {"apiKey": API_KEY, "secret": LEGACY_SECRET}
    assert server.last(REFRESH).json == {"apiKey": API_KEY, "refreshToken": first_refresh}
    (second_refresh,) = server.refresh  # the old one is dead, the new one is live
    assert second_refresh != first_refresh
    clock.now += 270
    assert auth.get_token() not in (first, second)
    assert server.last(REFRESH).json == {"apiKey": API_KEY, "refreshToken": second_refresh}
    assert server.paths() == [AUTHENTICATE, REFRESH, REFRESH]


@pytest.mark.parametrize(
    "refusal", [None, Reply(401, b"Invalid refresh token", "text/plain"),
                Reply(400, b"Missing refreshToken", "text/plain"), Reply(404, b"Not Found")],
)  # fmt: skip
def test_a_refused_refresh_falls_back_to_authenticate(
    server: TokenServer, refusal: Reply | None
) -> None:
    auth = legacy_auth(server)
    clock = frozen(server, auth)
    first = auth.get_token()
    if refusal is None:
        server.refresh.clear()  # the refresh token died on the server (revoked, expired)
    else:
        server.replies[REFRESH] = refusal
    clock.now += 270
    second = auth.get_token()
    assert second != first
    assert server.paths() == [AUTHENTICATE, REFRESH, AUTHENTICATE]
    server.replies.clear()
    clock.now += 270
    assert auth.get_token() not in (first, second)  # the new pair's refresh token works
    assert server.paths() == [AUTHENTICATE, REFRESH, AUTHENTICATE, REFRESH]


@pytest.mark.parametrize("via", VIAS)
def test_the_refresh_and_its_fallback_go_through_each_client(server: TokenServer, via: str) -> None:
    auth = legacy_auth(server)
    clock = frozen(server, auth)
    assert call(via, auth, f"{server.url}/api/data") == 200
    clock.now += 270
    assert call(via, auth, f"{server.url}/api/data") == 200
    server.refresh.clear()
    clock.now += 270
    assert call(via, auth, f"{server.url}/api/data") == 200
    token_requests = [path for path in server.paths() if path != "/api/data"]
    assert token_requests == [AUTHENTICATE, REFRESH, REFRESH, AUTHENTICATE]  # refused, fallback
    assert server.hits("/api/data") == 3


@pytest.mark.parametrize(
    ("reply", "error"),
    [(Reply(503, b"Service Unavailable", "text/plain"), "temporarily_unavailable"),
     (Reply(500, b"Internal Server Error", "text/plain"), "server_error"),
     (Reply(429, b"Too many failed attempts", "text/plain"), "temporarily_unavailable")],
)  # fmt: skip
def test_a_refresh_failing_with_a_server_error_or_throttled_is_raised_then_authenticate_is_used(
    server: TokenServer, reply: Reply, error: str
) -> None:
    auth = legacy_auth(server)
    clock = frozen(server, auth)
    auth.get_token()
    server.replies[REFRESH] = reply
    clock.now += 270
    with pytest.raises(TokenUnavailable) as caught:
        auth.get_token()
    assert (caught.value.error, caught.value.status_code) == (error, reply.status)
    assert caught.value.description == reply.body.decode()
    assert server.paths() == [AUTHENTICATE, REFRESH]
    assert auth.get_token()  # the refresh token was spent: authenticate again
    assert server.paths() == [AUTHENTICATE, REFRESH, AUTHENTICATE]


# --------------------------------------------------------------------------- expires


@pytest.mark.parametrize(
    ("expires", "epoch"),
    [("2026-11-30T20:52:35.000Z", EXPIRES_AT), ("2026-11-30T20:52:35Z", EXPIRES_AT),
     ("2026-11-30T20:52:35.5Z", EXPIRES_AT + 0.5),
     ("2026-11-30T20:52:35.123456Z", EXPIRES_AT + 0.123456),
     ("2026-11-30T20:52:35+00:00", EXPIRES_AT), ("2026-11-30T21:52:35.000+01:00", EXPIRES_AT),
     ("2026-11-30T20:52:35.000", EXPIRES_AT), ("2026-11-30T20:52:35", EXPIRES_AT),
     ("soon", None), ("", None), (1796071955, None), (None, None)],
)  # fmt: skip
def test_expires_is_read_as_iso_8601_utc(
    expires: object, epoch: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")  # no offset means UTC, not local time
    time.tzset()
    try:
        parsed = parse_expires(expires)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert parsed == pytest.approx(epoch) if epoch is not None else parsed is None


@pytest.mark.parametrize(
    "expires", ["2026-11-30T20:52:35.000Z", "2026-11-30T20:52:35Z", "2026-11-30T20:52:35.999Z"]
)
def test_the_token_is_cached_until_30_seconds_before_expires(
    server: TokenServer, expires: str
) -> None:
    server.legacy_expires = expires
    auth = legacy_auth(server)
    clock = frozen(server, auth, wall=EXPIRES_AT - 300)  # expires is 300 s (and a fraction) away
    token = auth.get_token()
    clock.now = 1000.0 + 269.5
    assert auth.get_token() == token
    assert server.paths() == [AUTHENTICATE]
    clock.now = 1000.0 + 271
    assert auth.get_token() != token
    assert server.paths() == [AUTHENTICATE, REFRESH]


@pytest.mark.parametrize("expires", ["soon", "2026-11-30T20:52:35.000Z"])
def test_an_unreadable_or_past_expires_gives_a_token_used_once(
    server: TokenServer, expires: str
) -> None:
    server.legacy_expires = expires
    auth = legacy_auth(server)
    frozen(server, auth, wall=EXPIRES_AT + 60)
    first = auth.get_token()
    assert auth.get_token() != first
    assert server.paths() == [AUTHENTICATE, REFRESH]


# ---------------------------------------------------------------------- caching and concurrency


async def test_twenty_concurrent_async_requests_make_one_token_request(server: TokenServer) -> None:
    server.delay = 0.1
    async with httpx.AsyncClient(auth=legacy_auth(server)) as http:
        responses = await asyncio.gather(*(http.get(f"{server.url}/api/data") for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert server.hits(AUTHENTICATE, REFRESH) == 1
    assert server.hits("/api/data") == 20


async def test_twenty_concurrent_refreshes_make_one_refresh_request(server: TokenServer) -> None:
    auth = legacy_auth(server)
    clock = frozen(server, auth)
    first = await auth.aget_token()
    server.delay = 0.1
    clock.now += 270
    tokens = await asyncio.gather(*(auth.aget_token() for _ in range(20)))
    assert len(set(tokens)) == 1 and first not in tokens
    assert server.paths() == [AUTHENTICATE, REFRESH]


@pytest.mark.parametrize("library", ["httpx", "requests"])
def test_twenty_threads_make_one_token_request(server: TokenServer, library: str) -> None:
    server.delay = 0.1
    statuses = get_in_threads(library, legacy_auth(server), f"{server.url}/api/data")
    assert statuses == [200] * 20
    assert server.hits(AUTHENTICATE, REFRESH) == 1
    assert server.hits("/api/data") == 20


# --------------------------------------------------------------------------- 401 from the API


@pytest.mark.parametrize("via", VIAS)
def test_a_revoked_token_is_refreshed_once_and_the_request_resent(
    server: TokenServer, via: str
) -> None:
    auth = legacy_auth(server)
    old = auth.get_token()
    server.revoke(old)
    assert call(via, auth, f"{server.url}/api/data", body="payload") == 200
    assert server.paths() == [AUTHENTICATE, "/api/data", REFRESH, "/api/data"]
    attempts = [seen for seen in server.seen if seen.path == "/api/data"]
    assert [seen.body for seen in attempts] == [b"payload", b"payload"]
    assert attempts[0].headers["authorization"] == f"Bearer {old}"
    assert attempts[1].headers["authorization"] == f"Bearer {auth.get_token()}" != f"Bearer {old}"


@pytest.mark.parametrize("via", VIAS)
def test_a_second_401_is_returned(server: TokenServer, via: str) -> None:
    assert call(via, legacy_auth(server), f"{server.url}/deny") == 401
    assert server.paths() == [AUTHENTICATE, "/deny", REFRESH, "/deny"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("via", [*VIAS, "get_token", "aget_token"])
def test_a_wrong_secret_raises_oauth_error_invalid_client(server: TokenServer, via: str) -> None:
    auth = legacy_auth(server, secret="not the secret")
    with pytest.raises(OAuthError) as caught:
        call(via, auth, f"{server.url}/api/data")
    error = caught.value
    assert type(error) is OAuthError
    assert (error.error, error.status_code) == ("invalid_client", 401)
    assert error.description == "Invalid source secret"
    assert error.body == {"text": "Invalid source secret"}
    assert "not the secret" not in str(error) + repr(error) + repr(auth)
    assert server.hits("/api/data") == 0


def test_a_malformed_request_raises_oauth_error_invalid_request(server: TokenServer) -> None:
    server.replies[AUTHENTICATE] = Reply(400, b"Missing apiKey or secret\n", "text/plain")
    with pytest.raises(OAuthError) as caught:
        legacy_auth(server).get_token()
    error = caught.value
    assert type(error) is OAuthError
    assert (error.error, error.status_code) == ("invalid_request", 400)
    assert (error.description, error.body) == ("Missing apiKey or secret",
                                               {"text": "Missing apiKey or secret"})  # fmt: skip
    assert str(error) == "invalid_request: Missing apiKey or secret (HTTP 400)"


@pytest.mark.parametrize(
    ("reply", "error"),
    [(Reply(500, b"Internal Server Error", "text/plain"), "server_error"),
     (Reply(502, b"", "text/plain"), "temporarily_unavailable"),
     (Reply(429, b"Too many failed attempts", "text/plain"), "temporarily_unavailable"),
     (Reply(503, b'{"message": "down for maintenance"}'), "temporarily_unavailable"),
     (Reply(200, b"<html>maintenance</html>", "text/html"), "server_error"),
     (Reply(200, b'{"expires": "2026-11-30T20:52:35.000Z", "refreshToken": "r"}'), "server_error"),
     (Reply(200, b'{"accessToken": "", "refreshToken": "r"}'), "server_error")],
)  # fmt: skip
@pytest.mark.parametrize("via", [*VIAS, "aget_token"])
def test_server_errors_and_unusable_answers_raise_token_unavailable(
    server: TokenServer, reply: Reply, error: str, via: str
) -> None:
    server.replies[AUTHENTICATE] = reply
    with pytest.raises(TokenUnavailable) as caught:
        call(via, legacy_auth(server), f"{server.url}/api/data")
    assert (caught.value.error, caught.value.status_code) == (error, reply.status)
    assert "refreshToken" not in caught.value.body
    assert server.hits("/api/data") == 0


def test_error_bodies_never_carry_tokens(server: TokenServer) -> None:
    body = {"accessToken": "", "refreshToken": "secret-refresh", "expires": EXPIRES}
    server.replies[AUTHENTICATE] = Reply(200, json.dumps(body).encode())
    with pytest.raises(TokenUnavailable) as caught:
        legacy_auth(server).get_token()
    assert caught.value.body == {"expires": EXPIRES}
    assert "secret-refresh" not in str(caught.value) + repr(caught.value)


@pytest.mark.parametrize("via", ["get_token", "aget_token", "requests"])
def test_an_unreachable_endpoint_raises_token_unavailable(via: str) -> None:
    port = unused_port()
    auth = LegacyKeyAuth(f"http://127.0.0.1:{port}", API_KEY, LEGACY_SECRET)
    with pytest.raises(TokenUnavailable) as caught:
        call(via, auth, f"http://127.0.0.1:{port}/api/data")
    assert caught.value.error == "temporarily_unavailable"


def test_empty_arguments_are_refused() -> None:
    for args in (("", API_KEY, LEGACY_SECRET), ("https://x", "", "s"), ("https://x", "k", "")):
        with pytest.raises(ValueError, match="required"):
            LegacyKeyAuth(*args)


def test_repr_hides_the_secret_and_the_tokens(server: TokenServer) -> None:
    auth = legacy_auth(server)
    token = auth.get_token()
    (refresh,) = server.refresh
    text = repr(auth)
    assert text == f"LegacyKeyAuth(base_url='{server.url}', api_key='{API_KEY}')"
    assert token not in text and refresh not in text and "secret" not in text


def test_exported_from_the_package() -> None:
    import fhirgate.client

    assert "LegacyKeyAuth" in fhirgate.client.__all__
    assert isinstance(fhirgate.client.LegacyKeyAuth("https://x", "k", "s"), httpx.Auth)

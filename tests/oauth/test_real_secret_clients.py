"""Third-party OAuth clients with client secrets against a started fhirgate (uvicorn on a real
TCP port, in a thread): requests-oauthlib with ``client_secret_basic`` at ``/oauth2/token`` and
at the Pattern Health path ``/api/auth/token``, Authlib with ``client_secret_post`` (requests)
and ``client_secret_basic`` (httpx). Each token is then used on ``GET /whoami``."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from oauthlib.oauth2 import BackendApplicationClient
from oauthlib.oauth2.rfc6749.errors import InvalidClientError
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth2Session
from tests.support import register_secret_client, start

from fhirgate.app import create_app
from fhirgate.config import Settings

with warnings.catch_warnings():  # Authlib warns that it prefers "httpx2" over httpx
    import authlib.deprecate  # installs an "always" filter for its warnings: override it

    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.base_client import OAuthError as AuthlibOAuthError
    from authlib.integrations.httpx_client import OAuth2Client as AuthlibHttpxClient
    from authlib.integrations.requests_client import OAuth2Session as AuthlibSession

SCOPE = "system/*.rs"
PATTERN_EXPIRES_IN_MS = 3_600_000  # the default secret-token hour, in Pattern's milliseconds


@dataclass(frozen=True)
class Live:
    base: str
    basic: tuple[str, str]  # a client_secret_basic client: (client_id, secret)
    post: tuple[str, str]  # a client_secret_post client


async def _register(settings: Settings) -> tuple[tuple[str, str], tuple[str, str]]:
    running, stack = await start(settings)  # migrates and creates the keys, then stops
    try:
        basic = await register_secret_client(running.services, "client_secret_basic", scope=SCOPE)
        post = await register_secret_client(running.services, "client_secret_post", scope=SCOPE)
    finally:
        await stack.aclose()
    return basic, post


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp: Path = tmp_path_factory.mktemp("real-secret-clients")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp}/fhirgate.db",
        var_dir=tmp / "var",
        public_url=f"http://127.0.0.1:{port}",
    )
    basic, post = asyncio.run(_register(settings))
    app = create_app(settings)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield Live(f"http://127.0.0.1:{port}", basic, post)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(autouse=True)
def plain_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both libraries refuse http:// token URLs unless told this is a test."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")


# --------------------------------------------------------------------------- requests-oauthlib


def test_requests_oauthlib_basic_at_the_token_endpoint_then_whoami(live: Live) -> None:
    client_id, secret = live.basic
    session = OAuth2Session(client=BackendApplicationClient(client_id=client_id))
    before = time.time()
    token = session.fetch_token(
        f"{live.base}/oauth2/token", auth=HTTPBasicAuth(client_id, secret), scope=[SCOPE]
    )
    assert token["token_type"] == "Bearer"
    assert token["scope"] == [SCOPE]  # oauthlib splits the granted scope
    assert token["expires_in"] == 3600
    assert abs(token["expires_at"] - (before + 3600)) < 60

    me = session.get(f"{live.base}/whoami", timeout=10)  # the session adds the bearer token
    assert me.status_code == 200, me.text
    assert me.json()["client_id"] == client_id
    assert me.json()["scope"] == SCOPE


def test_requests_oauthlib_wrong_secret_raises_invalid_client(live: Live) -> None:
    client_id, secret = live.basic
    session = OAuth2Session(client=BackendApplicationClient(client_id=client_id))
    with pytest.raises(InvalidClientError):
        session.fetch_token(
            f"{live.base}/oauth2/token", auth=HTTPBasicAuth(client_id, secret + "x"), scope=[SCOPE]
        )
    assert "access_token" not in session.token


def test_requests_oauthlib_basic_at_the_pattern_path_then_whoami(live: Live) -> None:
    client_id, secret = live.basic
    session = OAuth2Session(client=BackendApplicationClient(client_id=client_id))
    before = time.time()
    token = session.fetch_token(
        f"{live.base}/api/auth/token", auth=HTTPBasicAuth(client_id, secret)
    )
    assert token["token_type"] == "bearer"  # Pattern's lower case; oauthlib accepts it
    assert token["expires_in"] == PATTERN_EXPIRES_IN_MS
    # requests-oauthlib reads expires_in as seconds, as RFC 6749 defines it: with Pattern's
    # milliseconds it computes an expiry about 41.7 days away instead of one hour, so a client
    # relying on ``expires_at`` would keep using the token long after it died. The server sends
    # what Pattern documents; the token itself is fine, as whoami shows.
    assert abs(token["expires_at"] - (before + PATTERN_EXPIRES_IN_MS)) < 60

    me = session.get(f"{live.base}/whoami", timeout=10)
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["client_id"] == client_id
    assert body["scope"] == SCOPE  # no scope requested: the client's allowed scope
    assert body["exp"] - body["iat"] == 3600  # the real lifetime: one hour


# --------------------------------------------------------------------------- Authlib


def test_authlib_requests_session_client_secret_post_then_whoami(live: Live) -> None:
    # The client is registered for client_secret_post only: a token proves the secret went in
    # the form (the server refuses a client's secret presented by another method).
    client_id, secret = live.post
    with AuthlibSession(
        client_id, secret, token_endpoint_auth_method="client_secret_post", scope=SCOPE
    ) as session:
        token = session.fetch_token(
            f"{live.base}/oauth2/token", grant_type="client_credentials", scope=SCOPE
        )
        assert token["token_type"] == "Bearer"
        assert token["scope"] == SCOPE
        assert token["expires_in"] == 3600
        me = session.get(f"{live.base}/whoami", timeout=10)
    assert me.status_code == 200, me.text
    assert me.json()["client_id"] == client_id


def test_authlib_httpx_client_secret_basic_then_whoami(live: Live) -> None:
    client_id, secret = live.basic
    with AuthlibHttpxClient(
        client_id, secret, token_endpoint_auth_method="client_secret_basic", scope=SCOPE
    ) as client:
        token = client.fetch_token(
            f"{live.base}/oauth2/token", grant_type="client_credentials", scope=SCOPE
        )
        assert token["token_type"] == "Bearer"
        me = client.get(f"{live.base}/whoami")
    assert me.status_code == 200, me.text
    assert me.json()["client_id"] == client_id


def test_authlib_with_the_wrong_method_gets_no_token(live: Live) -> None:
    # The basic client's secret sent as client_secret_post: refused (method not registered).
    client_id, secret = live.basic
    with AuthlibSession(client_id, secret, token_endpoint_auth_method="client_secret_post") as s:
        with pytest.raises(AuthlibOAuthError, match="invalid_client"):
            s.fetch_token(f"{live.base}/oauth2/token", grant_type="client_credentials", scope=SCOPE)
        assert not s.token


def test_authlib_without_client_authentication_gets_invalid_client(live: Live) -> None:
    # Method "none" sends the client_id in the form and no secret: not authentication.
    client_id, _ = live.basic
    with AuthlibSession(client_id, token_endpoint_auth_method="none") as s:
        with pytest.raises(AuthlibOAuthError) as raised:
            s.fetch_token(f"{live.base}/oauth2/token", grant_type="client_credentials", scope=SCOPE)
        assert raised.value.error == "invalid_client"
        assert raised.value.description == "client authentication is required"
        assert not s.token

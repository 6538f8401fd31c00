"""``AppUserAuth`` (an application acting for one of its users, 1upHealth dialect) against the
real fhirgate app served by uvicorn over TCP, through httpx (sync and async) and requests: the
user created on first use (or reused), the code exchanged, the token cached, refreshed with the
rotated refresh token, recovered after the grant is revoked, and the errors.

Every request the app receives is recorded on its way in and out by an ASGI wrapper (``Record``)
that changes nothing: that is how the token requests are counted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import requests
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tests.sdk.token_server import VIAS, FakeClock, get_in_threads
from tests.support import BASE

from fhirgate.app import create_app
from fhirgate.client import AppUserAuth, OAuthError, UnknownAppUser
from fhirgate.config import Settings
from fhirgate.oauth.client_auth import SecretHasher
from fhirgate.server_secret import server_secret
from fhirgate.storage.db import create_engine, upgrade
from fhirgate.storage.repos import ClientRepo, OrganizationRepo

USERS = "/user-management/v1/user"
AUTH_CODE = f"{USERS}/auth-code"
TOKEN = "/oauth2/token"
WHOAMI = "/whoami"
TTL = 60  # the server's user_token_ttl: the auth caches a token 60 - 30 = 30 s


@dataclass(frozen=True)
class Hit:
    """One request the app answered: what came in, and what went out."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    answer: bytes

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode()))

    @property
    def json(self) -> Any:
        return json.loads(self.answer)


@dataclass
class Record:
    """An ASGI wrapper around the app that records each HTTP exchange (and changes nothing)."""

    app: ASGIApp
    hits: list[Hit] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body, answer, status = bytearray(), bytearray(), [0]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}

        async def receiving() -> Message:
            message = await receive()
            body.extend(message.get("body", b""))
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            answer.extend(message.get("body", b""))
            if message["type"] == "http.response.body" and not message.get("more_body"):
                # recorded before the client can see the answer and send its next request
                self.hits.append(Hit(scope["method"], scope["path"], headers, bytes(body),
                                     status[0], bytes(answer)))  # fmt: skip
            await send(message)

        await self.app(scope, receiving, sending)

    def paths(self) -> list[tuple[str, int]]:
        """(path, status) of each request, in order."""
        return [(hit.path, hit.status) for hit in self.hits]

    def of(self, path: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path]


@dataclass
class Live:
    """The served app: its URL, its settings and the record of its requests."""

    url: str
    settings: Settings
    record: Record


@dataclass
class Application:
    """A registered application (``client_secret_post``, allowed ``user/*.*``)."""

    url: str
    client_id: str
    secret: str

    @property
    def credentials(self) -> dict[str, str]:
        return {"client_id": self.client_id, "client_secret": self.secret}

    def auth(self, app_user_id: str = "alice", **options: Any) -> AppUserAuth:
        return AppUserAuth(self.url, self.client_id, self.secret, app_user_id=app_user_id,
                           **options)  # fmt: skip

    def user_management(self, method: str, path: str, **params: str) -> httpx.Response:
        """A direct call of the user-management API, credentials as headers."""
        return httpx.request(method, f"{self.url}{path}", data=params, headers=self.credentials)


@contextlib.contextmanager
def serving_with_lifespan(app: ASGIApp) -> Iterator[str]:
    """``app`` served by uvicorn from a thread with its lifespan (the fhirgate app builds its
    services there), on a free port of 127.0.0.1; its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            lifespan="on", loop="asyncio", ws="none")  # fmt: skip
    server = uvicorn.Server(config)
    runner = threading.Thread(target=server.run, name="fhirgate-server", daemon=True)
    runner.start()
    give_up = time.monotonic() + 15
    while not server.started:
        assert runner.is_alive() and time.monotonic() < give_up, "the server did not start"
        time.sleep(0.02)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        runner.join(15)


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    directory = tmp_path_factory.mktemp("user-auth")
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{directory}/fhirgate.db",
        var_dir=directory / "var",
        public_url=BASE,
        secret_key="sdk-user-auth-" + secrets.token_hex(8),
        user_token_ttl=TTL,
    )
    upgrade(settings.database_url)
    record = Record(create_app(settings))
    with serving_with_lifespan(record) as url:
        yield Live(url, settings, record)


@pytest.fixture
def live(started: Live) -> Live:
    started.record.hits.clear()
    return started


@pytest.fixture
def application(live: Live) -> Application:
    """A new application for each test (so users and quotas never carry over)."""
    client_id, secret = asyncio.run(_register(live.settings))
    return Application(live.url, client_id, secret)


async def _register(settings: Settings) -> tuple[str, str]:
    engine = create_engine(settings.database_url)
    try:
        secret = SecretHasher.generate()
        client = await ClientRepo(engine).create(
            environment=await OrganizationRepo(engine).default_environment("development"),
            name="user app",
            auth_method="client_secret_post",
            scope="user/*.*",
            secret_hash=SecretHasher(server_secret(settings)).hash(secret),
        )
        return client.client_id, secret
    finally:
        await engine.dispose()


def whoami(via: str, auth: AppUserAuth, url: str) -> tuple[int, dict[str, Any]]:
    """``GET /whoami`` with ``auth`` through ``via`` (httpx, async, requests): status, body."""
    if via == "httpx":
        with httpx.Client(auth=auth) as http:
            response = http.get(f"{url}{WHOAMI}")
            return response.status_code, response.json()
    if via == "async":
        return asyncio.run(_awhoami(auth, url))
    answer = requests.get(f"{url}{WHOAMI}", auth=auth, timeout=10)
    return answer.status_code, answer.json()


async def _awhoami(auth: AppUserAuth, url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(auth=auth) as http:
        response = await http.get(f"{url}{WHOAMI}")
        return response.status_code, response.json()


def ok(via: str, auth: AppUserAuth, url: str) -> dict[str, Any]:
    status, body = whoami(via, auth, url)
    assert status == 200, body
    return body


def tokens_issued(live: Live) -> list[Hit]:
    return [hit for hit in live.record.of(TOKEN) if hit.status == 200]


# --------------------------------------------------------------------------- first use


@pytest.mark.parametrize("via", VIAS)
def test_first_use_creates_the_user_and_its_token_acts_as_that_user(
    live: Live, application: Application, via: str
) -> None:
    auth = application.auth("alice")
    body = ok(via, auth, live.url)
    assert live.record.paths() == [(AUTH_CODE, 400), (USERS, 200), (TOKEN, 200), (WHOAMI, 200)]
    created = live.record.of(USERS)[0]
    assert auth.oneup_user_id == created.json["oneup_user_id"] == body["oneup_user_id"]
    assert created.json["app_user_id"] == "alice"
    assert body["sub"] == str(auth.oneup_user_id) and body["client_id"] == application.client_id
    exchange = live.record.of(TOKEN)[0].form
    assert exchange == {"grant_type": "authorization_code", "code": created.json["code"],
                        **application.credentials}  # fmt: skip


@pytest.mark.parametrize("via", VIAS)
def test_user_management_credentials_go_as_headers_only(
    live: Live, application: Application, via: str
) -> None:
    ok(via, application.auth("alice"), live.url)
    for hit in live.record.of(AUTH_CODE) + live.record.of(USERS):
        assert hit.headers["client_id"] == application.client_id
        assert hit.headers["client_secret"] == application.secret
        assert hit.form == {"app_user_id": "alice"}


@pytest.mark.parametrize("via", VIAS)
def test_an_existing_user_is_reused_not_recreated(
    live: Live, application: Application, via: str
) -> None:
    existing = application.user_management("POST", USERS, app_user_id="bob").json()
    live.record.hits.clear()
    auth = application.auth("bob", create=True)
    assert ok(via, auth, live.url)["oneup_user_id"] == existing["oneup_user_id"]
    assert auth.oneup_user_id == existing["oneup_user_id"]
    assert live.record.paths() == [(AUTH_CODE, 200), (TOKEN, 200), (WHOAMI, 200)]


@pytest.mark.parametrize("via", VIAS)
def test_create_false_with_an_unknown_user_raises_unknown_app_user(
    live: Live, application: Application, via: str
) -> None:
    auth = application.auth("ghost", create=False)
    with pytest.raises(UnknownAppUser, match="no user 'ghost'") as raised:
        whoami(via, auth, live.url)
    assert raised.value.error == "unknown_user" and raised.value.status_code == 400
    assert live.record.paths() == [(AUTH_CODE, 400)]
    listed = application.user_management("GET", USERS, app_user_id="ghost")
    assert listed.status_code == 400  # still no such user
    assert auth.oneup_user_id is None


def test_the_scope_is_asked_for_and_openid_gives_an_id_token(
    live: Live, application: Application
) -> None:
    auth = application.auth("carol", scope="user/*.* openid")
    ok("httpx", auth, live.url)
    assert live.record.of(USERS)[0].form == {"app_user_id": "carol", "scope": "user/*.* openid"}
    assert auth.id_token is not None
    claims = json.loads(base64.urlsafe_b64decode(auth.id_token.split(".")[1] + "=="))
    assert claims["sub"] == str(auth.oneup_user_id)
    assert claims["aud"] == application.client_id


# --------------------------------------------------------------------------- caching, refresh


@pytest.mark.parametrize("via", VIAS)
def test_the_token_is_cached_across_requests(
    live: Live, application: Application, via: str
) -> None:
    auth = application.auth("dave")
    for _ in range(3):
        ok(via, auth, live.url)
    assert len(live.record.of(TOKEN)) == 1
    assert len(live.record.of(AUTH_CODE)) == 1
    tokens = {hit.headers["authorization"] for hit in live.record.of(WHOAMI)}
    assert len(tokens) == 1


@pytest.mark.parametrize("via", VIAS)
def test_an_expiring_token_is_refreshed_with_the_rotated_refresh_token(
    live: Live, application: Application, via: str
) -> None:
    auth = application.auth("erin")
    auth._clock = clock = FakeClock(1000.0)
    first = ok(via, auth, live.url)
    clock.now += TTL - 30 - 1  # still cached
    ok(via, auth, live.url)
    assert len(live.record.of(TOKEN)) == 1
    for _ in range(2):
        clock.now += TTL - 30  # within 30 s of expiry: refreshed
        assert ok(via, auth, live.url)["oneup_user_id"] == first["oneup_user_id"]
    exchange, refresh1, refresh2 = live.record.of(TOKEN)
    assert [hit.status for hit in (exchange, refresh1, refresh2)] == [200, 200, 200]
    assert refresh1.form["grant_type"] == refresh2.form["grant_type"] == "refresh_token"
    assert refresh1.form["refresh_token"] == exchange.json["refresh_token"]
    assert refresh2.form["refresh_token"] == refresh1.json["refresh_token"]
    assert refresh2.form["refresh_token"] != refresh1.form["refresh_token"]
    assert len(live.record.of(AUTH_CODE)) == 1  # no new code was needed
    assert len({hit.headers["authorization"] for hit in live.record.of(WHOAMI)}) == 3


@pytest.mark.parametrize("via", VIAS)
def test_after_the_grant_is_revoked_the_auth_starts_over_with_a_new_code(
    live: Live, application: Application, via: str
) -> None:
    auth = application.auth("frank")
    before = ok(via, auth, live.url)
    revoked = application.user_management("POST", f"{USERS}/revoke", app_user_id="frank")
    assert revoked.status_code == 200, revoked.text
    live.record.hits.clear()
    after = ok(via, auth, live.url)
    assert after["oneup_user_id"] == before["oneup_user_id"] == auth.oneup_user_id
    assert live.record.paths() == [
        (WHOAMI, 401),  # the cached token died with the grant
        (TOKEN, 400),  # so did the refresh token: invalid_grant
        (AUTH_CODE, 200),  # a new code for the same user
        (TOKEN, 200),
        (WHOAMI, 200),
    ]
    refused = live.record.of(TOKEN)[0]
    assert refused.form["grant_type"] == "refresh_token"
    assert refused.json["error"] == "invalid_grant"


@pytest.mark.parametrize("library", ["httpx", "requests"])
def test_concurrent_first_requests_share_one_code_and_one_token(
    live: Live, application: Application, library: str
) -> None:
    auth = application.auth("grace")
    statuses = get_in_threads(library, auth, f"{live.url}{WHOAMI}", count=10)
    assert statuses == [200] * 10
    assert len(live.record.of(USERS)) == 1
    assert len(tokens_issued(live)) == 1


# --------------------------------------------------------------------------- errors


def test_a_deactivated_user_raises_the_apis_message(live: Live, application: Application) -> None:
    created = application.user_management("POST", USERS, app_user_id="heidi").json()
    number = str(created["oneup_user_id"])
    application.user_management("PUT", USERS, oneup_user_id=number, active="false")
    with pytest.raises(OAuthError, match="this user is not active") as raised:
        application.auth("heidi").get_token()
    assert type(raised.value) is OAuthError
    assert raised.value.error == "invalid_request" and raised.value.status_code == 400


def test_a_wrong_secret_raises_invalid_client(live: Live, application: Application) -> None:
    auth = AppUserAuth(live.url, application.client_id, "wrong", app_user_id="ivan")
    with pytest.raises(OAuthError) as raised:
        auth.get_token()
    assert raised.value.error == "invalid_client" and raised.value.status_code == 401
    assert "wrong" not in repr(raised.value) and "wrong" not in repr(auth)


def test_urls_and_credentials_are_required() -> None:
    with pytest.raises(ValueError, match="base_url"):
        AppUserAuth(None, "id", "secret", app_user_id="a", token_url="https://x/oauth2/token")
    with pytest.raises(ValueError, match="app_user_id"):
        AppUserAuth("https://x", "id", "secret", app_user_id="")
    explicit = AppUserAuth(None, "id", "s", app_user_id="a", token_url="https://t/token",
                           user_management_url="https://u/v1/")  # fmt: skip
    assert (explicit.token_url, explicit.user_management_url) == ("https://t/token", "https://u/v1")

"""The client SDK (``fhirgate.client``) against the real app: over httpx's ASGI transport, and
over TCP against a uvicorn server started in a thread (sync httpx, async httpx, requests, Authlib).

Token requests are counted on the server side by a small ASGI wrapper around the app; nothing
mocks the token endpoint. The wrapper also serves ``/test/deny`` (always 401) and
``/test/not-json`` (a 200 that is not JSON) to exercise the SDK's retry limit and error mapping.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest
import requests
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhirgate.app import create_app
from fhirgate.client import (
    OAuthError,
    PrivateKeyJWTAuth,
    TokenUnavailable,
    build_client_assertion,
    load_private_key,
)
from fhirgate.config import Settings
from fhirgate.oauth.jose import (
    PrivateKey,
    b64url_decode,
    b64url_encode,
    jwk_from_public_key,
    parse_compact,
    verify_signature,
)
from fhirgate.storage.db import create_engine, upgrade
from fhirgate.storage.repos import ClientRepo, OrganizationRepo

with warnings.catch_warnings():  # Authlib warns that it prefers "httpx2" over httpx
    import authlib.deprecate  # installs an "always" filter for its warnings: override it

    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.base_client import OAuthError as AuthlibOAuthError
    from authlib.integrations.httpx_client import OAuth2Client
    from authlib.oauth2.rfc7523 import PrivateKeyJWT
    from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
    from joserfc.jwk import RSAKey

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send
    from tests.support import MakeClient, Running, SigningClient

BASE = "http://127.0.0.1:8000"
SCOPE = "system/*.rs"
_T = TypeVar("_T")


# --------------------------------------------------------------------------- helpers


class CountingApp:
    """ASGI wrapper: counts requests per path and serves two test-only paths."""

    TOKEN_PATHS = frozenset({"/oauth2/token", "/v2/auth/token"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.hits: collections.Counter[str] = collections.Counter()
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def token_requests(self) -> int:
        return sum(self.hits[path] for path in self.TOKEN_PATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.loop = asyncio.get_running_loop()
        if scope["type"] == "http":
            self.hits[scope["path"]] += 1
            if scope["path"] == "/test/deny":
                return await _respond(send, 401, b'{"error":"invalid_token"}', b"application/json")
            if scope["path"] == "/test/not-json":
                return await _respond(send, 200, b"<html>maintenance</html>", b"text/html")
        await self.app(scope, receive, send)


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer error="invalid_token"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def asgi_client(app: CountingApp, auth: httpx.Auth | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, auth=auth)


def sdk_auth(client: SigningClient, *, path: str = "/oauth2/token", scope: str | None = SCOPE,
             base: str = BASE) -> PrivateKeyJWTAuth:  # fmt: skip
    return PrivateKeyJWTAuth(f"{base}{path}", client.client_id, client.key, client.kid,
                             alg=client.alg, scope=scope)  # fmt: skip


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def claims_of(jws: str) -> tuple[dict[str, Any], dict[str, Any]]:
    parsed = parse_compact(jws)
    return parsed.header, parsed.claims


@cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def pem(key: PrivateKey, fmt: serialization.PrivateFormat, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)


def private_jwk(key: PrivateKey) -> dict[str, str]:
    def enc(value: int, size: int | None = None) -> str:
        return b64url_encode(value.to_bytes(size or (value.bit_length() + 7) // 8, "big"))

    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        return {"kty": "RSA", "n": enc(n.public_numbers.n), "e": enc(n.public_numbers.e),
                "d": enc(n.d), "p": enc(n.p), "q": enc(n.q), "dp": enc(n.dmp1),
                "dq": enc(n.dmq1), "qi": enc(n.iqmp)}  # fmt: skip
    jwk = jwk_from_public_key(key.public_key(), "k")
    return {**jwk, "d": enc(key.private_numbers().private_value, 48)}


# --------------------------------------------------------------------------- the started server


@dataclass
class Live:
    """A fhirgate server on a real TCP port, with one registered RS384 client."""

    url: str
    app: CountingApp
    client_id: str
    key: rsa.RSAPrivateKey
    kid: str

    def auth(self, path: str = "/oauth2/token", scope: str | None = SCOPE) -> PrivateKeyJWTAuth:
        return PrivateKeyJWTAuth(f"{self.url}{path}", self.client_id, self.key, self.kid,
                                 scope=scope)  # fmt: skip

    def on_server(self, coro: Awaitable[_T]) -> _T:
        """Run a coroutine on the server's event loop (for its services) and wait for it."""
        assert self.app.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.app.loop).result(10)  # type: ignore[arg-type]


async def _register(url: str, key: PrivateKey, kid: str) -> str:
    engine = create_engine(url)
    try:
        env = await OrganizationRepo(engine).default_environment()
        jwks = {"keys": [jwk_from_public_key(key.public_key(), kid, "RS384")]}
        client = await ClientRepo(engine).create(
            environment=env, name="sdk", auth_method="private_key_jwt", scope=SCOPE, jwks=jwks
        )
        return client.client_id
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp}/fhirgate.db",
        var_dir=tmp / "var",
        public_url=f"http://127.0.0.1:{port}",
        allow_insecure_jwks=True,
    )
    upgrade(settings.database_url)
    client_id = asyncio.run(_register(settings.database_url, rsa_key(), "live-rs384"))
    app = CountingApp(create_app(settings))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on", loop="asyncio", ws="none")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield Live(f"http://127.0.0.1:{port}", app, client_id, rsa_key(), "live-rs384")
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture
def counted(live: Live) -> CountingApp:
    live.app.hits.clear()
    return live.app


# --------------------------------------------------------------------------- keys and assertions


def test_load_private_key_accepts_pem_path_jwk_and_loaded_keys(tmp_path: Path) -> None:
    for key in (rsa_key(), ec_key()):
        pkcs8 = pem(key, serialization.PrivateFormat.PKCS8)
        traditional = pem(key, serialization.PrivateFormat.TraditionalOpenSSL)
        path = tmp_path / "key.pem"
        path.write_bytes(traditional)
        jwk = private_jwk(key)
        for value in (pkcs8, pkcs8.decode(), traditional, str(path), key, jwk, json.dumps(jwk)):
            loaded = load_private_key(value)
            assert loaded.private_numbers() == key.private_numbers(), type(value)


def test_load_private_key_refuses_clearly_without_echoing_the_input() -> None:
    encrypted = pem(rsa_key(), serialization.PrivateFormat.PKCS8, password=b"secret")
    public_jwk = jwk_from_public_key(rsa_key().public_key(), "k")
    cases: list[tuple[Any, str]] = [
        (encrypted, "encrypted"),
        ("/no/such/key.pem", "neither PEM text nor the path"),
        (
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "not an unencrypted PEM",
        ),
        (public_jwk, "no private member"),
        ({**private_jwk(rsa_key()), "qi": "not base64!"}, "'qi' is not base64url"),
        ({**private_jwk(ec_key()), "crv": "P-192"}, "crv must be"),
        (12345, "unsupported private key value"),
    ]
    for value, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            load_private_key(value)
        assert public_jwk["n"][:20] not in str(caught.value)


def test_build_client_assertion_header_and_claims() -> None:
    before = int(time.time())
    jws = build_client_assertion(client_id="c1", token_url="https://as/token",
                                 private_key=ec_key(), kid="k1", alg="ES384")  # fmt: skip
    header, claims = claims_of(jws)
    assert header == {"alg": "ES384", "kid": "k1", "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == "c1"
    assert claims["aud"] == "https://as/token"
    assert before <= claims["iat"] <= time.time()
    assert claims["exp"] - claims["iat"] == 300
    assert len(b64url_decode(claims["jti"])) == 24
    parsed = parse_compact(jws)
    assert verify_signature("ES384", ec_key().public_key(), parsed.signing_input, parsed.signature)


def test_build_client_assertion_lifetime_is_clamped_and_jti_fresh() -> None:
    def build(**kwargs: Any) -> dict[str, Any]:
        args = {"client_id": "c", "token_url": "u", "private_key": rsa_key(), "kid": "k", **kwargs}
        return claims_of(build_client_assertion(**args))[1]

    assert build(lifetime=3600)["exp"] - build()["iat"] in (300, 299)
    short = build(lifetime=60)
    assert short["exp"] - short["iat"] == 60
    assert len({build()["jti"] for _ in range(5)}) == 5
    for bad in ({"alg": "ES384"}, {"alg": "HS256"}, {"alg": "none"}, {"kid": ""}, {"lifetime": 0}):
        args: dict[str, Any] = {"kid": "k", **bad}
        with pytest.raises(ValueError):
            build_client_assertion(client_id="c", token_url="u", private_key=rsa_key(), **args)


def test_import_works_without_requests() -> None:
    code = (
        "import sys; sys.modules['requests'] = None\n"
        "import fhirgate.client as c\n"
        "from cryptography.hazmat.primitives.asymmetric import ec\n"
        "c.PrivateKeyJWTAuth('https://as/t', 'c', ec.generate_private_key(ec.SECP384R1()),"
        " 'k', alg='ES384')\n"
        "assert 'requests' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- async, over ASGI


async def test_async_sdk_gets_a_token_and_calls_whoami(
    running: Running, make_client: MakeClient
) -> None:
    client = await make_client("ES384")
    app = CountingApp(running.app)
    async with asgi_client(app, sdk_auth(client)) as http:
        first = await http.get("/whoami")
        second = await http.get("/whoami")
    assert first.status_code == second.status_code == 200, first.text
    assert first.json()["client_id"] == client.client_id
    assert first.request.headers["authorization"].startswith("Bearer ey")
    assert app.token_requests == 1


async def test_token_is_cached_until_30_seconds_before_expiry(
    running: Running, make_client: MakeClient
) -> None:
    app = CountingApp(running.app)
    auth = sdk_auth(await make_client())
    auth._clock = clock = FakeClock(1000.0)
    async with asgi_client(app) as http:
        token = await auth.aget_token(http)
        clock.now = 1000.0 + 300 - 30 - 0.5
        assert await auth.aget_token(http) == token
        assert app.token_requests == 1
        clock.now = 1000.0 + 300 - 30
        assert await auth.aget_token(http) != token
        assert app.token_requests == 2
        auth.invalidate()
        await auth.aget_token(http)
        assert app.token_requests == 3


async def test_twenty_concurrent_async_calls_make_one_token_request(
    running: Running, make_client: MakeClient
) -> None:
    app = CountingApp(running.app)
    async with asgi_client(app, sdk_auth(await make_client())) as http:
        responses = await asyncio.gather(*(http.get("/whoami") for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert app.token_requests == 1
    assert app.hits["/whoami"] == 20


async def test_a_revoked_token_is_replaced_once_and_the_request_retried(
    running: Running, make_client: MakeClient
) -> None:
    app = CountingApp(running.app)
    auth = sdk_auth(await make_client())
    async with asgi_client(app, auth) as http:
        old = await auth.aget_token(http)
        await running.services.tokens.revoke(await running.services.tokens.verify(old))
        response = await http.get("/whoami")
    assert response.status_code == 200, response.text
    assert response.request.headers["authorization"] != f"Bearer {old}"
    assert app.token_requests == 2
    assert app.hits["/whoami"] == 2


async def test_a_second_401_is_returned_without_looping(
    running: Running, make_client: MakeClient
) -> None:
    app = CountingApp(running.app)
    async with asgi_client(app, sdk_auth(await make_client())) as http:
        response = await http.get("/test/deny")
    assert response.status_code == 401
    assert app.hits["/test/deny"] == 2
    assert app.token_requests == 2


async def test_scope_is_sent_when_given(running: Running, make_client: MakeClient) -> None:
    client = await make_client(scope="system/*.rs system/Patient.r")
    app = CountingApp(running.app)
    async with asgi_client(app, sdk_auth(client, scope="system/Patient.r")) as http:
        assert (await http.get("/whoami")).json()["scope"] == "system/Patient.r"
    with pytest.raises(OAuthError, match="scope") as caught:  # /oauth2/token requires scope
        await sdk_auth(client, scope=None).aget_token(running.http)
    assert (caught.value.error, caught.value.status_code) == ("invalid_request", 400)
    unscoped = sdk_auth(client, path="/v2/auth/token", scope=None)  # Redox: the allowed scopes
    async with asgi_client(app, unscoped) as http:
        assert (await http.get("/whoami")).json()["scope"] == "system/*.rs system/Patient.r"


async def test_token_endpoint_errors_raise_oauth_error_without_secrets(
    running: Running, make_client: MakeClient
) -> None:
    client = await make_client()
    client.kid = "unknown-kid"
    async with asgi_client(CountingApp(running.app), sdk_auth(client)) as http:
        with pytest.raises(OAuthError) as caught:
            await http.get("/whoami")
    error = caught.value
    assert not isinstance(error, TokenUnavailable)
    assert (error.error, error.status_code) == ("invalid_client", 401)
    assert error.description == error.body["error_description"]
    assert "ey" not in str(error) + repr(error) + json.dumps(error.body)
    with pytest.raises(OAuthError) as redox:
        await sdk_auth(client, path="/v2/auth/token").aget_token(running.http)
    assert redox.value.error == "invalid_request"
    assert redox.value.description.startswith("Public key not found")
    assert str(redox.value.body["error_uri"]).startswith("https://docs.redoxengine.com/")


async def test_storage_outage_and_non_json_raise_token_unavailable(
    running: Running, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client()
    async with asgi_client(CountingApp(running.app)) as http:
        with pytest.raises(TokenUnavailable) as not_json:
            await sdk_auth(client, path="/test/not-json").aget_token(http)
        assert (not_json.value.error, not_json.value.status_code) == ("server_error", 200)

        async def storage_down(*_args: object) -> bool:
            raise ConnectionError("database is down")

        monkeypatch.setattr(running.services.used_jti, "add", storage_down)
        with pytest.raises(TokenUnavailable) as down:
            await sdk_auth(client).aget_token(http)
    assert (down.value.error, down.value.status_code) == ("server_error", 503)


def test_unreachable_token_endpoint_raises_token_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    auth = PrivateKeyJWTAuth(f"http://127.0.0.1:{port}/oauth2/token", "c", rsa_key(), "k")
    with pytest.raises(TokenUnavailable) as caught:
        auth.get_token()
    assert caught.value.error == "temporarily_unavailable"
    with pytest.raises(TokenUnavailable):
        requests.get(f"http://127.0.0.1:{port}/whoami", auth=auth, timeout=5)


def test_repr_hides_the_key_and_the_token(live: Live) -> None:
    auth = live.auth()
    token = auth.get_token()
    text = repr(auth)
    assert live.client_id in text and "live-rs384" in text
    assert token not in text and "PRIVATE" not in text and "_key" not in text
    assert str(live.key.private_numbers().d)[:12] not in text


# --------------------------------------------------------------------------- a started server


def test_sync_httpx_gets_a_token_and_calls_whoami(live: Live, counted: CountingApp) -> None:
    with httpx.Client(base_url=live.url, auth=live.auth()) as http:
        responses = [http.get("/whoami") for _ in range(3)]
    assert [r.status_code for r in responses] == [200] * 3
    assert responses[0].json()["client_id"] == live.client_id
    assert counted.token_requests == 1


async def test_async_httpx_over_tcp_gets_a_token_and_calls_whoami(
    live: Live, counted: CountingApp
) -> None:
    async with httpx.AsyncClient(base_url=live.url, auth=live.auth()) as http:
        responses = await asyncio.gather(*(http.get("/whoami") for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5
    assert responses[0].json()["client_id"] == live.client_id
    assert counted.token_requests == 1


def test_requests_gets_a_token_and_calls_whoami(live: Live, counted: CountingApp) -> None:
    auth = live.auth()
    first = requests.get(f"{live.url}/whoami", auth=auth, timeout=10)
    second = requests.get(f"{live.url}/whoami", auth=auth, timeout=10)
    assert first.status_code == second.status_code == 200, first.text
    assert first.json()["client_id"] == live.client_id
    assert first.request.headers["Authorization"] == f"Bearer {auth.get_token()}"
    assert counted.token_requests == 1


def _in_threads(count: int, call: Callable[[], int]) -> list[int]:
    barrier = threading.Barrier(count)
    results: list[int] = []

    def run() -> None:
        barrier.wait()
        results.append(call())

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


@pytest.mark.parametrize("library", ["httpx", "requests"])
def test_ten_threads_make_one_token_request(live: Live, counted: CountingApp, library: str) -> None:
    auth = live.auth()
    with httpx.Client(base_url=live.url, auth=auth) as http, requests.Session() as session:
        session.auth = auth
        if library == "httpx":
            results = _in_threads(10, lambda: http.get("/whoami").status_code)
        else:
            results = _in_threads(10, lambda: session.get(f"{live.url}/whoami").status_code)
    assert results == [200] * 10
    assert counted.token_requests == 1


def test_requests_retries_once_after_a_revoked_token(live: Live, counted: CountingApp) -> None:
    auth = live.auth()
    old = auth.get_token()
    services = live.app.app.state.services  # type: ignore[attr-defined]
    live.on_server(services.tokens.revoke(live.on_server(services.tokens.verify(old))))
    response = requests.get(f"{live.url}/whoami", auth=auth, timeout=10)
    assert response.status_code == 200, response.text
    assert response.request.headers["Authorization"] != f"Bearer {old}"
    assert [r.status_code for r in response.history] == [401]
    assert counted.token_requests == 2
    denied = requests.get(f"{live.url}/test/deny", auth=auth, timeout=10)
    assert denied.status_code == 401
    assert counted.hits["/test/deny"] == 2
    assert counted.token_requests == 3


def test_sync_httpx_retries_once_after_a_revoked_token(live: Live, counted: CountingApp) -> None:
    auth = live.auth()
    with httpx.Client(base_url=live.url, auth=auth) as http:
        old = auth.get_token(http)
        services = live.app.app.state.services  # type: ignore[attr-defined]
        live.on_server(services.tokens.revoke(live.on_server(services.tokens.verify(old))))
        response = http.get("/whoami")
        denied = http.get("/test/deny")
    assert response.status_code == 200, response.text
    assert counted.hits["/whoami"] == 2
    assert denied.status_code == 401 and counted.hits["/test/deny"] == 2
    assert counted.token_requests == 3


# --------------------------------------------------------------------------- Authlib


class FiveMinutePrivateKeyJWT(PrivateKeyJWT):  # type: ignore[misc]
    """Authlib's PrivateKeyJWT, with ``exp`` five minutes after ``iat`` (SMART's maximum).

    Authlib's own default is ``exp = iat + 3600``, which fhirgate rightly refuses.
    """

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return str(private_key_jwt_sign(
            auth.client_secret, client_id=auth.client_id, token_endpoint=token_endpoint,
            header=dict(self.headers or {}), alg=self.alg, expires_in=300,
        ))  # fmt: skip


def _authlib_fetch(live: Live, path: str, method: PrivateKeyJWT) -> dict[str, Any]:
    key = RSAKey.import_key(pem(live.key, serialization.PrivateFormat.PKCS8))
    with OAuth2Client(client_id=live.client_id, client_secret=key,
                      token_endpoint_auth_method="private_key_jwt") as client:  # fmt: skip
        client.register_client_auth_method(method)
        token: dict[str, Any] = client.fetch_token(
            f"{live.url}{path}", grant_type="client_credentials", scope=SCOPE
        )
        return token


@pytest.mark.parametrize("path", ["/oauth2/token", "/v2/auth/token"])
def test_authlib_obtains_a_token_with_private_key_jwt(
    live: Live, counted: CountingApp, path: str
) -> None:
    url = f"{live.url}{path}"
    method = FiveMinutePrivateKeyJWT(url, alg="RS384", headers={"kid": live.kid})
    token = _authlib_fetch(live, path, method)
    assert token["token_type"] == "Bearer" and token["expires_in"] == 300
    whoami = httpx.get(f"{live.url}/whoami",
                       headers={"Authorization": f"Bearer {token['access_token']}"})  # fmt: skip
    assert whoami.json()["client_id"] == live.client_id
    assert counted.hits[path] == 1


@pytest.mark.parametrize(
    ("path", "error", "description"),
    [("/oauth2/token", "invalid_client", "exp may be at most 300 seconds in the future"),
     ("/v2/auth/token", "invalid_request", "Unexpected exp claim value")],
)  # fmt: skip
def test_authlib_default_one_hour_assertion_is_refused(
    live: Live, path: str, error: str, description: str
) -> None:
    """Authlib signs ``exp = iat + 3600``; SMART allows at most five minutes."""
    method = PrivateKeyJWT(f"{live.url}{path}", alg="RS384", headers={"kid": live.kid})
    with pytest.raises(AuthlibOAuthError) as caught:
        _authlib_fetch(live, path, method)
    assert (caught.value.error, caught.value.description) == (error, description)

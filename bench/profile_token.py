"""Where a token request's CPU goes: the ASGI app driven in-process, without HTTP or sockets.

It builds the app on a fresh SQLite database (or the given backends), registers a client, signs
assertions up front, then calls the ASGI app directly with each request and reports CPU
microseconds per grant, optionally under cProfile (top functions by cumulative time).

    python -m bench.profile_token --alg RS384 --requests 5000 [--cprofile 25]
    python -m bench.profile_token --mode client_secret_basic --requests 20000
    python -m bench.profile_token --mode introspect --requests 20000
    python -m bench.profile_token --mode fhir-read --requests 5000 [--cprofile 40]
    python -m bench.profile_token --mode fhir-search --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bench.token_endpoint import basic, form_body, presign
from fhirgate.app import create_app
from fhirgate.config import Settings
from fhirgate.domain.clients import AuthMethod
from fhirgate.oauth.client_auth import SecretHasher
from fhirgate.oauth.jose import jwk_from_public_key
from fhirgate.storage.db import upgrade_async

BASE = "http://127.0.0.1:8000"


def scope_for(body: bytes, path: str, authorization: str) -> dict[str, Any]:
    path, _, query = path.partition("?")
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-length", str(len(body)).encode()),
    ]
    if authorization:
        headers.append((b"authorization", authorization.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST" if body else "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def exchange(
    app: Any, body: bytes, path: str, authorization: str, content_type: bytes | None = None
) -> tuple[int, bytes]:
    """One request through the ASGI app: its status and body."""
    scope = scope_for(body, path, authorization)
    if content_type is not None:
        scope["headers"][1] = (b"content-type", content_type)
    answer: list[bytes] = []
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            answer.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(answer)


async def call(app: Any, body: bytes, path: str = "/oauth2/token", authorization: str = "") -> int:
    return (await exchange(app, body, path, authorization))[0]


async def jwt_bodies(services: Any, args: argparse.Namespace) -> list[bytes]:
    """Grant bodies with pre-signed assertions of a new private_key_jwt client."""
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if args.alg == "RS384"
        else ec.generate_private_key(ec.SECP384R1())
    )
    jwks = {"keys": [jwk_from_public_key(key.public_key(), "p")]}
    client = await services.clients.create(
        environment=await services.organizations.default_environment(),
        name="profile",
        auth_method=AuthMethod.PRIVATE_KEY_JWT,
        jwks=jwks,
        scope="system/*.rs",
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    assertions = presign(pem, client.client_id, f"{BASE}/oauth2/token", "p", args.alg,
                         args.requests + 200)  # fmt: skip
    return [form_body(a, "system/*.rs") for a in assertions]


async def fhir_requests(app: Any, mode: str) -> tuple[str, str]:
    """A system client's bearer token and the path of a read (or a patient-scoped search) of
    resources stored through the FHIR store."""
    services = app.state.services
    client = await services.clients.create(
        environment=await services.organizations.default_environment(),
        name="profile",
        auth_method=AuthMethod.CLIENT_SECRET_BASIC,
        scope="system/*.cruds",
        secret_hash=services.hasher.hash(SecretHasher.generate()),
    )
    issued = services.tokens.issue(client, "system/*.cruds")
    token = f"Bearer {issued.access_token}"
    path = ""
    for number in range(200):
        patient = {"resourceType": "Patient", "name": [{"family": f"Family{number}"}]}
        status, answer = await call_json(app, "/fhir/R4/Patient", patient, token)
        assert status == 201, answer
        for month in range(1, 10):
            observation = {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{answer['id']}"},
                "effectiveDateTime": f"2024-{month:02d}-01",
            }
            assert (await call_json(app, "/fhir/R4/Observation", observation, token))[0] == 201
        if mode == "fhir-read":
            path = f"/fhir/R4/Patient/{answer['id']}"
        else:
            path = f"/fhir/R4/Observation?patient={answer['id']}"
    await services.refresh_statistics()  # as the server does every 10 minutes
    return path, token


async def call_json(
    app: Any, path: str, document: dict[str, Any], authorization: str
) -> tuple[int, Any]:
    """A FHIR create through the ASGI app."""
    body = orjson.dumps(document)
    status, answer = await exchange(app, body, path, authorization, b"application/fhir+json")
    return status, orjson.loads(answer)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fhirgate-profile-") as tmp:
        settings = Settings(
            database_url=args.database_url or f"sqlite+aiosqlite:///{tmp}/p.db",
            redis_url=args.redis_url,
            var_dir=Path(tmp),
            secret_key=secrets.token_hex(16),
        )
        await upgrade_async(settings.database_url)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            services = app.state.services
            if args.mode == "private_key_jwt":
                bodies = await jwt_bodies(services, args)
                path, authorization = "/oauth2/token", ""
            elif args.mode.startswith("fhir"):
                path, authorization = await fhir_requests(app, args.mode)
                bodies = [b""] * (args.requests + 200)
            else:
                secret = SecretHasher.generate()
                client = await services.clients.create(
                    environment=await services.organizations.default_environment(),
                    name="profile",
                    auth_method=AuthMethod.CLIENT_SECRET_BASIC,
                    scope="system/*.rs",
                    secret_hash=services.hasher.hash(secret),
                )
                authorization = basic(client.client_id, secret)
                grant = b"grant_type=client_credentials&scope=system%2F%2A.rs"
                path, bodies = "/oauth2/token", [grant] * (args.requests + 200)
                if args.mode == "introspect":
                    issued = services.tokens.issue(client, "system/*.rs")
                    path = "/oauth2/introspect"
                    bodies = [f"token={issued.access_token}".encode()] * (args.requests + 200)
            for body in bodies[:200]:
                assert await call(app, body, path, authorization) == 200
            profiler = cProfile.Profile() if args.cprofile else None
            started = time.process_time()
            with profiler or contextlib.nullcontext():
                for body in bodies[200:]:
                    assert await call(app, body, path, authorization) == 200
            used = time.process_time() - started
            what = args.alg if args.mode == "private_key_jwt" else args.mode
            print(f"{what}: {used / args.requests * 1e6:.0f} µs CPU per request in-process")
            if profiler is not None:
                pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.cprofile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode",
        default="private_key_jwt",
        choices=[
            "private_key_jwt",
            "client_secret_basic",
            "introspect",
            "fhir-read",
            "fhir-search",
        ],
    )
    parser.add_argument("--alg", default="RS384", choices=["RS384", "ES384"])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--cprofile", type=int, default=0, help="print the top N functions")
    parser.add_argument("--sort", default="cumulative", choices=["cumulative", "tottime"])
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

"""The cost of bearer validation per request: the resource guard alone, in-process, on a
fresh database — a system token and an application user's token (whose grant is looked up on
every request).

    python -m bench.bearer --requests 20000
    python -m bench.bearer --database-url postgresql+asyncpg://… --redis-url redis://…
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import time
from typing import Any

import httpx
import uvloop
from starlette.requests import Request

from bench.token_endpoint import fresh_database
from fhirgate.app import create_app
from fhirgate.config import Settings
from fhirgate.storage.db import upgrade_async
from fhirgate.web.guard import authenticate

BASE = "http://127.0.0.1:8000"


def _request(app: Any, token: str) -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers, "app": app}
    return Request(scope)


async def _measure(app: Any, token: str, count: int) -> float:
    """Microseconds of CPU per validation (after a warm-up)."""
    for _ in range(200):
        await authenticate(_request(app, token))
    started = time.process_time()
    for _ in range(count):
        await authenticate(_request(app, token))
    return (time.process_time() - started) / count * 1e6


async def _run(args: argparse.Namespace, database_url: str, tmp: str) -> dict[str, float]:
    await upgrade_async(database_url)
    settings = Settings(
        database_url=database_url,
        redis_url=args.redis_url,
        var_dir=f"{tmp}/var",
        public_url=BASE,
        secret_key=secrets.token_hex(16),
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        services = app.state.services
        secret = services.hasher.generate()
        client = await services.clients.create(
            environment=await services.organizations.default_environment("development"),
            name="bench",
            auth_method="client_secret_post",
            scope="system/*.rs user/*.*",
            secret_hash=services.hasher.hash(secret),
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            form = {"client_id": client.client_id, "client_secret": secret}
            system = await http.post(
                "/oauth2/token",
                data={**form, "grant_type": "client_credentials", "scope": "system/*.rs"},
            )
            created = await http.post(
                "/user-management/v1/user", data={**form, "app_user_id": "bench"}
            )
            user = await http.post(
                "/oauth2/token",
                data={**form, "grant_type": "authorization_code", "code": created.json()["code"]},
            )
        return {
            "system_token_us": round(
                await _measure(app, system.json()["access_token"], args.requests), 1
            ),
            "user_token_us": round(
                await _measure(app, user.json()["access_token"], args.requests), 1
            ),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="fhirgate-bench-") as tmp,
        fresh_database(args.database_url, tmp) as database_url,
    ):
        result = uvloop.run(_run(args, database_url, tmp))  # the server's event loop
    backend = (
        "postgresql+redis" if args.redis_url else "postgresql" if args.database_url else "sqlite"
    )
    print(json.dumps({"backend": backend, **result}, indent=2))


if __name__ == "__main__":
    main()

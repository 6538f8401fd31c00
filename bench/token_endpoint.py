"""Token-endpoint benchmark: grants per second of server CPU, p50/p99 latency, errors.

It starts ``fhirgate serve`` on a fresh database, registers a client, signs every assertion
*before* the timed window (signing is the client's cost, not the server's), then drives
``POST /oauth2/token`` over keep-alive connections at a fixed concurrency. Throughput is
requests ÷ CPU seconds used by the server processes (robust on a shared, noisy machine).

``--mode client_secret_basic`` drives client-credentials grants with HTTP Basic instead, and
``--mode introspect`` drives ``POST /oauth2/introspect`` (Basic) with one access token.
``--mode authorization_code`` exchanges codes issued before the timed window (written straight to
the database, as ``POST /user-management/v1/user/auth-code`` would), and ``--mode refresh_token``
refreshes: each connection follows its own chain of rotating refresh tokens, so every request
spends the token the previous answer returned.

    python -m bench.token_endpoint --alg RS384 --concurrency 32 --requests 30000
    python -m bench.token_endpoint --alg ES384 --concurrency 32 --requests 40000 --duration 20
    python -m bench.token_endpoint --mode client_secret_basic --requests 60000 --duration 15
    python -m bench.token_endpoint --alg ES384 --database-url postgresql+asyncpg://… \
        --redis-url redis://127.0.0.1:6379/0
    python -m bench.token_endpoint --mode refresh_token --requests 30000 --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import psutil
import uvloop

from fhirgate.client import build_client_assertion, load_private_key

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class Result:
    mode: str
    alg: str
    backend: str
    workers: int
    concurrency: int
    requests: int
    errors: int
    wall_seconds: float
    server_cpu_seconds: float
    grants_per_cpu_second: float
    grants_per_wall_second: float
    p50_ms: float
    p99_ms: float
    max_rss_mb_per_worker: float
    verify_ceiling_per_cpu_second: float


def verify_ceiling(alg: str, seconds: float = 1.0) -> float:
    """Signature verifications of ``alg`` per CPU second on this machine, right now: the
    ceiling no token endpoint can pass (each grant verifies one assertion)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    message = b"x" * 600
    if alg == "ES384":
        key = ec.generate_private_key(ec.SECP384R1())
        signature = key.sign(message, ec.ECDSA(hashes.SHA384()))
        public = key.public_key()

        def verify() -> None:
            public.verify(signature, message, ec.ECDSA(hashes.SHA384()))
    else:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        rsa_signature = rsa_key.sign(message, padding.PKCS1v15(), hashes.SHA384())
        rsa_public = rsa_key.public_key()

        def verify() -> None:
            rsa_public.verify(rsa_signature, message, padding.PKCS1v15(), hashes.SHA384())

    count, started = 0, time.process_time()
    while time.process_time() - started < seconds:
        verify()
        count += 1
    return count / (time.process_time() - started)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fhirgate(env: dict[str, str], *args: str) -> str:
    exe = Path(sys.executable).with_name("fhirgate")
    done = subprocess.run([str(exe), *args], env=env, check=True, capture_output=True, text=True)
    return done.stdout


def _sign_batch(args: tuple[str, str, str, str, str, int]) -> list[str]:
    pem, client_id, token_url, kid, alg, count = args
    key = load_private_key(pem)
    return [
        build_client_assertion(
            client_id=client_id, token_url=token_url, private_key=key, kid=kid, alg=alg
        )
        for _ in range(count)
    ]


def presign(pem: str, client_id: str, token_url: str, kid: str, alg: str, n: int) -> list[str]:
    """Sign ``n`` assertions on every core, outside the timed window."""
    cores = os.cpu_count() or 1
    share = -(-n // cores)
    jobs = [(pem, client_id, token_url, kid, alg, share) for _ in range(cores)]
    with ProcessPoolExecutor(cores) as pool:
        return [a for batch in pool.map(_sign_batch, jobs) for a in batch][:n]


def form_body(assertion: str, scope: str) -> bytes:
    """The form of a client-credentials grant with ``assertion``."""
    return urlencode(
        {
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
            "scope": scope,
        }
    ).encode()


def request_bytes(host: str, path: str, body: bytes, authorization: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        + (f"Authorization: {authorization}\r\n" if authorization else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def jwt_payloads(args: argparse.Namespace, env: dict[str, str], tmp: str, port: int) -> list[bytes]:
    """Pre-signed private_key_jwt grants, one assertion each."""
    key_file, jwks_file = f"{tmp}/key.pem", f"{tmp}/jwks.json"
    fhirgate(
        env,
        "keys",
        "generate",
        "--alg",
        args.alg,
        "--kid",
        "bench",
        "--private-key-out",
        key_file,
        "--jwks-out",
        jwks_file,
    )
    created = json.loads(
        fhirgate(env, "clients", "create", "--name", "bench", "--jwks-file", jwks_file, "--json")
    )
    token_url = f"http://127.0.0.1:{port}/oauth2/token"
    total = args.requests + args.warmup
    print(f"signing {total} {args.alg} assertions…", file=sys.stderr)
    assertions = presign(
        Path(key_file).read_text(), created["client_id"], token_url, "bench", args.alg, total
    )
    host = f"127.0.0.1:{port}"
    return [request_bytes(host, "/oauth2/token", form_body(a, "system/*.rs")) for a in assertions]


def secret_client(env: dict[str, str]) -> str:
    created = json.loads(
        fhirgate(env, "clients", "create", "--auth", "client_secret_basic", "--name", "b", "--json")
    )
    return basic(created["client_id"], created["client_secret"])


def secret_payloads(args: argparse.Namespace, env: dict[str, str], port: int) -> list[bytes]:
    """client_secret_basic grants: the same request every time (nothing is single-use)."""
    body = urlencode({"grant_type": "client_credentials", "scope": "system/*.rs"}).encode()
    one = request_bytes(f"127.0.0.1:{port}", "/oauth2/token", body, secret_client(env))
    return [one] * (args.requests + args.warmup)


def introspection(port: int, authorization: str, count: int) -> list[bytes]:
    """Introspection requests (Basic) for one live access token of the same client."""
    answer = httpx.post(
        f"http://127.0.0.1:{port}/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        headers={"Authorization": authorization},
    )
    body = urlencode({"token": answer.json()["access_token"]}).encode()
    return [request_bytes(f"127.0.0.1:{port}", "/oauth2/introspect", body, authorization)] * count


def application(env: dict[str, str]) -> tuple[str, str]:
    """A 1upHealth-style application: a client_secret_post client allowed user scopes."""
    created = json.loads(
        fhirgate(
            env,
            "clients",
            "create",
            "--auth",
            "client_secret_post",
            "--scope",
            "user/*.*",
            "--name",
            "app",
            "--json",
        )
    )
    return created["client_id"], created["client_secret"]


def issue_codes(database_url: str, client_id: str, count: int) -> list[str]:
    """``count`` codes for one user, written in bulk before the timed window (the hashes, as
    the server stores them)."""
    from sqlalchemy import insert

    from fhirgate.storage.app_users import AppUserRepo
    from fhirgate.storage.db import create_engine
    from fhirgate.storage.models import AuthorizationCodeRow
    from fhirgate.storage.opaque_tokens import hash_token, new_token

    async def write() -> list[str]:
        engine = create_engine(database_url)
        try:
            user = await AppUserRepo(engine).create(client_id, "bench-user")
            codes = [new_token() for _ in range(count)]
            now = int(time.time())
            rows = [
                {
                    "code_hash": hash_token(code),
                    "client_id": client_id,
                    "oneup_user_id": user.oneup_user_id,
                    "scope": "user/*.*",
                    "issued_at": now,
                    "expires_at": now + 3600,
                }
                for code in codes
            ]
            async with engine.begin() as conn:
                for start in range(0, len(rows), 5000):
                    await conn.execute(insert(AuthorizationCodeRow), rows[start : start + 5000])
            return codes
        finally:
            await engine.dispose()

    return asyncio.run(write())


def grant_form(client_id: str, secret: str, **fields: str) -> bytes:
    return urlencode({**fields, "client_id": client_id, "client_secret": secret}).encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


async def drive_refresh_chains(
    port: int,
    first_tokens: list[str],
    request: Callable[[str], bytes],
    count: int,
    duration: float | None = None,
) -> tuple[list[float], int]:
    """One connection per chain: each refresh spends the token the previous answer gave, until
    ``count`` refreshes in all or ``duration`` seconds. Latencies and errors."""
    remaining = count
    deadline = time.perf_counter() + duration if duration else float("inf")
    latencies: list[float] = []
    errors = 0

    async def chain(token: str) -> None:
        nonlocal errors, remaining
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            if started > deadline:
                break
            writer.write(request(token))
            status, body = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors += 1
                break  # a broken chain cannot go on
            token = json.loads(body)["refresh_token"]
        writer.close()

    await asyncio.gather(*(chain(token) for token in first_tokens))
    return latencies, errors


async def drive(
    port: int, payloads: list[bytes], concurrency: int, duration: float | None = None
) -> tuple[list[float], int]:
    """Send the payloads over ``concurrency`` keep-alive connections until they run out or
    ``duration`` seconds have passed; latencies and errors."""
    queue = iter(payloads)
    deadline = time.perf_counter() + duration if duration else float("inf")
    latencies: list[float] = []
    errors = 0

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for payload in queue:
            started = time.perf_counter()
            if started > deadline:
                break
            writer.write(payload)
            status, _ = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            errors += status != 200
        writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return latencies, errors


def server_processes(root: psutil.Process) -> list[psutil.Process]:
    return [root, *root.children(recursive=True)]


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with_times = proc.cpu_times()
        total += with_times.user + with_times.system
    return total


def wait_until_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit("the server exited during start-up")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("the server did not come up")


@contextlib.contextmanager
def fresh_database(url: str | None, tmp: str) -> Iterator[str]:
    """A new SQLite file, or a new PostgreSQL database next to ``url`` (dropped afterwards)."""
    if url is None:
        yield f"sqlite+aiosqlite:///{tmp}/b.db"
        return
    import asyncpg

    name = f"fhirgate_bench_{secrets.token_hex(6)}"
    admin = url.replace("postgresql+asyncpg://", "postgresql://")

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(execute(f'DROP DATABASE "{name}" WITH (FORCE)'))


def server_env(tmp: str, port: int, database_url: str) -> dict[str, str]:
    """The environment of a benchmarked ``fhirgate serve``: its own var dir, key and database."""
    return dict(
        os.environ,
        FHIRGATE_PUBLIC_URL=f"http://127.0.0.1:{port}",
        FHIRGATE_VAR_DIR=f"{tmp}/var",
        FHIRGATE_SECRET_KEY=secrets.token_hex(16),
        FHIRGATE_DATABASE_URL=database_url,
    )


def run(args: argparse.Namespace) -> Result:
    with (
        tempfile.TemporaryDirectory(prefix="fhirgate-bench-") as tmp,
        fresh_database(args.database_url, tmp) as database_url,
    ):
        port = free_port()
        env = server_env(tmp, port, database_url)
        if args.redis_url:
            env["FHIRGATE_REDIS_URL"] = args.redis_url
        env["FHIRGATE_USER_MANAGEMENT_RATE_LIMIT"] = "0"
        host = f"127.0.0.1:{port}"
        chains: list[str] = []
        if args.mode == "private_key_jwt":
            payloads = jwt_payloads(args, env, tmp, port)
        elif args.mode == "client_secret_basic":
            payloads = secret_payloads(args, env, port)
        elif args.mode in ("authorization_code", "refresh_token"):
            client_id, secret = application(env)
            total = args.requests + args.warmup
            codes = issue_codes(
                database_url,
                client_id,
                total if args.mode != "refresh_token" else 2 * args.concurrency,
            )
            bodies = [
                grant_form(client_id, secret, grant_type="authorization_code", code=code)
                for code in codes
            ]
            payloads = [request_bytes(host, "/oauth2/token", body) for body in bodies]
        else:
            authorization = secret_client(env)
        log = open(args.server_log, "wb") if args.server_log else subprocess.DEVNULL  # noqa: SIM115
        server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("fhirgate")),
                "serve",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_up(port, server)
            if args.mode == "introspect":
                payloads = introspection(port, authorization, args.requests + args.warmup)
            if args.mode == "refresh_token":
                chains = [
                    httpx.post(
                        f"http://{host}/oauth2/token",
                        content=body,
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                    ).json()["refresh_token"]
                    for body in bodies
                ]

                def refresh(token: str) -> bytes:
                    return request_bytes(
                        host,
                        "/oauth2/token",
                        grant_form(
                            client_id, secret, grant_type="refresh_token", refresh_token=token
                        ),
                    )

            procs = server_processes(psutil.Process(server.pid))
            print(
                f"warm-up {args.warmup}, then {args.requests} requests at "
                f"concurrency {args.concurrency}…",
                file=sys.stderr,
            )
            if args.mode == "refresh_token":
                warm, timed = chains[: args.concurrency], chains[args.concurrency :]
                uvloop.run(drive_refresh_chains(port, warm, refresh, args.warmup))
                cpu_before, wall_before = cpu_seconds(procs), time.perf_counter()
                latencies, errors = uvloop.run(
                    drive_refresh_chains(port, timed, refresh, args.requests, args.duration)
                )
            else:
                uvloop.run(drive(port, payloads[: args.warmup], args.concurrency))
                cpu_before, wall_before = cpu_seconds(procs), time.perf_counter()
                latencies, errors = uvloop.run(
                    drive(port, payloads[args.warmup :], args.concurrency, args.duration)
                )
            wall = time.perf_counter() - wall_before
            cpu = cpu_seconds(procs) - cpu_before
            workers = procs[1:] if args.workers > 1 else procs
            rss = max(p.memory_info().rss for p in workers) / 2**20
        finally:
            server.terminate()
            server.wait(10)
    ceiling = verify_ceiling(args.alg) if args.mode == "private_key_jwt" else 0.0
    latencies.sort()
    return Result(
        mode=args.mode,
        alg=args.alg if args.mode == "private_key_jwt" else "",
        backend="postgresql+redis" if args.database_url else "sqlite",
        workers=args.workers,
        concurrency=args.concurrency,
        requests=len(latencies),
        errors=errors,
        wall_seconds=round(wall, 2),
        server_cpu_seconds=round(cpu, 2),
        grants_per_cpu_second=round(len(latencies) / cpu, 1),
        grants_per_wall_second=round(len(latencies) / wall, 1),
        p50_ms=round(statistics.median(latencies) * 1000, 2),
        p99_ms=round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        max_rss_mb_per_worker=round(rss, 1),
        verify_ceiling_per_cpu_second=round(ceiling, 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode",
        default="private_key_jwt",
        choices=[
            "private_key_jwt",
            "client_secret_basic",
            "introspect",
            "authorization_code",
            "refresh_token",
        ],
        help="client-credentials grants with signed assertions (--alg) or HTTP Basic, "
        "introspection, code exchanges or refreshes",
    )
    parser.add_argument("--alg", default="RS384", choices=["RS384", "ES384"])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--requests", type=int, default=20_000, help="assertions to pre-sign (the most sent)"
    )
    parser.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: all requests)"
    )
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--database-url", help="a PostgreSQL server to create a fresh database on (default: SQLite)"
    )
    parser.add_argument("--redis-url")
    parser.add_argument("--server-log", help="keep the server's output in this file")
    result = run(parser.parse_args())
    print(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    main()

"""FHIR API benchmark: read-by-id and patient-scoped search per second of server CPU, with
p50/p99 latency, on a store of ``--resources`` resources.

It starts ``fhirgate serve`` on a fresh database, bulk-loads synthetic patients with their
observations straight into the tables (with the same search index rows the server writes), gets
a token, then drives ``GET`` requests over keep-alive connections at a fixed concurrency.

    python -m bench.fhir_api --resources 100000 --mode read --concurrency 32 --duration 15
    python -m bench.fhir_api --resources 100000 --mode search --concurrency 16 --duration 15
    # add --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvloop

from bench.token_endpoint import (
    cpu_seconds,
    drive,
    fhirgate,
    free_port,
    fresh_database,
    server_env,
    server_processes,
    wait_until_up,
)

OBSERVATIONS_PER_PATIENT = 9


@dataclass
class Result:
    mode: str
    backend: str
    resources: int
    concurrency: int
    requests: int
    errors: int
    wall_seconds: float
    server_cpu_seconds: float
    requests_per_cpu_second: float
    requests_per_wall_second: float
    p50_ms: float
    p99_ms: float


def _documents(count: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(type, id, content) of ``count`` resources: patients, each with observations."""
    rng = random.Random(1)
    documents = []
    while len(documents) < count:
        patient = str(uuid.uuid4())
        documents.append(("Patient", patient, {
            "resourceType": "Patient", "id": patient, "gender": rng.choice(["female", "male"]),
            "name": [{"family": f"Family{rng.randrange(1000)}"}],
        }))  # fmt: skip
        for month in range(OBSERVATIONS_PER_PATIENT):
            observation = str(uuid.uuid4())
            documents.append(("Observation", observation, {
                "resourceType": "Observation", "id": observation, "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{patient}"},
                "effectiveDateTime": f"2024-{month % 12 + 1:02d}-01",
            }))  # fmt: skip
    return documents[:count]


async def _load(database_url: str, environment_id: str, count: int) -> list[tuple[str, str]]:
    """Bulk-insert ``count`` resources with their versions and search index rows."""
    from sqlalchemy import insert, select

    from fhirgate.fhir.indexing import index
    from fhirgate.storage.db import create_engine
    from fhirgate.storage.models import (
        FhirDateIndexRow,
        FhirReferenceIndexRow,
        FhirResourceRow,
        FhirStringIndexRow,
        FhirTokenIndexRow,
        FhirVersionRow,
    )

    engine = create_engine(database_url)
    now = datetime.now(UTC)
    documents = _documents(count)
    try:
        for start in range(0, len(documents), 2000):
            batch = documents[start : start + 2000]
            async with engine.begin() as conn:
                rows = [
                    {"environment_id": environment_id, "fhir_version": "R4",
                     "resource_type": kind, "resource_id": rid, "version_id": 1,
                     "last_updated": now, "deleted": False, "content": content}
                    for kind, rid, content in batch
                ]  # fmt: skip
                await conn.execute(insert(FhirResourceRow), rows)
                ids = dict(
                    (
                        await conn.execute(
                            select(FhirResourceRow.resource_id, FhirResourceRow.row_id).where(
                                FhirResourceRow.resource_id.in_([rid for _, rid, _ in batch])
                            )
                        )
                    ).all()
                )
                await conn.execute(insert(FhirVersionRow), [
                    {"row_id": ids[rid], "version_id": 1, "last_updated": now, "method": "create",
                     "deleted": False, "content": content}
                    for _, rid, content in batch
                ])  # fmt: skip
                tables: dict[Any, list[dict[str, Any]]] = {
                    FhirStringIndexRow: [], FhirTokenIndexRow: [],
                    FhirReferenceIndexRow: [], FhirDateIndexRow: [],
                }  # fmt: skip
                for kind, rid, content in batch:
                    entries, row_id = index(kind, content), ids[rid]
                    tables[FhirStringIndexRow] += [
                        {"row_id": row_id, "name": n, "normalized": v, "exact": e}
                        for n, v, e in entries.strings
                    ]
                    tables[FhirTokenIndexRow] += [
                        {"row_id": row_id, "name": n, "system": s, "code": c}
                        for n, s, c in entries.tokens
                    ]
                    tables[FhirReferenceIndexRow] += [
                        {"row_id": row_id, "name": n, "target_type": t, "target_id": i}
                        for n, t, i in entries.references
                    ]
                    tables[FhirDateIndexRow] += [
                        {"row_id": row_id, "name": n, "low": lo, "high": hi}
                        for n, lo, hi in entries.dates
                    ]
                for table, values in tables.items():
                    if values:
                        await conn.execute(insert(table), values)
            print(f"  loaded {start + len(batch)}/{len(documents)}", file=sys.stderr)
        if engine.dialect.name == "postgresql":  # as after any bulk load (on SQLite the
            async with engine.begin() as conn:  # server refreshes statistics at start)
                await conn.exec_driver_sql("ANALYZE")
    finally:
        await engine.dispose()
    return [(kind, rid) for kind, rid, _ in documents]


async def _environment_id(database_url: str) -> str:
    from fhirgate.storage.db import create_engine
    from fhirgate.storage.repos import OrganizationRepo

    engine = create_engine(database_url)
    try:
        return (await OrganizationRepo(engine).default_environment("development")).id
    finally:
        await engine.dispose()


def _token(env: dict[str, str], port: int) -> str:
    command = ["clients", "create", "--auth", "client_secret_basic", "--name", "bench"]
    created = json.loads(fhirgate(env, *command, "--scope", "system/*.rs", "--json"))
    answer = httpx.post(
        f"http://127.0.0.1:{port}/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        auth=(created["client_id"], created["client_secret"]),
    )
    return str(answer.json()["access_token"])


def _get(host: str, path: str, token: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: application/fhir+json\r\n\r\n"
    ).encode()


def run(args: argparse.Namespace) -> Result:
    with (
        tempfile.TemporaryDirectory(prefix="fhirgate-bench-") as tmp,
        fresh_database(args.database_url, tmp) as database_url,
    ):
        port = free_port()
        env = server_env(tmp, port, database_url)
        fhirgate(env, "db", "upgrade")
        environment_id = asyncio.run(_environment_id(database_url))
        print(f"loading {args.resources} resources…", file=sys.stderr)
        loaded = asyncio.run(_load(database_url, environment_id, args.resources))
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("fhirgate")), "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_up(port, server)
            token, host = _token(env, port), f"127.0.0.1:{port}"
            rng = random.Random(2)
            if args.mode == "read":
                paths = [f"/fhir/R4/{kind}/{rid}" for kind, rid in loaded]
            else:
                patients = [rid for kind, rid in loaded if kind == "Patient"]
                paths = [f"/fhir/R4/Observation?patient={pid}" for pid in patients]
            payloads = [_get(host, rng.choice(paths), token) for _ in range(args.requests)]
            procs = server_processes(psutil.Process(server.pid))
            uvloop.run(drive(port, payloads[:500], args.concurrency, 30))  # warm-up
            cpu_before, wall_before = cpu_seconds(procs), time.perf_counter()
            latencies, errors = uvloop.run(
                drive(port, payloads[500:], args.concurrency, args.duration)
            )
            wall, cpu = time.perf_counter() - wall_before, cpu_seconds(procs) - cpu_before
        finally:
            server.terminate()
            stopping = time.perf_counter()
            server.wait(120)
            print(f"server stopped in {time.perf_counter() - stopping:.1f} s", file=sys.stderr)
    latencies.sort()
    return Result(
        mode=args.mode,
        backend="postgresql" if args.database_url else "sqlite",
        resources=args.resources,
        concurrency=args.concurrency,
        requests=len(latencies),
        errors=errors,
        wall_seconds=round(wall, 2),
        server_cpu_seconds=round(cpu, 2),
        requests_per_cpu_second=round(len(latencies) / cpu, 1),
        requests_per_wall_second=round(len(latencies) / wall, 1),
        p50_ms=round(statistics.median(latencies) * 1000, 2),
        p99_ms=round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="read", choices=["read", "search"])
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--database-url", help="a PostgreSQL server (default: SQLite)")
    print(json.dumps(asdict(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()

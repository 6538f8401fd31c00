"""``fhirgate fhir load-sample``: synthetic data in three kinds of partitions, usable at once."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner
from tests.delegation.support import Application
from tests.fhir.support import system_headers
from tests.support import BASE, PG_URL, fresh_postgres_database, require_service, start

from fhirgate.cli.main import cli
from fhirgate.config import Settings


async def test_load_sample_fills_the_organizations_and_the_users(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/sample.db"
    env = {"FHIRGATE_DATABASE_URL": url, "FHIRGATE_VAR_DIR": str(tmp_path / "var")}
    result = await asyncio.to_thread(  # the CLI runs its own event loop
        CliRunner().invoke,
        cli, ["fhir", "load-sample", "--patients", "2", "--json"], env=env,
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    loaded = json.loads(result.stdout)
    assert loaded["patients"] == 8 and loaded["resources"] > 8 * 5
    assert "8/8 patients" in result.stderr

    running, stack = await start(
        Settings(database_url=url, var_dir=tmp_path / "var", public_url=BASE)
    )
    try:
        app = loaded["application"]
        alice = Application(running.http, app["client_id"], app["client_secret"])
        code = await alice.auth_code(app_user_id="alice")
        tokens = (await alice.exchange(code.json()["code"])).json()
        as_alice = {"Authorization": f"Bearer {tokens['access_token']}"}
        mine = await running.http.get("/r4/Patient", headers=as_alice)
        assert mine.json()["total"] == 2  # alice's own patients only
        system = await system_headers(running)  # the default organization
        everything = await running.http.get("/fhir/R4/Patient", headers=system)
        assert everything.json()["total"] == 6  # its own 2, and alice's and bob's 2 each
        vitals = await running.http.get("/fhir/R4/Observation?code=http://loinc.org|8867-4",
                                        headers=system)  # fmt: skip
        assert vitals.json()["total"] == 6
    finally:
        await stack.aclose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_load_sample_leaves_the_planner_statistics_up_to_date(
    tmp_path: Path, backend: str
) -> None:
    """A bulk load ends with ``ANALYZE``: the first searches are planned for the data, not for
    the empty tables the migrations made."""
    env = {"FHIRGATE_VAR_DIR": str(tmp_path / "var")}
    if backend == "sqlite":
        env["FHIRGATE_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/sample.db"
    else:
        url = await fresh_postgres_database(require_service(PG_URL, "PostgreSQL"))
        env["FHIRGATE_DATABASE_URL"] = url
        env["FHIRGATE_SECRET_KEY"] = secrets.token_hex(16)
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli, ["fhir", "load-sample", "--patients", "1", "--json"], env=env,
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "planner's statistics" in result.stderr
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "sample.db") as db:
            tables = {row[0] for row in db.execute("SELECT tbl FROM sqlite_stat1")}
    else:
        conn = await asyncpg.connect(env["FHIRGATE_DATABASE_URL"].replace("+asyncpg", ""))
        try:
            rows = await conn.fetch(
                "SELECT relname FROM pg_class WHERE relkind = 'r' AND reltuples > 0"
            )
        finally:
            await conn.close()
        tables = {row["relname"] for row in rows}
    assert {"fhir_resources", "fhir_resource_versions", "fhir_index_tokens"} <= tables, tables


def test_the_same_seed_gives_the_same_people(tmp_path: Path) -> None:
    from fhirgate.fhir.sample import sample_patients

    first = [p.patient for p in sample_patients(5, seed=7)]
    again = [p.patient for p in sample_patients(5, seed=7)]
    other = [p.patient for p in sample_patients(5, seed=8)]
    assert first == again and first != other

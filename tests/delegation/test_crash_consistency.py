"""Crash consistency of the code exchange and of refresh (issue 4, item 8), against real servers.

Each test runs ``fhirgate serve`` as a real process on a fresh PostgreSQL database, registers an
application with the ``fhirgate`` CLI and creates a user through the user-management API (which
answers with a code). It then sends a token request, kills the whole server process group with
SIGKILL at one point of the request, starts a new server on the same database and checks the
invariant: either the code (refresh token) is unused and one retry redeems it, or it is spent
and the grant it produced is recorded (its refresh token stored in the family) and is revoked
when the spent credential is presented again. At no point are there two live families.

How the server is stopped at an exact point inside its transaction: the test holds a row lock
that the server's next statement needs and waits until PostgreSQL shows the server's backend (the
one whose client port belongs to the server process) waiting on that lock, running the expected
statement and blocked by the test's connection. Then the server is killed; the lock is released;
the orphaned backend runs that statement, finds its client gone and ends. A transaction left
open rolls back (the code stays unused); a statement that is its own transaction commits whole
(refresh on PostgreSQL is one autocommit statement: the token is spent and its successor
recorded). The requirement allows both outcomes, so the tests accept either, check whichever
it is completely, and then exercise it: a retry that redeems, or a reuse that revokes.

- before anything: the code row itself is locked, the server's ``UPDATE authorization_codes``
  waits;
- after spending, before commit: ``INSERT INTO user_grants`` checks its foreign key with
  ``FOR KEY SHARE`` on the ``app_users`` row, which the test holds ``FOR UPDATE``; for refresh,
  ``INSERT INTO opaque_tokens`` does the same on the ``clients`` row. That the code (refresh
  token) was already spent is shown by its row being locked by the server (``NOWAIT`` fails)
  while the test still reads it unspent (the server's transaction is uncommitted);
- after commit, before the response: there is no hook between the commit and the response, so
  the request goes over a raw socket, the test polls the database until the transaction is
  visible (committed) and kills the server at once. Whether the response left the server before
  the kill is up to the race; the checks hold either way, and tokens that did arrive must end up
  dead as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import asyncpg
import httpx
import psutil  # type: ignore[import-untyped]
import pytest

from fhirgate.storage.opaque_tokens import REUSE_GRACE, hash_token
from tests.support import PG_URL, fresh_postgres_database, require_service

FHIRGATE = str(Path(sys.executable).with_name("fhirgate"))
#: One issuer for every server of a test, so that tokens of a killed server are checked by the
#: next one exactly as they would be by a replica (a 401 then means "revoked", not "foreign").
PUBLIC_URL = "http://fhirgate.crash.test"
USER = "/user-management/v1/user"
_T = TypeVar("_T")


# --------------------------------------------------------------------------- database and servers


@dataclass(frozen=True)
class Database:
    """A fresh PostgreSQL database, its plain (asyncpg) DSN and the servers' environment."""

    url: str
    dsn: str
    env: dict[str, str]
    logs: Path


def _run_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` on a private event loop (module fixtures run outside the tests' loops)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Database:
    base = require_service(PG_URL, "PostgreSQL")
    url = _run_loop(fresh_postgres_database(base))
    logs = tmp_path_factory.mktemp("crash")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("FHIRGATE_") or name.startswith("FHIRGATE_TEST_")
    }
    env.update(
        FHIRGATE_DATABASE_URL=url,
        FHIRGATE_SECRET_KEY=secrets.token_urlsafe(32),
        FHIRGATE_VAR_DIR=str(logs / "var"),
        FHIRGATE_PUBLIC_URL=PUBLIC_URL,
    )
    cli(env, "db", "upgrade")
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    return Database(url, dsn, env, logs)


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([FHIRGATE, *args], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running ``fhirgate serve``, leader of its own process group."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> int:
        """SIGKILL the whole process group; the server's exit status."""
        os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout=10)

    def database_ports(self) -> set[int]:
        """Local ports of the server's TCP connections (its PostgreSQL connections among them)."""
        process = psutil.Process(self.process.pid)
        return {c.laddr.port for c in process.net_connections(kind="tcp") if c.raddr}


@contextlib.contextmanager
def serve(database: Database) -> Iterator[Server]:
    """``fhirgate serve`` on ``database``, ready (``/healthz`` answers); stopped on exit if it
    is still running."""
    port = free_port()
    log = database.logs / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [FHIRGATE, "serve", "--port", str(port)],
            env=database.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(port, process, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.base}/healthz", timeout=0.5).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


# ------------------------------------------------------------------------------ the application


@dataclass(frozen=True)
class Application:
    """An application registered with ``fhirgate clients create`` and one of its users."""

    client_id: str
    secret: str

    @property
    def credentials(self) -> dict[str, str]:
        return {"client_id": self.client_id, "client_secret": self.secret}

    def create_user(self, server: Server) -> tuple[int, str]:
        """A new user: its ``oneup_user_id`` and first code."""
        created = httpx.post(
            f"{server.base}{USER}",
            data={"app_user_id": f"user-{uuid.uuid4().hex[:8]}"},
            headers=self.credentials,
        )
        assert created.status_code == 200, created.text
        return int(created.json()["oneup_user_id"]), str(created.json()["code"])

    def exchange_form(self, code: str) -> dict[str, str]:
        return {"grant_type": "authorization_code", "code": code, **self.credentials}

    def refresh_form(self, refresh_token: str) -> dict[str, str]:
        return {"grant_type": "refresh_token", "refresh_token": refresh_token, **self.credentials}

    def token(self, server: Server, form: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{server.base}/oauth2/token", data=form)


@pytest.fixture
def application(database: Database) -> Application:
    created = json.loads(
        cli(
            database.env,
            "clients",
            "create",
            "--auth",
            "client_secret_post",
            "--name",
            "crash-test app",
            "--scope",
            "user/*.*",
            "--json",
        )
    )
    return Application(created["client_id"], created["client_secret"])


def whoami(server: Server, access_token: str) -> int:
    answer = httpx.get(f"{server.base}/whoami", headers={"Authorization": f"Bearer {access_token}"})
    return answer.status_code


def assert_invalid_grant(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant", response.text


# -------------------------------------------------------------------- a token request on a socket


def send_raw(server: Server, form: dict[str, str]) -> socket.socket:
    """Send ``POST /oauth2/token`` and leave the answer unread."""
    body = urlencode(form).encode()
    head = (
        f"POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(head + body)
    return sock


def read_rest(sock: socket.socket) -> bytes:
    """Whatever reached the socket before the server died."""
    chunks: list[bytes] = []
    with contextlib.suppress(ConnectionResetError), sock:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def complete_answer(raw: bytes) -> tuple[int, dict[str, Any]] | None:
    """The status and JSON body of a complete HTTP response; ``None`` if none arrived."""
    head, found, body = raw.partition(b"\r\n\r\n")
    if not found:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    if len(body) < int(headers.get("content-length", "0")):
        return None
    return int(lines[0].split(" ")[1]), json.loads(body)


# -------------------------------------------------------------------------- database inspection


@dataclass(frozen=True)
class Backend:
    """A PostgreSQL backend of the server, waiting for a lock."""

    pid: int
    wait_event_type: str
    query: str
    blockers: list[int]


async def blocked_backend(db: Any, server: Server, holder_pid: int) -> Backend:
    """The server's backend once it waits for a lock that ``holder_pid`` holds; it is told
    apart from every other backend by its client port, which belongs to the server process."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = await db.fetch(
            "SELECT pid, client_port, wait_event_type, query, pg_blocking_pids(pid) AS blockers "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        ports = server.database_ports()
        for row in rows:
            if row["client_port"] in ports and holder_pid in row["blockers"]:
                return Backend(
                    row["pid"], row["wait_event_type"], row["query"], list(row["blockers"])
                )
        await asyncio.sleep(0.02)
    activity = await db.fetch("SELECT * FROM pg_stat_activity WHERE datname = current_database()")
    pytest.fail(f"the server never waited for the test's lock: {[dict(r) for r in activity]}")


async def backend_gone(db: Any, pid: int) -> None:
    """Wait until the killed server's orphaned backend has ended (and so its transaction)."""
    deadline = time.monotonic() + 10
    while await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
        assert time.monotonic() < deadline, f"backend {pid} outlived its killed client"
        await asyncio.sleep(0.02)


LOCK_PROBES = {
    "authorization_codes": (
        "SELECT 1 FROM authorization_codes WHERE code_hash = $1 FOR UPDATE NOWAIT"
    ),
    "opaque_tokens": "SELECT 1 FROM opaque_tokens WHERE token_hash = $1 FOR UPDATE NOWAIT",
}


async def locked_by_another(db: Any, table: str, token_hash: str) -> bool:
    """Whether another transaction holds a lock on the row of ``table`` keyed by ``token_hash``
    (it updated the row and has not committed)."""
    tx = db.transaction()
    await tx.start()
    try:
        await db.execute(LOCK_PROBES[table], token_hash)
        return False
    except asyncpg.exceptions.LockNotAvailableError:
        return True
    finally:
        await tx.rollback()


class RowLock:
    """A row lock held by the test, in a transaction of its own connection."""

    def __init__(self, dsn: str, sql: str, *args: object) -> None:
        self._dsn, self._sql, self._args = dsn, sql, args
        self.conn: Any = None
        self._tx: Any = None

    async def __aenter__(self) -> RowLock:
        self.conn = await asyncpg.connect(self._dsn)
        self._tx = self.conn.transaction()
        await self._tx.start()
        locked = await self.conn.fetch(self._sql, *self._args)
        assert len(locked) == 1, f"lock not taken: {self._sql} {self._args}"
        return self

    @property
    def pid(self) -> int:
        return int(self.conn.get_server_pid())

    async def release(self) -> None:
        if self._tx is not None:
            await self._tx.rollback()
            self._tx = None
        await self.conn.close()

    async def __aexit__(self, *exc: object) -> None:
        if not self.conn.is_closed():
            await self.release()


@contextlib.asynccontextmanager
async def observer(database: Database) -> Any:
    conn = await asyncpg.connect(database.dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def live_families(db: Any, app: Application, user: int) -> int:
    """Live grants (token families) of the application for the user, after checking that every
    refresh token of the application belongs to a recorded grant (so it can be revoked) and
    that there is never more than one live family."""
    orphans = await db.fetchval(
        "SELECT count(*) FROM opaque_tokens t WHERE t.client_id = $1 AND NOT EXISTS "
        "(SELECT 1 FROM user_grants g WHERE g.grant_id = t.family_id)",
        app.client_id,
    )
    assert orphans == 0, "refresh tokens outside any recorded grant"
    live = int(
        await db.fetchval(
            "SELECT count(*) FROM user_grants WHERE client_id = $1 AND oneup_user_id = $2 "
            "AND revoked_at IS NULL",
            app.client_id,
            user,
        )
    )
    assert live <= 1, f"{live} live families"
    return live


async def code_row(db: Any, code: str) -> Any:
    return await db.fetchrow(
        "SELECT consumed_at, grant_id FROM authorization_codes WHERE code_hash = $1",
        hash_token(code),
    )


async def refresh_row(db: Any, token: str) -> Any:
    return await db.fetchrow(
        "SELECT family_id, consumed_at, revoked_at FROM opaque_tokens WHERE token_hash = $1",
        hash_token(token),
    )


async def live_refresh_tokens(db: Any, family: str) -> list[str]:
    rows = await db.fetch(
        "SELECT token_hash FROM opaque_tokens WHERE family_id = $1 AND kind = 'refresh' "
        "AND consumed_at IS NULL AND revoked_at IS NULL",
        family,
    )
    return [row["token_hash"] for row in rows]


async def grant_count(db: Any, app: Application, user: int) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM user_grants WHERE client_id = $1 AND oneup_user_id = $2",
            app.client_id,
            user,
        )
    )


def assert_killed(server: Server) -> None:
    status = server.kill()
    assert status == -signal.SIGKILL, f"server exit status {status}, not killed"


# ---------------------------------------------------------------------------------- the outcomes

UNUSED, SPENT = "unused: one retry redeems it", "spent: its family is recorded and revocable"


async def code_outcome(
    db: Any,
    database: Database,
    app: Application,
    user: int,
    code: str,
    answer: tuple[int, dict[str, Any]] | None,
) -> str:
    """After the server died during the exchange of ``code`` (``answer``: what its client
    received), check on a new server that the state is one of the two the requirement allows,
    and which: the code unused (nothing recorded, one retry redeems it, a second is refused and,
    as reuse, ends the grant) or spent (its grant recorded with one live refresh token, and
    presenting the code again revokes the grant with every token the client may hold)."""
    row = await code_row(db, code)
    if row["consumed_at"] is None:
        assert answer is None, "tokens were answered for a code that is not spent"
        assert row["grant_id"] is None
        assert await grant_count(db, app, user) == 0
        assert await live_families(db, app, user) == 0
        with serve(database) as second:
            retry = app.token(second, app.exchange_form(code))
            assert retry.status_code == 200, retry.text
            tokens = retry.json()
            assert whoami(second, tokens["access_token"]) == 200
            assert await live_families(db, app, user) == 1
            family = (await code_row(db, code))["grant_id"]
            assert await live_refresh_tokens(db, family) == [hash_token(tokens["refresh_token"])]

            assert_invalid_grant(app.token(second, app.exchange_form(code)))
            assert await live_families(db, app, user) == 0
            assert await grant_count(db, app, user) == 1
            assert whoami(second, tokens["access_token"]) == 401
        return UNUSED

    family = row["grant_id"]
    assert await grant_count(db, app, user) == 1
    assert await live_families(db, app, user) == 1
    recorded = await live_refresh_tokens(db, family)
    assert len(recorded) == 1, "the grant's refresh token is not recorded"
    with serve(database) as second:
        if answer is not None:  # the response left before the kill: its tokens work ...
            assert answer[0] == 200, answer
            assert hash_token(answer[1]["refresh_token"]) == recorded[0]
            assert whoami(second, answer[1]["access_token"]) == 200
        assert_invalid_grant(app.token(second, app.exchange_form(code)))

        revoked = await db.fetchval(
            "SELECT revoked_at FROM user_grants WHERE grant_id = $1", family
        )
        assert revoked is not None, "presenting the spent code again did not revoke its grant"
        assert await live_refresh_tokens(db, family) == []
        assert await live_families(db, app, user) == 0
        assert await grant_count(db, app, user) == 1
        if answer is not None:  # ... until the code's reuse revokes them
            assert whoami(second, answer[1]["access_token"]) == 401
            assert_invalid_grant(app.token(second, app.refresh_form(answer[1]["refresh_token"])))
    return SPENT


async def refresh_outcome(
    db: Any,
    database: Database,
    app: Application,
    user: int,
    family: str,
    old: dict[str, Any],
    answer: tuple[int, dict[str, Any]] | None,
) -> str:
    """After the server died while refreshing with ``old["refresh_token"]``, check on a new
    server that the state is one the requirement allows, and which: the token unspent (the only
    live one of its family; one retry redeems it, leaving exactly one live token) or spent (its
    successor recorded as the family's only live token; presenting the old token again after
    the reuse grace revokes the family with every token the client may hold)."""
    old_hash = hash_token(old["refresh_token"])
    row = await refresh_row(db, old["refresh_token"])
    live = await live_refresh_tokens(db, family)
    assert row["revoked_at"] is None
    assert await live_families(db, app, user) == 1
    if row["consumed_at"] is None:
        assert answer is None, "tokens were answered for a refresh token that is not spent"
        assert live == [old_hash]
        with serve(database) as second:
            assert whoami(second, old["access_token"]) == 200
            retry = app.token(second, app.refresh_form(old["refresh_token"]))
            assert retry.status_code == 200, retry.text
            new = retry.json()
            assert await live_refresh_tokens(db, family) == [hash_token(new["refresh_token"])]
            assert whoami(second, new["access_token"]) == 200
            assert await live_families(db, app, user) == 1

            # presented again at once: refused; within the reuse grace nothing is revoked
            assert_invalid_grant(app.token(second, app.refresh_form(old["refresh_token"])))
            assert await live_refresh_tokens(db, family) == [hash_token(new["refresh_token"])]
            assert await live_families(db, app, user) == 1
        return UNUSED

    assert len(live) == 1 and live != [old_hash], "the successor token is not recorded"
    # past the reuse grace, as if the client retried later (rather than sleeping)
    await db.execute(
        "UPDATE opaque_tokens SET consumed_at = consumed_at - $2 WHERE token_hash = $1",
        old_hash,
        REUSE_GRACE + 1,
    )
    with serve(database) as second:
        if answer is not None:  # the response left before the kill: its tokens work ...
            assert answer[0] == 200, answer
            assert hash_token(answer[1]["refresh_token"]) == live[0]
            assert whoami(second, answer[1]["access_token"]) == 200
        assert_invalid_grant(app.token(second, app.refresh_form(old["refresh_token"])))

        revoked = await db.fetchval(
            "SELECT revoked_at FROM user_grants WHERE grant_id = $1", family
        )
        assert revoked is not None, "reusing the spent refresh token did not revoke its family"
        assert await live_refresh_tokens(db, family) == []
        assert await live_families(db, app, user) == 0
        assert whoami(second, old["access_token"]) == 401
        if answer is not None:  # ... until the old token's reuse revokes the family
            assert whoami(second, answer[1]["access_token"]) == 401
            assert_invalid_grant(app.token(second, app.refresh_form(answer[1]["refresh_token"])))
    return SPENT


def exchange(server: Server, app: Application) -> tuple[int, str, dict[str, Any]]:
    """A new user's code, exchanged: the user, the code and the token response."""
    user, code = app.create_user(server)
    exchanged = app.token(server, app.exchange_form(code))
    assert exchanged.status_code == 200, exchanged.text
    return user, code, exchanged.json()


# --------------------------------------------------------------------------------- the scenarios


async def test_exchange_killed_before_spending_leaves_the_code_redeemable_or_revocable(
    database: Database, application: Application
) -> None:
    async with observer(database) as db:
        with serve(database) as first:
            user, code = application.create_user(first)
            async with RowLock(
                database.dsn,
                "SELECT 1 FROM authorization_codes WHERE code_hash = $1 FOR UPDATE",
                hash_token(code),
            ) as lock:
                sock = send_raw(first, application.exchange_form(code))
                backend = await blocked_backend(db, first, lock.pid)
                assert "UPDATE authorization_codes" in backend.query, backend.query
                assert (await code_row(db, code))["consumed_at"] is None
                assert await live_families(db, application, user) == 0
                assert_killed(first)
                await lock.release()
            await backend_gone(db, backend.pid)
        assert read_rest(sock) == b"", "the killed server answered"
        assert await code_outcome(db, database, application, user, code, None) in (UNUSED, SPENT)


async def test_exchange_killed_after_spending_before_commit_leaves_the_code_redeemable_or_revocable(
    database: Database, application: Application
) -> None:
    async with observer(database) as db:
        with serve(database) as first:
            user, code = application.create_user(first)
            async with RowLock(
                database.dsn, "SELECT 1 FROM app_users WHERE oneup_user_id = $1 FOR UPDATE", user
            ) as lock:
                sock = send_raw(first, application.exchange_form(code))
                backend = await blocked_backend(db, first, lock.pid)
                # the code is spent inside the server's open transaction: its row is locked by
                # that transaction, yet from outside it still reads unused (uncommitted)
                assert "INSERT INTO user_grants" in backend.query, backend.query
                code_hash = hash_token(code)
                assert await locked_by_another(db, "authorization_codes", code_hash)
                assert (await code_row(db, code))["consumed_at"] is None
                assert await live_families(db, application, user) == 0
                assert_killed(first)
                await lock.release()
            await backend_gone(db, backend.pid)
        assert read_rest(sock) == b"", "the killed server answered"
        assert await code_outcome(db, database, application, user, code, None) in (UNUSED, SPENT)


async def test_refresh_killed_after_spending_before_commit_leaves_the_token_redeemable_or_revocable(
    database: Database, application: Application
) -> None:
    async with observer(database) as db:
        with serve(database) as first:
            user, code, old = exchange(first, application)
            family = (await code_row(db, code))["grant_id"]
            async with RowLock(
                database.dsn,
                "SELECT 1 FROM clients WHERE client_id = $1 FOR UPDATE",
                application.client_id,
            ) as lock:
                sock = send_raw(first, application.refresh_form(old["refresh_token"]))
                backend = await blocked_backend(db, first, lock.pid)
                # the next token's insert waits (its foreign key check) after the old token
                # was spent: that row is locked by the server, yet still reads unspent
                assert "INSERT INTO opaque_tokens" in backend.query, backend.query
                old_hash = hash_token(old["refresh_token"])
                assert await locked_by_another(db, "opaque_tokens", old_hash)
                assert (await refresh_row(db, old["refresh_token"]))["consumed_at"] is None
                assert await live_families(db, application, user) == 1
                assert_killed(first)
                await lock.release()
            await backend_gone(db, backend.pid)
        assert read_rest(sock) == b"", "the killed server answered"
        outcome = await refresh_outcome(db, database, application, user, family, old, None)
        assert outcome in (UNUSED, SPENT)


async def test_exchange_killed_after_commit_leaves_a_grant_that_the_retry_revokes(
    database: Database, application: Application
) -> None:
    async with observer(database) as db:
        with serve(database) as first:
            user, code = application.create_user(first)
            sock = send_raw(first, application.exchange_form(code))
            deadline = time.monotonic() + 10
            while True:  # committed: the spent code and its grant are visible from outside
                spent = (await code_row(db, code))["consumed_at"]
                if spent is not None and await grant_count(db, application, user):
                    break
                assert time.monotonic() < deadline, "the exchange never committed"
            assert_killed(first)
        answer = complete_answer(read_rest(sock))
        assert await code_outcome(db, database, application, user, code, answer) == SPENT


async def test_refresh_killed_after_commit_leaves_a_family_that_reuse_revokes(
    database: Database, application: Application
) -> None:
    async with observer(database) as db:
        with serve(database) as first:
            user, code, old = exchange(first, application)
            family = (await code_row(db, code))["grant_id"]
            old_hash = hash_token(old["refresh_token"])
            sock = send_raw(first, application.refresh_form(old["refresh_token"]))
            deadline = time.monotonic() + 10
            while True:  # committed: the old token spent and its successor stored
                spent = (await refresh_row(db, old["refresh_token"]))["consumed_at"]
                if spent is not None and await live_refresh_tokens(db, family) != [old_hash]:
                    break
                assert time.monotonic() < deadline, "the refresh never committed"
            assert_killed(first)
        answer = complete_answer(read_rest(sock))
        outcome = await refresh_outcome(db, database, application, user, family, old, answer)
        assert outcome == SPENT

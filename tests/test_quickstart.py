"""The README's quickstart, end to end, against a started ``fhirgate serve``:
key pair → client → token (CLI) → protected call; and the same server's discovery."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

FHIRGATE = str(Path(sys.executable).with_name("fhirgate"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    base: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]

    def stop_and_read_log(self) -> str:
        """Stop the server; everything it wrote to stdout and stderr."""
        self.process.terminate()
        return self.process.communicate(timeout=10)[0].decode()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with start_served(tmp_path) as running:
        yield running


@contextlib.contextmanager
def start_served(tmp_path: Path, **settings: str) -> Iterator[Served]:
    """``fhirgate serve`` on SQLite under ``tmp_path`` with extra ``FHIRGATE_*`` settings."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ,
        FHIRGATE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/q.db",
        FHIRGATE_VAR_DIR=str(tmp_path / "var"),
        FHIRGATE_PUBLIC_URL=base,
        **settings,
    )
    env.pop("FHIRGATE_REDIS_URL", None)
    server = subprocess.Popen(
        [FHIRGATE, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            server.kill()
            pytest.fail(f"server did not start: {server.communicate()[0].decode()[-2000:]}")
        yield Served(base, env, server)
    finally:
        if server.poll() is None:
            server.terminate()
            server.communicate(timeout=10)


@contextlib.contextmanager
def start_served_with_log(tmp_path: Path, **settings: str) -> Iterator[tuple[Served, list[str]]]:
    """:func:`start_served`, and its output collected line by line as it is written (a full
    pipe would stall the server), for tests that wait for what it logs."""
    with start_served(tmp_path, **settings) as served:
        log: list[str] = []
        stdout = served.process.stdout
        assert stdout is not None

        def collect() -> None:
            for line in iter(stdout.readline, b""):
                log.append(line.decode(errors="replace"))

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        try:
            yield served, log
        finally:  # stopped here, so start_served does not read the pipe the thread reads
            served.process.terminate()
            served.process.wait(timeout=10)
            reader.join(timeout=10)


def run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([FHIRGATE, *args], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart_keygen_client_token_call(served: Served, tmp_path: Path) -> None:
    base, env = served.base, served.env
    key, jwks = tmp_path / "my-key.pem", tmp_path / "my-jwks.json"
    run(
        env,
        "keys",
        "generate",
        "--alg",
        "RS384",
        "--kid",
        "my-key",
        "--private-key-out",
        str(key),
        "--jwks-out",
        str(jwks),
    )
    created = json.loads(
        run(
            env,
            "clients",
            "create",
            "--auth",
            "private_key_jwt",
            "--name",
            "My backend",
            "--jwks-file",
            str(jwks),
            "--scope",
            "system/*.rs",
            "--json",
        )
    )
    token = run(
        env,
        "token",
        "--client-id",
        created["client_id"],
        "--private-key",
        str(key),
        "--kid",
        "my-key",
        "--scope",
        "system/Patient.rs",
    ).strip()
    who = httpx.get(f"{base}/whoami", headers={"Authorization": f"Bearer {token}"})
    assert who.status_code == 200, who.text
    assert who.json()["client_id"] == created["client_id"]
    assert who.json()["scope"] == "system/Patient.rs"
    smart = httpx.get(f"{base}/.well-known/smart-configuration").json()
    assert smart["token_endpoint"] == f"{base}/oauth2/token"
    log = served.stop_and_read_log()
    issued = next(line for line in log.splitlines() if "token issued" in line)
    assert f"client_id={created['client_id']}" in issued
    assert token not in log


def test_token_command_reports_oauth_errors_and_the_server_logs_why(
    served: Served, tmp_path: Path
) -> None:
    env = served.env
    key, jwks = tmp_path / "k.pem", tmp_path / "k.json"
    run(
        env,
        "keys",
        "generate",
        "--kid",
        "k",
        "--private-key-out",
        str(key),
        "--jwks-out",
        str(jwks),
    )
    done = subprocess.run(
        [FHIRGATE, "token", "--client-id", "nobody", "--private-key", str(key), "--kid", "k"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "invalid_client" in done.stderr
    rejected = [line for line in served.stop_and_read_log().splitlines() if "rejected" in line]
    assert len(rejected) == 1
    assert "check=key_not_found" in rejected[0]
    assert "detail=\"no active client 'nobody'\"" in rejected[0]


def test_cli_token_with_a_client_secret(served: Served) -> None:
    """``fhirgate token --client-secret`` (here from FHIRGATE_CLIENT_SECRET) gets a token
    with HTTP Basic; a wrong secret exits 1 with the OAuth error; no method exits 2."""
    created = json.loads(
        run(
            served.env,
            "clients",
            "create",
            "--auth",
            "client_secret_basic",
            "--name",
            "s",
            "--scope",
            "system/Patient.rs",
            "--json",
        )
    )
    token_url = f"{served.base}/oauth2/token"
    env = {**served.env, "FHIRGATE_CLIENT_SECRET": created["client_secret"]}
    args = ("token", "--client-id", created["client_id"], "--token-url", token_url)
    answer = json.loads(run(env, *args, "--scope", "system/Patient.rs", "--json"))
    assert answer["expires_in"] == 3600
    who = httpx.get(
        f"{served.base}/whoami", headers={"Authorization": f"Bearer {answer['access_token']}"}
    )
    assert who.json()["client_id"] == created["client_id"]
    wrong = subprocess.run(
        [FHIRGATE, *args, "--client-secret", "not-the-secret"],
        env=served.env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert wrong.returncode == 1
    assert "invalid_client" in wrong.stderr
    assert "not-the-secret" not in wrong.stderr
    neither = subprocess.run(
        [FHIRGATE, *args], env=served.env, capture_output=True, text=True, check=False
    )
    assert neither.returncode == 2
    assert "--client-secret" in neither.stderr

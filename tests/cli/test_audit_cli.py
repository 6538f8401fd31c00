"""``fhirgate audit verify``: seals what was written, then checks the whole chain."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from click.testing import CliRunner, Result
from tests.support import BASE

from fhirgate.cli.main import cli


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_verify_passes_then_reports_an_edit(tmp_path: Path) -> None:
    env = {
        "FHIRGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/audit.db",
        "FHIRGATE_VAR_DIR": str(tmp_path / "var"),
        "FHIRGATE_PUBLIC_URL": BASE,
    }
    for name in ("one", "two", "three"):  # each creation is an audited admin change
        assert invoke(env, "clients", "create", "--name", name, "--auth",
                      "client_secret_basic", "--json").exit_code == 0  # fmt: skip
    intact = invoke(env, "audit", "verify", "--json")
    assert intact.exit_code == 0, intact.output
    assert json.loads(intact.output) == {"checked": 3, "intact": True, "problems": []}

    with sqlite3.connect(tmp_path / "audit.db") as db:
        db.execute("UPDATE audit_events SET actor = 'someone else' WHERE chain_seq = 2")
    broken = invoke(env, "audit", "verify")
    assert broken.exit_code == 1
    assert "was altered" in broken.output

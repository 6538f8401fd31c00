"""``fhirgate audit seal | checkpoint | verify``: verify checks without sealing, against the
var directory's checkpoints or one the operator kept."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from click.testing import CliRunner, Result
from tests.support import BASE

from fhirgate.cli.main import cli


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def environment(tmp_path: Path) -> dict[str, str]:
    env = {
        "FHIRGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/audit.db",
        "FHIRGATE_VAR_DIR": str(tmp_path / "var"),
        "FHIRGATE_PUBLIC_URL": BASE,
    }
    for name in ("one", "two", "three"):  # each creation is an audited admin change
        assert invoke(env, "clients", "create", "--name", name, "--auth",
                      "client_secret_basic", "--json").exit_code == 0  # fmt: skip
    return env


def test_verify_checks_unsealed_rows_too_and_never_seals(tmp_path: Path) -> None:
    env = environment(tmp_path)
    intact = invoke(env, "audit", "verify", "--json")
    assert intact.exit_code == 0, intact.output
    assert json.loads(intact.output) == {"checked": 3, "intact": True, "problems": []}
    with sqlite3.connect(tmp_path / "audit.db") as db:
        assert (
            db.execute("SELECT count(*) FROM audit_events WHERE chain_seq IS NULL").fetchone()[0]
            == 3
        )
        db.execute("UPDATE audit_events SET actor = 'someone else' WHERE id = 2")
    broken = invoke(env, "audit", "verify")
    assert broken.exit_code == 1
    assert "row 2 (not yet sealed) was altered" in broken.output


def test_seal_then_verify_reports_an_edit(tmp_path: Path) -> None:
    env = environment(tmp_path)
    assert "3 audit rows sealed." in invoke(env, "audit", "seal").output
    assert invoke(env, "audit", "verify").exit_code == 0
    with sqlite3.connect(tmp_path / "audit.db") as db:
        db.execute("UPDATE audit_events SET actor = 'someone else' WHERE chain_seq = 2")
    broken = invoke(env, "audit", "verify")
    assert broken.exit_code == 1
    assert "(chain 2) was altered" in broken.output


def test_a_kept_checkpoint_finds_a_truncated_chain(tmp_path: Path) -> None:
    env = environment(tmp_path)
    invoke(env, "audit", "seal")
    printed = invoke(env, "audit", "checkpoint", "--json")
    assert printed.exit_code == 0, printed.output
    kept = json.loads(printed.output)
    assert kept["seq"] == 3 and kept["checkpoint"].startswith("fhirgate-audit-checkpoint.")
    (tmp_path / "kept.txt").write_text(kept["checkpoint"] + "\n")

    with sqlite3.connect(tmp_path / "audit.db") as db:  # cut the newest row, head moved back
        db.execute("DELETE FROM audit_events WHERE chain_seq = 3")
        db.execute(
            "UPDATE audit_chain SET last_seq = 2, last_hash ="
            " (SELECT chain_hash FROM audit_events WHERE chain_seq = 2)"
        )
    (tmp_path / "var" / "audit-checkpoints").unlink()  # the attacker removed these too
    assert invoke(env, "audit", "verify").exit_code == 0  # nothing left to tell
    for given in (kept["checkpoint"], str(tmp_path / "kept.txt")):
        broken = invoke(env, "audit", "verify", "--checkpoint", given)
        assert broken.exit_code == 1
        assert "rows 3-3 of the chain were removed" in broken.output


def test_a_forged_checkpoint_is_refused(tmp_path: Path) -> None:
    env = environment(tmp_path)
    invoke(env, "audit", "seal")
    real = json.loads(invoke(env, "audit", "checkpoint", "--json").output)["checkpoint"]
    parts = real.split(".")
    parts[2] = "99"  # claims a longer chain
    forged = invoke(env, "audit", "verify", "--checkpoint", ".".join(parts))
    assert forged.exit_code == 1
    assert "signature does not verify" in forged.output
    missing = invoke(env, "audit", "verify", "--checkpoint", str(tmp_path / "nothing"))
    assert missing.exit_code == 1 and "neither a checkpoint nor a file" in missing.output

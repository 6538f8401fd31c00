"""``fhirgate audit …``: check that the audit log has not been altered."""

from __future__ import annotations

import click

from fhirgate.cli.context import Storage, emit, run_storage
from fhirgate.oauth.keys import derive_key, server_secret
from fhirgate.storage.audit import AuditLog, Verification

__all__ = ["audit"]


@click.group()
def audit() -> None:
    """The audit log (every FHIR interaction, token issue, failure and admin change)."""


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def verify(as_json: bool) -> None:
    """Seal the rows written so far into the chain, then recompute the whole chain.

    Exit code 1 when a sealed row was altered, removed or reordered. Needs the server's
    FHIRGATE_SECRET_KEY (the chain is keyed with it).
    """

    async def job(storage: Storage) -> Verification:
        try:
            key = derive_key(server_secret(storage.settings), b"fhirgate audit chain")
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from exc
        log = AuditLog(storage.engine, key)
        await log.seal()
        return await log.verify()

    result = run_storage(job)
    data = {"checked": result.checked, "intact": result.intact, "problems": result.problems}
    text = f"{result.checked} audit rows checked: " + (
        "the chain is intact." if result.intact else "\n".join(result.problems)
    )
    emit(data, as_json, text)
    if not result.intact:
        raise SystemExit(1)

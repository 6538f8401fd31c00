"""``fhirgate audit …``: seal the log, print its latest checkpoint, verify that nothing in it
was altered, removed or rewritten."""

from __future__ import annotations

from pathlib import Path

import click

from fhirgate.cli.context import Storage, emit, run_storage
from fhirgate.storage.audit import Checkpoint, Verification

__all__ = ["audit"]


@click.group()
def audit() -> None:
    """The audit log (every FHIR interaction, token issue, failure and admin change)."""


@audit.command("seal")
def seal() -> None:
    """Seal the rows written since the last seal into the chain (the server does this every
    second) and append a checkpoint to the var directory's audit-checkpoints file."""

    async def job(storage: Storage) -> int:
        return await storage.audit.seal()

    click.echo(f"{run_storage(job)} audit rows sealed.")


@audit.command("checkpoint")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def checkpoint(as_json: bool) -> None:
    """Print the latest checkpoint of the chain (from the var directory's audit-checkpoints
    file). Keep it somewhere the database's administrators cannot write, and pass it to
    `fhirgate audit verify --checkpoint` later."""

    async def job(storage: Storage) -> tuple[str, Checkpoint]:
        chain = storage.audit.chain
        assert chain is not None
        lines = chain.checkpoint_lines()
        if not lines:
            raise click.ClickException("no checkpoint yet: nothing has been sealed on this host")
        try:
            return lines[-1], chain.decode(lines[-1])
        except ValueError as exc:
            raise click.ClickException(f"the latest checkpoint is not valid: {exc}") from exc

    line, latest = run_storage(job)
    data = {"checkpoint": line, "seq": latest.seq, "hash": latest.hash, "at": latest.at}
    emit(data, as_json, f"{line}\n({latest.describe()})")


@audit.command("verify")
@click.option(
    "--checkpoint",
    "given",
    metavar="FILE|VALUE",
    help="A checkpoint kept by the operator (its text, or a file of checkpoints one a line) "
    "that the chain must still contain. Default: the var directory's audit-checkpoints file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def verify(given: str | None, as_json: bool) -> None:
    """Check every row's MAC, the chain's numbering, links and head, and that the chain still
    holds the checkpoints; seals nothing.

    Exit code 1 when a row was altered, removed, reordered or re-chained. Needs the server's
    FHIRGATE_SECRET_KEY (rows, chain and checkpoints are keyed with it).
    """

    async def job(storage: Storage) -> Verification:
        chain = storage.audit.chain
        assert chain is not None
        try:
            checkpoints = [chain.decode(line) for line in _checkpoint_lines(storage, given)]
        except ValueError as exc:
            raise click.ClickException(f"checkpoint: {exc}") from exc
        return await storage.audit.verify(checkpoints)

    result = run_storage(job)
    data = {"checked": result.checked, "intact": result.intact, "problems": result.problems}
    text = f"{result.checked} audit rows checked ({result.sealed} sealed): " + (
        "the log is intact." if result.intact else "\n".join(result.problems)
    )
    emit(data, as_json, text)
    if not result.intact:
        raise SystemExit(1)


def _checkpoint_lines(storage: Storage, given: str | None) -> list[str]:
    if given is None:
        assert storage.audit.chain is not None
        return storage.audit.chain.checkpoint_lines()
    if given.startswith("fhirgate-audit-checkpoint."):
        return [given]
    path = Path(given)
    if not path.is_file():
        raise click.ClickException(f"--checkpoint: {given} is neither a checkpoint nor a file")
    return [line for line in path.read_text("ascii", "replace").splitlines() if line.strip()]

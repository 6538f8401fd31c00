"""The audit chain under attack by someone who can write to the database but does not hold the
server secret: every row's own MAC, the numbered chain, the checkpoints kept outside the
database, a sealer that never seals a row twice, and a verify that never seals (ONC
§170.315(d)(2)). On SQLite, PostgreSQL and PostgreSQL + Redis."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import delete, func, insert, select, update
from tests.support import Running

from fhirgate.storage.audit import AuditLog, Checkpoint, CheckpointFile
from fhirgate.storage.audit_chain import _canonical
from fhirgate.storage.models import AuditChainRow, AuditEventResourceRow, AuditEventRow
from fhirgate.storage.repos import now


async def sealed_one_by_one(server: Running, count: int) -> list[int]:
    """``count`` rows, each sealed alone (so each has its checkpoint; the server's own sealer,
    running every second, may be the one that seals it); their ids."""
    audit = server.services.audit
    ids = []
    for number in range(count):
        await audit.record("test.event", actor=f"person {number}", detail=f"change {number}")
        await audit.seal()
        async with server.services.engine.connect() as conn:
            newest = select(func.max(AuditEventRow.id), func.max(AuditEventRow.chain_seq))
            row_id, seq = (await conn.execute(newest)).one()
        assert seq is not None and await chain_of(server, int(row_id)) == seq  # sealed, last
        ids.append(int(row_id))
    return ids


async def execute(server: Running, *statements: Any) -> None:
    async with server.services.engine.begin() as conn:
        for statement in statements:
            await conn.execute(statement)


async def chain_of(server: Running, row_id: int) -> int:
    async with server.services.engine.connect() as conn:
        stmt = select(AuditEventRow.chain_seq).where(AuditEventRow.id == row_id)
        return int((await conn.execute(stmt)).scalar_one())


def checkpoints(server: Running) -> list[Checkpoint]:
    chain = server.services.audit.chain
    assert chain is not None
    return [chain.decode(line) for line in chain.checkpoint_lines()]


def fresh_log(server: Running, with_file: bool = True) -> AuditLog:
    """The log as another process (the CLI, a restarted server) opens it."""
    services = server.services
    keys = services.audit._keys
    file = CheckpointFile.under(services.settings.var_dir) if with_file else None
    return AuditLog(services.engine, keys, checkpoints=file)


async def test_an_intact_log_verifies_and_verify_seals_nothing(server: Running) -> None:
    await sealed_one_by_one(server, 3)
    audit = server.services.audit
    await audit.record("test.pending", detail="written after the last seal")
    result = await audit.verify(checkpoints(server))
    assert result.intact, result.problems
    assert result.checked >= 4 and result.sealed >= 3
    async with server.services.engine.connect() as conn:
        stmt = select(AuditEventRow.chain_seq).where(AuditEventRow.event == "test.pending")
        assert (await conn.execute(stmt)).scalar_one() is None  # verify did not seal it


async def test_the_rewrite_attack_is_refused_by_the_sealer_and_named_by_verify(
    server: Running,
) -> None:
    ids = await sealed_one_by_one(server, 6)
    victim, edited = ids[2], ids[4]
    victim_seq = await chain_of(server, victim)
    async with server.services.engine.connect() as conn:
        previous = (
            await conn.execute(
                select(AuditEventRow.chain_seq, AuditEventRow.chain_hash).where(
                    AuditEventRow.chain_seq == victim_seq - 1
                )
            )
        ).one()
    # the attack: delete a row, edit another, unseal from the deleted row on, move the head
    # back to the row before it (whose hash anyone can read)
    await execute(
        server,
        delete(AuditEventRow).where(AuditEventRow.id == victim),
        update(AuditEventRow).where(AuditEventRow.id == edited).values(actor="nobody"),
        update(AuditEventRow)
        .where(AuditEventRow.chain_seq >= victim_seq)
        .values(chain_seq=None, chain_hash=None),
        update(AuditChainRow)
        .where(AuditChainRow.id == 1)
        .values(last_seq=previous[0], last_hash=previous[1]),
    )
    # the running server's sealer, and a restarted one reading its checkpoint file, refuse
    assert await server.services.audit.seal() == 0
    assert await fresh_log(server).seal() == 0
    assert await chain_of_or_none(server, ids[3]) is None  # nothing was sealed again

    result = await server.services.audit.verify(checkpoints(server))
    assert not result.intact
    assert f"row {edited} (not yet sealed) was altered" in result.problems
    assert any(f"checkpoint {victim_seq} " in problem for problem in result.problems)

    # an attacker who also removed the checkpoint file gets the rows sealed again — and the
    # checkpoints the operator kept name the first position that no longer holds
    kept = checkpoints(server)
    assert await fresh_log(server, with_file=False).seal() > 0
    result = await fresh_log(server, with_file=False).verify(kept)
    assert not result.intact
    first = result.problems[0]
    assert f"(chain {victim_seq})" in first and "rewritten" in first, result.problems
    assert f"row {ids[3]} " in first  # the row now at the deleted row's place


async def chain_of_or_none(server: Running, row_id: int) -> int | None:
    async with server.services.engine.connect() as conn:
        stmt = select(AuditEventRow.chain_seq).where(AuditEventRow.id == row_id)
        found = (await conn.execute(stmt)).scalar_one()
        return None if found is None else int(found)


async def test_a_deleted_sealed_row_leaves_a_gap(server: Running) -> None:
    ids = await sealed_one_by_one(server, 4)
    seq = await chain_of(server, ids[1])
    await execute(server, delete(AuditEventRow).where(AuditEventRow.id == ids[1]))
    result = await server.services.audit.verify()
    assert result.problems[0] == f"rows {seq}-{seq} of the chain are missing (deleted)"


async def test_an_edited_sealed_row_is_named(server: Running) -> None:
    ids = await sealed_one_by_one(server, 3)
    seq = await chain_of(server, ids[1])
    await execute(
        server, update(AuditEventRow).where(AuditEventRow.id == ids[1]).values(detail="x")
    )
    result = await server.services.audit.verify()
    assert result.problems[0] == f"row {ids[1]} (chain {seq}) was altered"


async def test_reordered_rows_are_named(server: Running) -> None:
    ids = await sealed_one_by_one(server, 3)
    first, second = await chain_of(server, ids[0]), await chain_of(server, ids[1])
    await execute(  # swap the two rows' places in the chain (through a free number)
        server,
        update(AuditEventRow).where(AuditEventRow.id == ids[0]).values(chain_seq=-1),
        update(AuditEventRow).where(AuditEventRow.id == ids[1]).values(chain_seq=first),
        update(AuditEventRow).where(AuditEventRow.id == ids[0]).values(chain_seq=second),
    )
    result = await server.services.audit.verify()
    assert result.problems[0] == f"row {ids[1]} (chain {first}) was altered or moved"


async def test_the_newest_rows_cut_off_are_found_by_the_checkpoint(server: Running) -> None:
    ids = await sealed_one_by_one(server, 4)
    cut = await chain_of(server, ids[2])
    async with server.services.engine.connect() as conn:
        before = (
            await conn.execute(
                select(AuditEventRow.chain_hash).where(AuditEventRow.chain_seq == cut - 1)
            )
        ).scalar_one()
    await execute(
        server,
        delete(AuditEventRow).where(AuditEventRow.id.in_(ids[2:])),
        update(AuditChainRow)
        .where(AuditChainRow.id == 1)
        .values(last_seq=cut - 1, last_hash=before),
    )
    latest = checkpoints(server)[-1:]  # the one an operator keeps
    result = await fresh_log(server, with_file=False).verify(latest)
    assert not result.intact
    assert f"rows {cut}-{cut + 1} of the chain were removed" in result.problems[0]
    assert await server.services.audit.seal() == 0  # and the sealer will not go on from there


async def test_a_row_inserted_without_the_secret_has_no_mac(server: Running) -> None:
    await sealed_one_by_one(server, 1)
    await execute(
        server,
        insert(AuditEventRow).values(occurred_at=now(), event="forged", detail="", resource_ids=""),
    )
    await server.services.audit.seal()
    result = await server.services.audit.verify()
    assert len(result.problems) == 1, result.problems
    assert "(chain 2) carries no MAC" in result.problems[0]  # sealed, but it stays marked


async def test_a_removed_resource_id_breaks_its_row(server: Running) -> None:
    services = server.services
    await services.audit.fhir_event(
        "search", client_id="c", user_id=None, resource_type="Patient",
        resource_ids=["Patient/a", "Patient/b"], outcome=200, source="127.0.0.1",
        request_id="r1",
    )  # fmt: skip
    assert (await services.audit.verify()).intact
    await execute(server, delete(AuditEventResourceRow).where(AuditEventResourceRow.position == 1))
    result = await services.audit.verify()
    assert len(result.problems) == 1 and result.problems[0].endswith("was altered")


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**64 - 1),
            st.text(st.characters(blacklist_categories=["Cs"])),
        )
    )
)
def test_the_macd_text_is_the_one_rows_were_written_with(fields: list[object]) -> None:
    """Rows already stored were MAC'd over ``json.dumps`` text: the canonical form must stay
    byte for byte that text, whatever the values (non-ASCII, control characters; integers as
    wide as a database column holds)."""
    expected = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    assert _canonical(fields) == expected

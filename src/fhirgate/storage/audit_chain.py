"""Tamper evidence for the audit log (ONC §170.315(d)(2): alteration and deletion detectable;
HIPAA §164.312(b) audit controls, §164.312(c)(1) integrity).

Three layers, each keyed from the server secret (HKDF, a label of its own):

* **Row MAC.** Every row carries ``row_mac`` = HMAC-SHA256(row key, its fields and the digest
  of its resource ids) from the moment it is written: an edit of any row, sealed or not, shows,
  and a row inserted by anyone without the secret has none that verifies.
* **Chain.** The sealer (:meth:`AuditChain.seal`, every second) numbers the rows written since
  (``chain_seq`` 1, 2, …) and links each to the one before: ``chain_hash`` = HMAC(chain key,
  previous hash, seq, row id, row MAC). A deleted row leaves a gap, a moved one breaks a link.
* **Checkpoints.** After each seal the head (seq, hash) is signed, appended to
  ``var/audit-checkpoints`` and written to the log. Kept outside the database, a checkpoint
  shows a chain that was rewritten from some row on (its seals removed, the head moved back,
  the rest sealed again) or cut short. The sealer never extends a chain whose head is behind
  its last checkpoint, so it never seals a row a second time.

:meth:`AuditChain.verify` only reads: it never seals.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fhirgate.domain.instants import instant_text
from fhirgate.server_secret import derive_key
from fhirgate.storage.models import AuditChainRow, AuditEventResourceRow, AuditEventRow

__all__ = [
    "MAC_FIELDS",
    "AuditChain",
    "AuditKeys",
    "Checkpoint",
    "CheckpointFile",
    "Verification",
    "audit_keys",
    "ids_digest",
    "row_mac",
]

log = logging.getLogger("fhirgate.audit")

SEAL_BATCH = 5000
VERIFY_BATCH = 1000
CHECKPOINT_PREFIX = "fhirgate-audit-checkpoint"
CHECKPOINT_FILE = "audit-checkpoints"
CHECKPOINT_FILE_LIMIT = 4 * 1024 * 1024  # then it is rotated to ``.1``

#: The fields a row's MAC covers, in order (its resource ids' digest follows them).
MAC_FIELDS = (
    "occurred_at", "event", "client_id", "source", "actor", "detail", "user_id",
    "resource_type", "resource_ids", "outcome", "request_id", "organization_id",
)  # fmt: skip
_COLUMNS = tuple(getattr(AuditEventRow, name) for name in MAC_FIELDS)


@dataclass(frozen=True, slots=True)
class AuditKeys:
    """The audit's three keys, each derived from the server secret with its own label."""

    row: bytes
    chain: bytes
    checkpoint: bytes

    LABELS = (b"fhirgate audit row", b"fhirgate audit chain", b"fhirgate audit checkpoint")

    @classmethod
    def derived(cls, derive: Callable[[bytes], bytes]) -> AuditKeys:
        """The keys ``derive(label)`` gives for each label (HKDF of the server secret)."""
        row, chain, checkpoint = (derive(label) for label in cls.LABELS)
        return cls(row, chain, checkpoint)


def audit_keys(secret: bytes) -> AuditKeys:
    """The audit log's row, chain and checkpoint keys under the server secret."""
    return AuditKeys.derived(lambda label: derive_key(secret, label))


def _canonical(fields: Sequence[Any]) -> str:
    """``fields`` as compact JSON with non-ASCII text unescaped (RFC 8259; the text
    ``json.dumps(fields, separators=(",", ":"), ensure_ascii=False)`` gives)."""
    return orjson.dumps(fields, default=str).decode()


def _mac(key: bytes, text: str) -> str:
    return hmac.digest(key, text.encode(), "sha256").hex()


def ids_digest(ids: Iterable[str]) -> str:
    """SHA-256 of a row's resource ids in order (empty text for none)."""
    digest = hashlib.sha256()
    count = 0
    for resource_id in ids:
        digest.update(resource_id.encode("utf-8", "replace") + b"\n")
        count += 1
    return digest.hexdigest() if count else ""


def row_mac(key: bytes, row: Mapping[str, Any], digest: str) -> str:
    """The MAC of one row: its :data:`MAC_FIELDS` canonically, then its ids' digest."""
    fields = [instant_text(row["occurred_at"]), *(row.get(name) for name in MAC_FIELDS[1:]), digest]
    return _mac(key, _canonical(fields))


def _link(key: bytes, previous: str, seq: int, row_id: int, mac: str) -> str:
    return _mac(key, f"{previous}|{seq}|{row_id}|{mac}")


def _legacy_link(key: bytes, previous: str, seq: int, row_id: int, row: Sequence[Any]) -> str:
    """The link of a row written before rows carried a MAC (migration 0010): over its fields;
    ``organization_id`` (the last, migration 0008) only when set."""
    values = list(row)
    fields = [
        seq,
        row_id,
        instant_text(values[0]),
        *(values[1:] if values[-1] is not None else values[1:-1]),
    ]
    return _mac(key, f"{previous}|{_canonical(fields)}")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The chain's head at one seal, signed: ``seq`` and ``hash`` of its last row, the
    legacy boundary, and when (Unix seconds)."""

    seq: int
    hash: str
    legacy_row_id: int
    at: int

    def _body(self) -> str:
        return f"v1.{self.seq}.{self.hash}.{self.legacy_row_id}.{self.at}"

    def encode(self, key: bytes) -> str:
        body = self._body()
        return f"{CHECKPOINT_PREFIX}.{body}.{_mac(key, body)}"

    @classmethod
    def decode(cls, text: str, key: bytes) -> Checkpoint:
        """A checkpoint from its text; ``ValueError`` when it is not one or its signature
        does not verify (another secret, or an edit)."""
        parts = text.strip().split(".")
        if len(parts) != 7 or parts[0] != CHECKPOINT_PREFIX or parts[1] != "v1":
            raise ValueError("not a fhirgate audit checkpoint")
        try:
            checkpoint = cls(int(parts[2]), parts[3], int(parts[4]), int(parts[5]))
        except ValueError:
            raise ValueError("not a fhirgate audit checkpoint") from None
        if not hmac.compare_digest(_mac(key, checkpoint._body()), parts[6]):
            raise ValueError("the checkpoint's signature does not verify")
        return checkpoint

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"checkpoint {self.seq} of {when}"


class CheckpointFile:
    """Checkpoints appended one a line, synced; rotated to ``.1`` past 4 MiB."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def under(cls, var_dir: Path | str) -> CheckpointFile:
        """The server's checkpoint file, ``audit-checkpoints`` in its var directory."""
        return cls(Path(var_dir) / CHECKPOINT_FILE)

    def append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > CHECKPOINT_FILE_LIMIT:
            self.path.replace(self.path.with_name(self.path.name + ".1"))
        with self.path.open("a", encoding="ascii") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())

    def lines(self) -> list[str]:
        """Every checkpoint line, oldest first (the rotated file's too)."""
        found: list[str] = []
        for path in (self.path.with_name(self.path.name + ".1"), self.path):
            if path.exists():
                found.extend(line for line in path.read_text("ascii").splitlines() if line)
        return found

    def latest(self) -> str | None:
        lines = self.lines()
        return lines[-1] if lines else None


@dataclass(slots=True)
class Verification:
    """What :meth:`AuditChain.verify` found: rows checked (sealed and not yet sealed), and
    every problem, the first bad row first."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)
    sealed: int = 0

    @property
    def intact(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class _Head:
    seq: int
    hash: str
    legacy_row_id: int


async def _head(conn: AsyncConnection, *, lock: bool) -> _Head | None:
    stmt = select(AuditChainRow.last_seq, AuditChainRow.last_hash, AuditChainRow.legacy_row_id)
    stmt = stmt.where(AuditChainRow.id == 1)
    row = (await conn.execute(stmt.with_for_update() if lock else stmt)).first()
    return None if row is None else _Head(int(row[0]), str(row[1]), int(row[2]))


async def _hash_at(conn: AsyncConnection, seq: int) -> str | None:
    stmt = select(AuditEventRow.chain_hash).where(AuditEventRow.chain_seq == seq)
    found = (await conn.execute(stmt)).first()
    return None if found is None else str(found[0])


async def _ids_of(conn: AsyncConnection, event_ids: Sequence[int]) -> dict[int, list[str]]:
    stmt = (
        select(AuditEventResourceRow.event_id, AuditEventResourceRow.resource_id)
        .where(AuditEventResourceRow.event_id.in_(event_ids))
        .order_by(AuditEventResourceRow.event_id, AuditEventResourceRow.position)
    )
    ids: dict[int, list[str]] = {}
    for event_id, resource_id in await conn.execute(stmt):
        ids.setdefault(int(event_id), []).append(str(resource_id))
    return ids


class AuditChain:
    """Seals rows into the chain, checkpoints its head, verifies the whole log."""

    def __init__(
        self, engine: AsyncEngine, keys: AuditKeys, checkpoints: CheckpointFile | None = None
    ) -> None:
        self._engine = engine
        self._keys = keys
        self._checkpoints = checkpoints
        self._anchor: Checkpoint | None = None
        self._anchor_loaded = False
        self._refused: str | None = None

    def checkpoint_lines(self) -> list[str]:
        """Every checkpoint this host wrote, oldest first."""
        return [] if self._checkpoints is None else self._checkpoints.lines()

    def decode(self, line: str) -> Checkpoint:
        """A checkpoint's text, verified (``ValueError`` when it is not one of this server's)."""
        return Checkpoint.decode(line, self._keys.checkpoint)

    def latest_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint written to the file (``ValueError`` if it does not verify)."""
        line = None if self._checkpoints is None else self._checkpoints.latest()
        return None if line is None else self.decode(line)

    async def seal(self) -> int:
        """Chain the rows written since the last seal, oldest first; how many. Refuses (logs
        an error, seals nothing) when the head is not where the last checkpoint left it."""
        if not self._anchor_loaded:
            self._anchor = self.latest_checkpoint()
            self._anchor_loaded = True
        pending = (
            select(AuditEventRow.id, AuditEventRow.row_mac, *_COLUMNS)
            .where(AuditEventRow.chain_seq.is_(None))
            .order_by(AuditEventRow.id)
            .limit(SEAL_BATCH)
        )
        async with self._engine.begin() as conn:
            head = await _head(conn, lock=True)
            if head is None:
                return 0
            refusal = await self._refusal(conn, head)
            if refusal is not None:
                if refusal != self._refused:
                    log.error("audit rows not sealed: %s (fhirgate audit verify)", refusal)
                    self._refused = refusal
                return 0
            rows = (await conn.execute(pending)).all()
            if not rows:
                return 0
            seq, previous = head.seq, head.hash
            links = []
            for row_id, mac, *values in rows:
                seq += 1
                if mac is None and row_id <= head.legacy_row_id:
                    previous = _legacy_link(self._keys.chain, previous, seq, row_id, values)
                else:
                    previous = _link(self._keys.chain, previous, seq, row_id, mac or "")
                links.append({"row_id": row_id, "seq": seq, "hash": previous})
            await conn.execute(
                update(AuditEventRow)
                .where(AuditEventRow.id == bindparam("row_id"))
                .values(chain_seq=bindparam("seq"), chain_hash=bindparam("hash")),
                links,
            )
            await conn.execute(
                update(AuditChainRow)
                .where(AuditChainRow.id == 1)
                .values(last_seq=seq, last_hash=previous)
            )
        self._checkpoint(Checkpoint(seq, previous, head.legacy_row_id, int(time.time())))
        return len(rows)

    async def _refusal(self, conn: AsyncConnection, head: _Head) -> str | None:
        """Why the chain must not be extended from ``head``, or ``None``."""
        if head.seq and await _hash_at(conn, head.seq) != head.hash:
            return f"the chain's recorded head (seq {head.seq}) is not its last sealed row"
        anchor = self._anchor
        if anchor is None:
            return None
        if head.seq < anchor.seq:
            return (
                f"the chain's head (seq {head.seq}) is behind the last {anchor.describe()}: "
                "sealed rows were removed or unsealed"
            )
        if anchor.legacy_row_id != head.legacy_row_id or (
            anchor.seq and await _hash_at(conn, anchor.seq) != anchor.hash
        ):
            return f"the chain no longer matches the last {anchor.describe()}"
        return None

    def _checkpoint(self, checkpoint: Checkpoint) -> None:
        self._anchor, self._refused = checkpoint, None
        line = checkpoint.encode(self._keys.checkpoint)
        log.info("audit checkpoint %s", line)
        if self._checkpoints is not None:
            try:
                self._checkpoints.append(line)
            except OSError:
                log.exception("could not append the audit checkpoint to %s", self._checkpoints.path)

    async def verify(self, checkpoints: Sequence[Checkpoint] = ()) -> Verification:
        """Check every row's MAC, the chain's numbering and links, its head, and that it
        still holds each of ``checkpoints``; seals nothing."""
        result = Verification()
        expected = {checkpoint.seq: checkpoint for checkpoint in checkpoints}
        async with self._engine.connect() as conn:
            head = await _head(conn, lock=False)
            legacy = head.legacy_row_id if head is not None else 0
            last_seq, last_hash = 0, ""
            async for batch in _batches(conn, sealed=True):
                for row_id, mac, number, stored, values, ids in batch:
                    seq = number or 0  # sealed rows are numbered
                    result.checked += 1
                    result.sealed += 1
                    if seq != last_seq + 1:
                        result.problems.append(
                            f"rows {last_seq + 1}-{seq - 1} of the chain are missing (deleted)"
                        )
                    self._check_row(result, row_id, seq, mac, values, ids, legacy)
                    if mac is None and row_id <= legacy:
                        link = _legacy_link(self._keys.chain, last_hash, seq, row_id, values)
                    else:
                        link = _link(self._keys.chain, last_hash, seq, row_id, mac or "")
                    if not hmac.compare_digest(link, stored or ""):
                        result.problems.append(f"row {row_id} (chain {seq}) was altered or moved")
                    checkpoint = expected.pop(seq, None)
                    if checkpoint is not None and checkpoint.hash != stored:
                        result.problems.append(
                            f"the chain was rewritten at or before row {row_id} (chain {seq}): "
                            f"it no longer matches {checkpoint.describe()}"
                        )
                    last_seq, last_hash = seq, stored or ""
            async for batch in _batches(conn, sealed=False):
                for row_id, mac, _, _, values, ids in batch:
                    result.checked += 1
                    self._check_row(result, row_id, None, mac, values, ids, legacy)
        if head is not None and (head.seq, head.hash) != (last_seq, last_hash):
            result.problems.append(
                f"the chain ends at row {last_seq} but its recorded head is {head.seq}: "
                "the chain ends before its recorded head (rows were removed) or was rewritten"
            )
        for checkpoint in sorted(expected.values(), key=lambda item: item.seq):
            result.problems.append(
                f"the chain ends at {last_seq} but {checkpoint.describe()} was sealed: "
                f"rows {last_seq + 1}-{checkpoint.seq} of the chain were removed"
            )
            break
        if checkpoints and checkpoints[-1].legacy_row_id != legacy:
            result.problems.append("the boundary of rows written before row MACs was moved")
        return result

    def _check_row(
        self,
        result: Verification,
        row_id: int,
        seq: int | None,
        mac: str | None,
        values: Sequence[Any],
        ids: list[str],
        legacy: int,
    ) -> None:
        where = f"row {row_id}" + (f" (chain {seq})" if seq is not None else " (not yet sealed)")
        if mac is None:
            if row_id > legacy:
                result.problems.append(f"{where} carries no MAC: fhirgate did not write it")
            return
        fields = dict(zip(MAC_FIELDS, values, strict=True))
        if not hmac.compare_digest(row_mac(self._keys.row, fields, ids_digest(ids)), mac):
            result.problems.append(f"{where} was altered")


_VERIFIED = (
    AuditEventRow.id,
    AuditEventRow.row_mac,
    AuditEventRow.chain_seq,
    AuditEventRow.chain_hash,
    *_COLUMNS,
)


async def _batches(conn: AsyncConnection, *, sealed: bool) -> AsyncIterator[list[_Stored]]:
    """Every sealed row in chain order, or every row not yet sealed in id order, a batch at a
    time (keyset pages), each with its resource ids."""
    order = AuditEventRow.chain_seq if sealed else AuditEventRow.id
    which = AuditEventRow.chain_seq.is_not(None) if sealed else AuditEventRow.chain_seq.is_(None)
    after = 0
    while True:
        stmt = select(*_VERIFIED).where(which, order > after).order_by(order).limit(VERIFY_BATCH)
        rows = (await conn.execute(stmt)).all()
        if not rows:
            return
        yield await _with_ids(conn, rows)
        after = int(rows[-1][2 if sealed else 0])


#: A row as :meth:`AuditChain.verify` checks it: id, MAC, seq, hash, MAC fields, resource ids.
_Stored = tuple[int, str | None, int | None, str | None, Sequence[Any], list[str]]


async def _with_ids(conn: AsyncConnection, rows: Sequence[Any]) -> list[_Stored]:
    ids = await _ids_of(conn, [int(row[0]) for row in rows])
    return [
        (int(row[0]), row[1], None if row[2] is None else int(row[2]), row[3], row[4:],
         ids.get(int(row[0]), []))
        for row in rows
    ]  # fmt: skip

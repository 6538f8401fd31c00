"""Server-side dashboard sessions (OWASP Session Management Cheat Sheet; NIST SP 800-63B §7).

* The cookie carries 256 random bits; the database keeps only their SHA-256, so a copy of the
  database signs nobody in.
* A session ends after 15 minutes without a request (idle timeout) and 12 hours after sign-in
  whatever happens (absolute timeout), both checked on the server.
* Signing in always starts a new session (the id is rotated: a token planted before sign-in
  is worth nothing after it); changing the password ends every other session of the person.
* The CSRF token of a session is an HMAC of its id under a key derived from the server secret
  (OWASP CSRF Prevention Cheat Sheet, "signed double-submit" tied to the session): nothing more
  to store, and it cannot be computed without the session id and the key.

``last_seen_at`` is written at most once a minute per session, not on every page view.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from fhirgate.storage.accounts import DashboardUser
from fhirgate.storage.models import DashboardUserRow, SessionRow
from fhirgate.storage.opaque_tokens import hash_token, new_token
from fhirgate.storage.repos import as_utc, now

__all__ = ["ABSOLUTE_TIMEOUT", "IDLE_TIMEOUT", "Session", "SessionStore"]

IDLE_TIMEOUT = timedelta(minutes=15)
ABSOLUTE_TIMEOUT = timedelta(hours=12)
_TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Session:
    token_hash: str
    user: DashboardUser
    created_at: datetime
    csrf_token: str


class SessionStore:
    """Sessions in the database, with their CSRF tokens."""

    def __init__(self, engine: AsyncEngine, csrf_key: bytes) -> None:
        self._engine = engine
        self._csrf_key = csrf_key

    def _csrf(self, token_hash: str) -> str:
        return hmac.new(self._csrf_key, token_hash.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, session: Session, presented: str | None) -> bool:
        """Whether ``presented`` is this session's CSRF token (constant-time comparison)."""
        return presented is not None and hmac.compare_digest(session.csrf_token, presented)

    async def start(self, user_id: str) -> str:
        """A new session for the person; the token for the cookie."""
        token = new_token()
        at = now()
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(SessionRow).values(
                    token_hash=hash_token(token), user_id=user_id, created_at=at, last_seen_at=at
                )
            )
        return token

    async def resume(self, token: str | None) -> Session | None:
        """The live session of ``token``, or ``None`` (unknown, timed out, or its person is
        deactivated). A timed-out session is deleted."""
        if not token or len(token) > 100:
            return None
        token_hash = hash_token(token)
        stmt = (
            select(
                SessionRow.created_at,
                SessionRow.last_seen_at,
                DashboardUserRow.id,
                DashboardUserRow.email,
                DashboardUserRow.active,
            )
            .join(DashboardUserRow, DashboardUserRow.id == SessionRow.user_id)
            .where(SessionRow.token_hash == token_hash)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        created, seen = as_utc(row[0]), as_utc(row[1])
        at = now()
        if not row[4] or at - seen > IDLE_TIMEOUT or at - created > ABSOLUTE_TIMEOUT:
            await self._delete(SessionRow.token_hash == token_hash)
            return None
        if at - seen > _TOUCH_EVERY:
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(SessionRow)
                    .where(SessionRow.token_hash == token_hash)
                    .values(last_seen_at=at)
                )
        user = DashboardUser(str(row[2]), str(row[3]), bool(row[4]))
        return Session(token_hash, user, created, self._csrf(token_hash))

    async def end(self, session: Session) -> None:
        await self._delete(SessionRow.token_hash == session.token_hash)

    async def end_all(self, user_id: str) -> None:
        """End every session of the person (password changed, account deactivated)."""
        await self._delete(SessionRow.user_id == user_id)

    async def purge(self) -> int:
        """Delete sessions past either timeout (a background job)."""
        at = now()
        return await self._delete(
            (SessionRow.last_seen_at < at - IDLE_TIMEOUT)
            | (SessionRow.created_at < at - ABSOLUTE_TIMEOUT)
        )

    async def _delete(self, condition: ColumnElement[bool]) -> int:
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(SessionRow).where(condition))
        return int(result.rowcount or 0)

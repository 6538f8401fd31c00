"""The storage contract of application users (:class:`AppUserRepo`) and their codes and grants
(:class:`GrantRepo`), on every backend: SQLite, PostgreSQL, PostgreSQL with Redis."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest
from sqlalchemy import delete, select, update
from tests.support import Running, register_secret_client

from fhirgate.domain.app_users import AppUser
from fhirgate.domain.errors import Conflict, NotFound
from fhirgate.domain.tokens import Redemption, TokenStanding
from fhirgate.storage.app_users import AppUserRepo
from fhirgate.storage.models import (
    AppUserRow,
    AuthorizationCodeRow,
    OpaqueTokenRow,
    RevokedTokenRow,
    UserGrantRow,
)
from fhirgate.storage.user_grants import GrantRepo

SCOPE = "user/*.* openid"
TTL = 600


async def application(server: Running) -> str:
    client_id, _ = await register_secret_client(
        server.services, "client_secret_post", scope="user/*.*"
    )
    return client_id


def users(server: Running) -> AppUserRepo:
    return server.services.delegation.users


def grants(server: Running) -> GrantRepo:
    return server.services.delegation.grants


async def set_active(server: Running, client_id: str, oneup_user_id: int, active: bool) -> None:
    """Only the user row changes: the grants are left as they are."""
    async with server.services.engine.begin() as conn:
        await users(server).set_active(client_id, oneup_user_id, active, conn)


async def redeemed(server: Running, client_id: str, oneup_user_id: int) -> Redemption:
    """A code issued and redeemed: an open grant and its first refresh token."""
    code = await grants(server).issue_code(client_id, oneup_user_id, SCOPE, TTL)
    redemption = await grants(server).redeem_code(client_id, code)
    assert redemption is not None
    return redemption


# --------------------------------------------------------------------------- users


async def test_create_find_and_get(server: Running) -> None:
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    assert alice == AppUser(alice.oneup_user_id, client_id, "alice", True)
    repo = users(server)
    assert await repo.find(client_id, app_user_id="alice") == alice
    assert await repo.find(client_id, oneup_user_id=alice.oneup_user_id) == alice
    both = await repo.find(client_id, app_user_id="alice", oneup_user_id=alice.oneup_user_id)
    assert both == alice
    assert await repo.get(client_id, app_user_id="alice") == alice
    assert await repo.find(client_id, app_user_id="bob") is None
    assert await repo.find(client_id, app_user_id="bob", oneup_user_id=alice.oneup_user_id) is None
    with pytest.raises(NotFound):
        await repo.get(client_id, oneup_user_id=alice.oneup_user_id + 1000)
    with pytest.raises(ValueError, match="app_user_id or oneup_user_id"):
        await repo.find(client_id)


async def test_numbers_past_32_bits_name_no_user(server: Running) -> None:
    """The HTTP layer accepts up to 18 digits; on every backend such a number is just unknown."""
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    for number in (2**31, 10**18 - 1):
        assert await users(server).find(client_id, oneup_user_id=number) is None
        page = await users(server).list(client_id, oneup_user_id=number)
        assert list(page.users) == [] and page.total == 0
        with pytest.raises(NotFound):
            await users(server).rename(client_id, number, "renamed")
    assert await users(server).get(client_id, app_user_id="alice") == alice


async def test_users_are_scoped_by_application(server: Running) -> None:
    mine, theirs = await application(server), await application(server)
    alice = await users(server).create(mine, "alice")
    other_alice = await users(server).create(theirs, "alice")  # unique per application only
    assert other_alice.oneup_user_id != alice.oneup_user_id
    assert await users(server).find(theirs, oneup_user_id=alice.oneup_user_id) is None
    assert await users(server).find(mine, app_user_id="alice") == alice
    with pytest.raises(NotFound):
        await users(server).rename(theirs, alice.oneup_user_id, "stolen")
    with pytest.raises(NotFound):
        await set_active(server, theirs, alice.oneup_user_id, False)
    assert await users(server).find(mine, app_user_id="alice") == alice


async def test_create_refuses_an_existing_app_user_id(server: Running) -> None:
    client_id = await application(server)
    await users(server).create(client_id, "alice")
    with pytest.raises(Conflict):
        await users(server).create(client_id, "alice")
    assert (await users(server).list(client_id)).total == 1


async def test_create_and_rename_refuse_invalid_app_user_ids(server: Running) -> None:
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    for bad in ["", "   ", "a\x00b", "a\tb", "a\nb", "a\x7fb", "x" * 256]:
        with pytest.raises(ValueError, match="app_user_id"):
            await users(server).create(client_id, bad)
        with pytest.raises(ValueError, match="app_user_id"):
            await users(server).rename(client_id, alice.oneup_user_id, bad)
    assert (await users(server).list(client_id)).users == [alice]


async def test_list_pages_oldest_first_and_counts_every_match(server: Running) -> None:
    client_id, other = await application(server), await application(server)
    created = [await users(server).create(client_id, f"user-{i}") for i in range(5)]
    await users(server).create(other, "user-0")
    page = await users(server).list(client_id, offset=1, limit=3)
    assert list(page.users) == created[1:4]
    assert page.total == 5
    assert list((await users(server).list(client_id, offset=4, limit=3)).users) == created[4:]
    assert list((await users(server).list(client_id, offset=9)).users) == []
    by_name = await users(server).list(client_id, app_user_id="user-2")
    assert list(by_name.users) == [created[2]] and by_name.total == 1
    by_number = await users(server).list(client_id, oneup_user_id=created[3].oneup_user_id)
    assert list(by_number.users) == [created[3]] and by_number.total == 1
    nothing = await users(server).list(client_id, app_user_id="user-9")
    assert list(nothing.users) == [] and nothing.total == 0


async def test_rename_keeps_the_number_and_refuses_a_taken_name(server: Running) -> None:
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    bob = await users(server).create(client_id, "bob")
    renamed = await users(server).rename(client_id, alice.oneup_user_id, "alicia")
    assert renamed == AppUser(alice.oneup_user_id, client_id, "alicia", True)
    assert await users(server).find(client_id, app_user_id="alice") is None
    with pytest.raises(Conflict):
        await users(server).rename(client_id, alice.oneup_user_id, "bob")
    assert await users(server).find(client_id, app_user_id="bob") == bob
    assert await users(server).find(client_id, oneup_user_id=alice.oneup_user_id) == renamed
    with pytest.raises(NotFound):
        await users(server).rename(client_id, bob.oneup_user_id + 1000, "carol")
    # the freed name can be taken again, by a new user with a new number
    again = await users(server).create(client_id, "alice")
    assert again.oneup_user_id not in (alice.oneup_user_id, bob.oneup_user_id)


async def test_set_active_deactivates_and_reactivates_in_the_callers_transaction(
    server: Running,
) -> None:
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    with pytest.raises(RuntimeError):
        async with server.services.engine.begin() as conn:
            await users(server).set_active(client_id, alice.oneup_user_id, False, conn)
            raise RuntimeError("roll the transaction back")
    assert (await users(server).get(client_id, app_user_id="alice")).active is True
    async with server.services.engine.begin() as conn:
        off = await users(server).set_active(client_id, alice.oneup_user_id, False, conn)
    assert off == AppUser(alice.oneup_user_id, client_id, "alice", False)
    assert (await users(server).get(client_id, app_user_id="alice")).active is False
    async with server.services.engine.begin() as conn:
        on = await users(server).set_active(client_id, alice.oneup_user_id, True, conn)
    assert on.active is True
    assert (await users(server).get(client_id, app_user_id="alice")).active is True


async def test_concurrent_creations_of_one_app_user_id_make_one_user(server: Running) -> None:
    client_id = await application(server)
    results = await asyncio.gather(
        *(users(server).create(client_id, "alice") for _ in range(20)), return_exceptions=True
    )
    created = [r for r in results if isinstance(r, AppUser)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(created) == 1, results
    assert len(conflicts) == 19, results
    page = await users(server).list(client_id)
    assert list(page.users) == created and page.total == 1


async def test_a_deleted_users_number_is_not_reused(server: Running) -> None:
    client_id = await application(server)
    await users(server).create(client_id, "alice")
    last = await users(server).create(client_id, "bob")  # the highest number so far
    async with server.services.engine.begin() as conn:
        await conn.execute(delete(AppUserRow).where(AppUserRow.oneup_user_id == last.oneup_user_id))
    assert await users(server).find(client_id, app_user_id="bob") is None
    again = await users(server).create(client_id, "bob")
    assert again.oneup_user_id > last.oneup_user_id


# --------------------------------------------------------------------------- codes


async def test_codes_are_stored_only_as_sha256_hashes(server: Running) -> None:
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    code = await grants(server).issue_code(client_id, alice.oneup_user_id, SCOPE, TTL)
    assert len(code) >= 43  # 256 bits, base64url
    redemption = await grants(server).redeem_code(client_id, code)  # spent rows, too
    assert redemption is not None
    async with server.services.engine.connect() as conn:
        codes = (await conn.execute(select(AuthorizationCodeRow.__table__))).mappings().all()
        tokens = (await conn.execute(select(OpaqueTokenRow.__table__))).mappings().all()
    assert [row["code_hash"] for row in codes] == [hashlib.sha256(code.encode()).hexdigest()]
    for row in codes:
        assert not any(code in str(value) for value in row.values()), row
    refresh_hash = hashlib.sha256(redemption.refresh_token.encode()).hexdigest()
    assert [row["token_hash"] for row in tokens] == [refresh_hash]
    for row in tokens:
        assert not any(redemption.refresh_token in str(value) for value in row.values()), row


async def test_a_code_opens_one_grant_for_its_user_and_scope(server: Running) -> None:
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    before = int(time.time())
    code = await grants(server).issue_code(client_id, alice.oneup_user_id, SCOPE, TTL)
    redemption = await grants(server).redeem_code(client_id, code)
    assert redemption is not None
    grant = redemption.grant
    assert (grant.client_id, grant.oneup_user_id, grant.scope) == (
        client_id,
        alice.oneup_user_id,
        SCOPE,
    )
    assert before <= grant.auth_time <= int(time.time())
    assert grant.expires_at > time.time()
    assert redemption.refresh_token and redemption.refresh_expires_at <= grant.expires_at
    assert await grants(server).live(grant.grant_id) == grant


async def test_a_code_is_single_use_and_its_reuse_ends_its_grant(server: Running) -> None:
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    code = await grants(server).issue_code(client_id, alice.oneup_user_id, SCOPE, TTL)
    first = await grants(server).redeem_code(client_id, code)
    assert first is not None
    assert await grants(server).redeem_code(client_id, code) is None
    assert await grants(server).live(first.grant.grant_id) is None
    assert await grants(server).refresh(client_id, first.refresh_token) is None


async def test_concurrent_redemptions_of_a_code_have_one_winner(server: Running) -> None:
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    code = await grants(server).issue_code(client_id, alice.oneup_user_id, SCOPE, TTL)
    results = await asyncio.gather(
        *(grants(server).redeem_code(client_id, code) for _ in range(10))
    )
    assert sum(result is not None for result in results) == 1
    async with server.services.engine.connect() as conn:
        families = (await conn.execute(select(UserGrantRow.grant_id))).scalars().all()
    assert len(families) == 1


async def test_unknown_and_foreign_codes_are_refused(server: Running) -> None:
    mine, theirs = await application(server), await application(server)
    alice = await users(server).create(mine, "alice")
    code = await grants(server).issue_code(mine, alice.oneup_user_id, SCOPE, TTL)
    assert await grants(server).redeem_code(mine, "not-a-code") is None
    assert await grants(server).redeem_code(theirs, code) is None
    assert await grants(server).redeem_code(mine, code) is not None  # not spent by the others


async def test_an_expired_code_is_refused(server: Running) -> None:
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    code = await grants(server).issue_code(client_id, alice.oneup_user_id, SCOPE, TTL)
    async with server.services.engine.begin() as conn:
        await conn.execute(update(AuthorizationCodeRow).values(expires_at=int(time.time()) - 1))
    assert await grants(server).redeem_code(client_id, code) is None
    zero = await grants(server).issue_code(client_id, alice.oneup_user_id, SCOPE, 0)
    assert await grants(server).redeem_code(client_id, zero) is None


async def test_a_code_of_a_deactivated_user_is_refused(server: Running) -> None:
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    code = await grants(server).issue_code(client_id, alice.oneup_user_id, SCOPE, TTL)
    await set_active(server, client_id, alice.oneup_user_id, False)
    assert await grants(server).redeem_code(client_id, code) is None
    async with server.services.engine.connect() as conn:
        families = (await conn.execute(select(UserGrantRow.grant_id))).scalars().all()
    assert families == []


# --------------------------------------------------------------------------- grants


async def test_refresh_rotates_within_the_grant(server: Running) -> None:
    client_id, other = await application(server), await application(server)
    alice = await users(server).create(client_id, "alice")
    first = await redeemed(server, client_id, alice.oneup_user_id)
    assert await grants(server).refresh(other, first.refresh_token) is None  # not its token
    second = await grants(server).refresh(client_id, first.refresh_token)
    assert second is not None
    assert second.grant == first.grant
    assert second.refresh_token != first.refresh_token
    assert await grants(server).refresh(client_id, first.refresh_token) is None  # spent
    third = await grants(server).refresh(client_id, second.refresh_token)
    assert third is not None and third.grant.grant_id == first.grant.grant_id
    assert len({first.refresh_token, second.refresh_token, third.refresh_token}) == 3


async def test_revoke_user_ends_unused_codes_and_grants(server: Running) -> None:
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    bob = await users(server).create(client_id, "bob")
    alices = await redeemed(server, client_id, alice.oneup_user_id)
    bobs = await redeemed(server, client_id, bob.oneup_user_id)
    unused = await grants(server).issue_code(client_id, alice.oneup_user_id, SCOPE, TTL)
    bobs_code = await grants(server).issue_code(client_id, bob.oneup_user_id, SCOPE, TTL)
    await grants(server).revoke_user(client_id, alice.oneup_user_id)
    assert await grants(server).redeem_code(client_id, unused) is None
    assert await grants(server).live(alices.grant.grant_id) is None
    assert await grants(server).refresh(client_id, alices.refresh_token) is None
    # bob keeps everything; alice stays active and may get a new grant
    assert await grants(server).live(bobs.grant.grant_id) == bobs.grant
    assert await grants(server).redeem_code(client_id, bobs_code) is not None
    assert (await users(server).get(client_id, app_user_id="alice")).active is True
    fresh = await redeemed(server, client_id, alice.oneup_user_id)
    assert await grants(server).live(fresh.grant.grant_id) == fresh.grant


async def test_live_is_none_while_the_user_is_deactivated(server: Running) -> None:
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    redemption = await redeemed(server, client_id, alice.oneup_user_id)
    grant_id = redemption.grant.grant_id
    assert await grants(server).live(grant_id) == redemption.grant
    await set_active(server, client_id, alice.oneup_user_id, False)  # the grant row untouched
    assert await grants(server).live(grant_id) is None
    await set_active(server, client_id, alice.oneup_user_id, True)
    assert await grants(server).live(grant_id) == redemption.grant


async def test_live_is_none_for_an_expired_or_unknown_grant(server: Running) -> None:
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    redemption = await redeemed(server, client_id, alice.oneup_user_id)
    async with server.services.engine.begin() as conn:
        await conn.execute(update(UserGrantRow).values(expires_at=int(time.time()) - 1))
    assert await grants(server).live(redemption.grant.grant_id) is None
    assert await grants(server).refresh(client_id, redemption.refresh_token) is None
    assert await grants(server).live("00000000-0000-0000-0000-000000000000") is None


async def test_token_standing_tells_a_live_token_from_a_denied_one_and_an_ended_grant(
    server: Running,
) -> None:
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    grant_id = (await redeemed(server, client_id, alice.oneup_user_id)).grant.grant_id
    later = int(time.time()) + 300
    assert await grants(server).token_standing(grant_id, "jti-1") is TokenStanding.LIVE

    await grants(server).deny_token("jti-1", later)
    assert await grants(server).token_standing(grant_id, "jti-1") is TokenStanding.REVOKED
    assert await grants(server).token_standing(grant_id, "jti-2") is TokenStanding.LIVE
    assert await grants(server).live(grant_id) is not None  # the grant itself is untouched

    await set_active(server, client_id, alice.oneup_user_id, False)
    assert await grants(server).token_standing(grant_id, "jti-2") is TokenStanding.GRANT_ENDED
    assert await grants(server).token_standing(grant_id, "jti-1") is TokenStanding.GRANT_ENDED
    unknown = "00000000-0000-0000-0000-000000000000"
    assert await grants(server).token_standing(unknown, "jti-2") is TokenStanding.GRANT_ENDED


async def test_a_denied_token_is_kept_in_the_database_until_it_would_have_expired(
    server: Running,
) -> None:
    """Whatever backs the other tokens' deny-list (Redis too), a user token's entry is a row
    beside its grant; an entry past its expiry no longer denies and is purged."""
    client_id = await application(server)
    alice = await users(server).create(client_id, "alice")
    grant_id = (await redeemed(server, client_id, alice.oneup_user_id)).grant.grant_id
    now = int(time.time())
    await grants(server).deny_token("live-entry", now + 300)
    await grants(server).deny_token("old-entry", now + 300)
    async with server.services.engine.begin() as conn:
        await conn.execute(
            update(RevokedTokenRow)
            .where(RevokedTokenRow.jti == "old-entry")
            .values(expires_at=now - 5)
        )
    assert await grants(server).token_standing(grant_id, "old-entry") is TokenStanding.LIVE
    assert await grants(server).purge() == 1  # only the expired entry
    async with server.services.engine.connect() as conn:
        left = (await conn.execute(select(RevokedTokenRow.jti))).scalars().all()
    assert left == ["live-entry"]
    assert await grants(server).token_standing(grant_id, "live-entry") is TokenStanding.REVOKED


async def test_purge_drops_codes_and_grants_ended_a_day_ago_only(server: Running) -> None:
    client_id = await application(server)
    user = await users(server).create(client_id, "purged")
    old = await redeemed(server, client_id, user.oneup_user_id)
    recent = await redeemed(server, client_id, user.oneup_user_id)
    two_days_ago = int(time.time()) - 2 * 86_400
    async with server.services.engine.begin() as conn:
        await conn.execute(
            update(UserGrantRow)
            .where(UserGrantRow.grant_id == old.grant.grant_id)
            .values(expires_at=two_days_ago)
        )
        await conn.execute(update(AuthorizationCodeRow).values(expires_at=two_days_ago))
    assert await grants(server).purge() == 3  # two codes, one grant
    async with server.services.engine.connect() as conn:
        left = (await conn.execute(select(UserGrantRow.grant_id))).scalars().all()
        codes = (await conn.execute(select(AuthorizationCodeRow.code_hash))).scalars().all()
    assert left == [recent.grant.grant_id] and codes == []
    assert await grants(server).live(recent.grant.grant_id) is not None

"""Members, roles, invitations by link and the organization audit page, through the pages."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import insert, update

from fhirgate.domain.organizations import EnvironmentRole, OrganizationRole
from fhirgate.storage.models import InvitationRow, MembershipRow
from fhirgate.storage.repos import now
from tests.dashboard.support import PASSWORD, Browser, browser_for, csrf_of, person
from tests.support import Running

_LINK = re.compile(r'<code id="invitation-link">http://[^/]+(/dashboard/invitations/[^<]+)</code>')


async def _invite(owner: Browser, email: str, role: str = "member") -> str:
    page = await owner.post(
        "/dashboard/orgs/default/members/invite", {"email": email, "role": role}
    )
    assert page.status_code == 200, page.text
    found = _LINK.search(page.text)
    assert found is not None, page.text
    return found.group(1)


async def test_an_invited_person_creates_an_account_and_joins(
    owner: Browser, running: Running
) -> None:
    link = await _invite(owner, "New.Person@example.org", "admin")
    newcomer = browser_for(running.app)
    async with newcomer.http:
        page = await newcomer.http.get(link)
        assert page.status_code == 200
        assert "new.person@example.org" in page.text
        assert page.headers["referrer-policy"] == "no-referrer"
        joined = await newcomer.http.post(
            link, data={"csrf_token": csrf_of(page), "password": "a long new password"}
        )
        assert joined.status_code == 303
        assert (await newcomer.http.get("/dashboard/orgs/default/members")).status_code == 200
        assert (await newcomer.http.get(link)).status_code == 404  # single use
    found = await running.services.accounts.find("new.person@example.org")
    assert found is not None
    roles = await running.services.accounts.memberships(found[0].id)
    assert [(m.organization_slug, m.role) for m in roles] == [("default", "admin")]


async def test_an_invitation_link_refuses_a_weak_password_and_stays_open(
    owner: Browser, running: Running
) -> None:
    link = await _invite(owner, "weak@example.org")
    newcomer = browser_for(running.app)
    async with newcomer.http:
        page = await newcomer.http.get(link)
        refused = await newcomer.http.post(
            link, data={"csrf_token": csrf_of(page), "password": "short"}
        )
        assert refused.status_code == 400
        assert "at least 12 characters" in refused.text
    assert await running.services.accounts.find("weak@example.org") is None
    assert (await browser_for(running.app).http.get(link)).status_code == 200


async def test_an_expired_invitation_is_refused(owner: Browser, running: Running) -> None:
    link = await _invite(owner, "late@example.org")
    async with running.services.engine.begin() as conn:
        await conn.execute(update(InvitationRow).values(expires_at=now() - timedelta(seconds=1)))
    assert (await browser_for(running.app).http.get(link)).status_code == 404


async def test_an_existing_account_joins_by_signing_in_as_the_invited_email(
    owner: Browser, running: Running
) -> None:
    other_org = await running.services.organizations.create("other", "Other")
    await person(running.services, "bea@example.org", organization_id=other_org)
    link = await _invite(owner, "bea@example.org")
    bea = browser_for(running.app)
    async with bea.http:
        page = await bea.http.get(link)
        cold = await bea.http.post(
            link, data={"csrf_token": csrf_of(page), "password": PASSWORD + "x"}
        )
        assert cold.status_code == 409  # the email has an account: sign in first
        await bea.sign_in("bea@example.org")
        joined = await bea.post(link)
        assert joined.status_code == 303
    found = await running.services.accounts.find("bea@example.org")
    assert found is not None
    slugs = {m.organization_slug for m in await running.services.accounts.memberships(found[0].id)}
    assert slugs == {"default", "other"}


async def test_signed_in_as_someone_else_the_invitation_is_not_taken(
    owner: Browser, running: Running
) -> None:
    link = await _invite(owner, "carol@example.org")
    refused = await owner.post(link)  # the owner is not carol
    assert refused.status_code == 409
    assert await running.services.invitations.find(link.rsplit("/", 1)[1]) is not None


async def test_members_cannot_invite_or_change_roles(owner: Browser, running: Running) -> None:
    member = await person(running.services, "mem@example.org", OrganizationRole.MEMBER)
    browser = browser_for(running.app)
    async with browser.http:
        await browser.sign_in("mem@example.org")
        page = await browser.http.get("/dashboard/orgs/default/members")
        assert page.status_code == 200
        assert "Create invitation link" not in page.text
        invite = await browser.post(
            "/dashboard/orgs/default/members/invite", {"email": "x@example.org", "role": "member"}
        )
        assert invite.status_code == 403
        promote = await browser.post(
            f"/dashboard/orgs/default/members/{member.id}/role", {"role": "owner"}
        )
        assert promote.status_code == 403
        assert (await browser.http.get("/dashboard/orgs/default/audit")).status_code == 403
    roles = await running.services.accounts.memberships(member.id)
    assert roles[0].role == "member"


async def test_admins_cannot_make_or_unmake_owners(owner: Browser, running: Running) -> None:
    await person(running.services, "adm@example.org", OrganizationRole.ADMIN)
    member = await person(running.services, "mem@example.org", OrganizationRole.MEMBER)
    owner_user = (await running.services.accounts.find("owner@example.org"))[0]  # type: ignore[index]
    admin = browser_for(running.app)
    async with admin.http:
        await admin.sign_in("adm@example.org")
        promote = await admin.post(
            f"/dashboard/orgs/default/members/{member.id}/role", {"role": "owner"}
        )
        demote = await admin.post(
            f"/dashboard/orgs/default/members/{owner_user.id}/role", {"role": "member"}
        )
        assert promote.status_code == demote.status_code == 400
        assert "only an owner" in promote.text
        owner_invite = await admin.post(
            "/dashboard/orgs/default/members/invite", {"email": "o2@example.org", "role": "owner"}
        )
        assert owner_invite.status_code == 400
        engineer = await admin.post(
            f"/dashboard/orgs/default/members/{member.id}/role",
            {"role": "engineer", "environment": "production"},
        )
        assert engineer.status_code == 303
    env = await running.services.organizations.environment_of(
        (await running.services.organizations.default_environment()).organization_id, "production"
    )
    assert env is not None
    assert (await running.services.accounts.environment_roles(member.id)) == {
        env.id: EnvironmentRole.ENGINEER.value
    }


async def test_the_members_page_shows_each_persons_roles_in_this_organizations_environments(
    owner: Browser, running: Running
) -> None:
    """One query for everyone's environment roles, limited to this organization's
    environments: a role the same person holds elsewhere never shows here."""
    services = running.services
    default = (await services.organizations.default_environment()).organization_id
    elsewhere = await services.organizations.create("elsewhere", "Elsewhere")
    both = await person(services, "both@example.org", OrganizationRole.MEMBER,
                        env_roles={"production": EnvironmentRole.ENGINEER})  # fmt: skip
    async with services.engine.begin() as conn:
        await conn.execute(
            insert(MembershipRow).values(
                user_id=both.id, organization_id=elsewhere, role=OrganizationRole.MEMBER.value
            )
        )
    their_dev = await services.organizations.environment_of(elsewhere, "development")
    assert their_dev is not None
    await services.accounts.set_environment_role(both.id, their_dev.id, EnvironmentRole.VIEWER)
    plain = await person(services, "plain@example.org", OrganizationRole.MEMBER)

    production = await services.organizations.environment_of(default, "production")
    assert production is not None
    assert await services.accounts.environment_roles_in(default) == {
        both.id: {production.id: EnvironmentRole.ENGINEER.value}
    }
    page = await owner.http.get("/dashboard/orgs/default/members")
    assert page.status_code == 200
    assert "both@example.org" in page.text and "plain@example.org" in page.text

    def selected(column: int, user_id: str) -> str:
        found = re.search(rf'id="env-{column}-{user_id}" name="role">(.*?)</select>', page.text,
                          re.S)  # fmt: skip
        assert found is not None, page.text
        chosen = re.search(r'<option value="([^"]*)" selected>', found.group(1))
        assert chosen is not None
        return chosen.group(1)

    # development, staging, production: their viewer role elsewhere is not shown here
    assert [selected(column, both.id) for column in (1, 2, 3)] == ["", "", "engineer"]
    assert [selected(column, plain.id) for column in (1, 2, 3)] == ["", "", ""]
    assert await services.accounts.environment_roles_in(elsewhere) == {
        both.id: {their_dev.id: EnvironmentRole.VIEWER.value}
    }
    assert plain.id not in await services.accounts.environment_roles_in(default)


async def test_the_last_owner_cannot_demote_themself(owner: Browser, running: Running) -> None:
    me = (await running.services.accounts.find("owner@example.org"))[0]  # type: ignore[index]
    refused = await owner.post(f"/dashboard/orgs/default/members/{me.id}/role", {"role": "admin"})
    assert refused.status_code == 400
    assert "last owner" in refused.text
    roles = await running.services.accounts.memberships(me.id)
    assert roles[0].role == "owner"


async def test_bad_role_values_are_refused_cleanly(owner: Browser, running: Running) -> None:
    member = await person(running.services, "mem@example.org", OrganizationRole.MEMBER)
    for data in ({"role": "emperor"}, {"role": "engineer", "environment": "moon"}):
        refused = await owner.post(f"/dashboard/orgs/default/members/{member.id}/role", data)
        assert refused.status_code == 400
    unknown = await owner.post(
        "/dashboard/orgs/default/members/not-a-member/role", {"role": "admin"}
    )
    assert unknown.status_code == 404
    bad_email = await owner.post(
        "/dashboard/orgs/default/members/invite", {"email": "not an email", "role": "member"}
    )
    assert bad_email.status_code == 400


async def test_another_organization_is_not_found(owner: Browser, running: Running) -> None:
    await running.services.organizations.create("other", "Other")
    for path in (
        "/dashboard/orgs/other/members",
        "/dashboard/orgs/other/audit",
        "/dashboard/orgs/nope/members",
    ):
        assert (await owner.http.get(path)).status_code == 404


async def test_the_audit_page_shows_who_changed_what(owner: Browser, running: Running) -> None:
    member = await person(running.services, "mem@example.org", OrganizationRole.MEMBER)
    await owner.post(f"/dashboard/orgs/default/members/{member.id}/role", {"role": "admin"})
    await _invite(owner, "dan@example.org")
    page = await owner.http.get("/dashboard/orgs/default/audit")
    assert page.status_code == 200
    assert "dashboard.role_changed" in page.text
    assert "owner@example.org" in page.text
    assert f"user={member.id} role=admin" in page.text
    assert "dashboard.invitation_created" in page.text and "dan@example.org" in page.text
    events = await running.services.audit.recent(organization_id="nobody")
    assert events == []


async def test_names_and_emails_are_escaped(owner: Browser, running: Running) -> None:
    org = await running.services.organizations.create("x", "<b>Org</b>")
    token = await running.services.invitations.create(
        org, "evil@example.org", OrganizationRole.MEMBER, None
    )
    page = await browser_for(running.app).http.get(f"/dashboard/invitations/{token}")
    assert "<b>Org</b>" not in page.text
    assert "&lt;b&gt;Org&lt;/b&gt;" in page.text


async def test_an_environment_role_can_be_removed(owner: Browser, running: Running) -> None:
    member = await person(
        running.services,
        "mem@example.org",
        OrganizationRole.MEMBER,
        env_roles={"staging": EnvironmentRole.ENGINEER},
    )
    cleared = await owner.post(
        f"/dashboard/orgs/default/members/{member.id}/role", {"role": "", "environment": "staging"}
    )
    assert cleared.status_code == 303
    assert await running.services.accounts.environment_roles(member.id) == {}


async def test_malformed_forms_and_unknown_pages_get_html_answers(owner: Browser) -> None:
    missing = await owner.post("/dashboard/orgs/default/members/invite", {"role": "member"})
    assert missing.status_code == 400
    assert missing.headers["content-type"].startswith("text/html")
    assert "missing or not valid" in missing.text
    unknown = await owner.http.get("/dashboard/no/such/page")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("text/html")
    assert "There is nothing here" in unknown.text

"""Pages about people: sign-in and sign-out, the account (password), invitations by link, an
organization's members and roles, and its audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import Response

from fhirgate.dashboard.password_checks import PasswordChecks, TooManyAtOnce
from fhirgate.dashboard.passwords import PasswordRejected
from fhirgate.dashboard.sessions import Session
from fhirgate.domain.errors import Conflict, NotFound
from fhirgate.domain.organizations import EnvironmentKind, EnvironmentRole, OrganizationRole
from fhirgate.oauth.throttle import Throttled
from fhirgate.storage.accounts import LastOwner, Membership
from fhirgate.web.dashboard.common import (
    DashboardRoute,
    Page,
    PageError,
    check_csrf,
    check_signin_csrf,
    membership,
    not_found,
    redirect,
    render,
    require_session,
    safe_next,
    services_of,
    session_of,
    sessions_of,
    set_session_cookie,
    signin_csrf,
)
from fhirgate.web.token import source_address

__all__ = ["router"]

router = APIRouter(route_class=DashboardRoute)

_WRONG = "The email or the password is not right."


def _checks(request: Request) -> PasswordChecks:
    return services_of(request).password_checks


def _refused(
    request: Request,
    template: str,
    context: dict[str, object],
    refusal: Throttled,
    page: Page | None = None,
) -> Response:
    """429 with ``Retry-After`` (RFC 6585 §4): the form again, saying why and for how long."""
    if isinstance(refusal, TooManyAtOnce):
        error = "Too many password checks at once. Try again in a moment."
    else:
        error = f"Too many failed attempts. Try again in {refusal.retry_after} seconds."
    refused = render(request, template, {**context, "error": error}, page=page, status=429)
    refused.headers["Retry-After"] = str(refusal.retry_after)
    return refused


@router.get("/")
async def home(session: Annotated[Session, Depends(require_session)], request: Request) -> Response:
    """The first organization's Developer page."""
    memberships = await services_of(request).accounts.memberships(session.user.id)
    if not memberships:
        return render(
            request,
            "message.html",
            {
                "heading": "No organization yet",
                "message": "You are not a member of any organization. Ask an owner or admin to "
                "invite you.",
            },
        )
    return redirect(f"/dashboard/orgs/{memberships[0].organization_slug}/development/developer")


@router.get("/sign-in")
async def sign_in_page(request: Request, next: str | None = None) -> Response:
    if await session_of(request) is not None:
        return redirect(safe_next(next))
    context = {"signin_csrf": signin_csrf(request), "next": safe_next(next), "email": ""}
    return render(request, "sign_in.html", context)


@router.post("/sign-in", dependencies=[Depends(check_signin_csrf)])
async def sign_in(
    request: Request,
    email: Annotated[str, Form(max_length=254)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form(max_length=2048)] = "/dashboard/",
) -> Response:
    """Check the password (the attempt counted first, per email and address, NIST SP 800-63B
    §5.2.2: :mod:`fhirgate.dashboard.password_checks`), then start a new session: any session
    the browser had is ended (its id is never reused)."""
    services = services_of(request)
    source = source_address(request.scope)
    email_key = email.strip().lower()
    context: dict[str, object] = {
        "signin_csrf": signin_csrf(request),
        "next": safe_next(next),
        "email": email,
    }
    try:
        async with _checks(request).attempt(source, email_key) as attempt:
            found = await services.accounts.find(email)
            user = found[0] if found else None
            right = await attempt.verify(found[1] if found else None, password)
            if right and user is not None and user.active:
                await attempt.succeeded()
    except Throttled as refusal:
        return _refused(request, "sign_in.html", context, refusal)
    if not right or user is None or not user.active:
        services.audit.enqueue("dashboard.sign_in_failed", source=source, detail=email_key[:100])
        return render(request, "sign_in.html", {**context, "error": _WRONG}, status=401)
    old = await session_of(request)
    if old is not None:
        await sessions_of(request).end(old)
    token = await sessions_of(request).start(user.id)
    await services.audit.record("dashboard.signed_in", source=source, actor=user.email)
    response = redirect(safe_next(next))
    set_session_cookie(request, response, token)
    return response


@router.post("/sign-out")
async def sign_out(request: Request, session: Annotated[Session, Depends(check_csrf)]) -> Response:
    await sessions_of(request).end(session)
    response = redirect("/dashboard/sign-in")
    set_session_cookie(request, response, None)
    return response


@router.get("/account")
async def account(
    request: Request, session: Annotated[Session, Depends(require_session)]
) -> Response:
    return render(request, "account.html", page=Page("account"))


@router.post("/account/password")
async def change_password(
    request: Request,
    session: Annotated[Session, Depends(check_csrf)],
    current: Annotated[str, Form(max_length=1024)],
    new: Annotated[str, Form(max_length=1024)],
) -> Response:
    """A new password ends every session of the person and starts a new one here. The current
    password is checked like a sign-in (counted first, per email and address: a stolen session
    cannot guess it faster), and a wrong one is audited."""
    services = services_of(request)
    source = source_address(request.scope)
    email = session.user.email
    try:
        async with _checks(request).attempt(source, email) as attempt:
            found = await services.accounts.find(email)
            right = await attempt.verify(found[1] if found else None, current)
            if right:
                await attempt.succeeded()
        if not right:
            await services.audit.record(
                "dashboard.password_change_failed", source=source, actor=email
            )
            error = "The current password is not right."
            return render(
                request, "account.html", {"error": error}, page=Page("account"), status=400
            )
        new_hash = await _checks(request).hash_new(new, email)
    except Throttled as refusal:
        return _refused(request, "account.html", {}, refusal, Page("account"))
    except PasswordRejected as exc:
        return render(
            request, "account.html", {"error": str(exc)}, page=Page("account"), status=400
        )
    await services.accounts.set_password(session.user.id, new_hash)
    await sessions_of(request).end_all(session.user.id)
    token = await sessions_of(request).start(session.user.id)
    await services.audit.record("dashboard.password_changed", actor=session.user.email)
    response = render(
        request,
        "message.html",
        {"heading": "Password changed", "message": "Your other sessions have been signed out."},
        page=Page("account"),
    )
    set_session_cookie(request, response, token)
    return response


# Invitations -------------------------------------------------------------------------------


@router.get("/invitations/{token}")
async def invitation_page(request: Request, token: str) -> Response:
    invitation = await services_of(request).invitations.find(token)
    if invitation is None:
        raise PageError(404, "Invitation not valid", "This link has been used or has expired.")
    context = {"invitation": invitation, "signin_csrf": signin_csrf(request)}
    response = render(request, "invitation.html", context, session=await session_of(request))
    response.headers["Referrer-Policy"] = "no-referrer"  # the link is a credential
    return response


@router.post("/invitations/{token}")
async def accept_invitation(
    request: Request, token: str, password: Annotated[str | None, Form(max_length=1024)] = None
) -> Response:
    """Signed in as the invited email: join. Not signed in: create the account, then sign in."""
    services = services_of(request)
    invitation = await services.invitations.find(token)
    if invitation is None:
        raise PageError(404, "Invitation not valid", "This link has been used or has expired.")
    session = await session_of(request)
    if session is not None:
        await check_csrf(request)
        try:
            await services.invitations.accept_as(invitation, session.user)
        except (NotFound, Conflict) as exc:
            raise PageError(409, "Cannot join", str(exc)) from exc
        user = session.user
        response = redirect("/dashboard/")
    else:
        await check_signin_csrf(request)
        context = {"invitation": invitation, "signin_csrf": signin_csrf(request)}
        try:
            password_hash = await _checks(request).hash_new(password or "", invitation.email)
        except Throttled as refusal:
            return _refused(request, "invitation.html", context, refusal)
        except PasswordRejected as exc:
            return render(request, "invitation.html", {**context, "error": str(exc)}, status=400)
        try:
            user = await services.invitations.accept_as_new(invitation, password_hash)
        except (NotFound, Conflict) as exc:
            raise PageError(409, "Cannot join", str(exc)) from exc
        response = redirect("/dashboard/")
        set_session_cookie(request, response, await sessions_of(request).start(user.id))
    await services.audit.record(
        "dashboard.invitation_accepted",
        actor=user.email,
        organization_id=invitation.organization_id,
        detail=f"role={invitation.role}",
    )
    return response


# Members ----------------------------------------------------------------------------------


def _manages_people(member: Membership) -> bool:
    return member.role in {OrganizationRole.OWNER, OrganizationRole.ADMIN}


async def _members_page(
    request: Request, session: Session, org: Membership, **extra: object
) -> Response:
    services = services_of(request)
    people = await services.accounts.members(org.organization_id)
    roles = await services.accounts.environment_roles_in(org.organization_id)
    environments = {
        kind.value: await services.organizations.environment_of(org.organization_id, kind.value)
        for kind in EnvironmentKind
    }
    pending = await services.invitations.pending(org.organization_id)
    context = {
        "people": people,
        "env_roles": {
            person.id: {
                kind: roles.get(person.id, {}).get(env.id, "") if env else ""
                for kind, env in environments.items()
            }
            for person, _ in people
        },
        "environments": list(environments),
        "pending": pending,
        "can_manage": _manages_people(org),
        "is_owner": org.role == OrganizationRole.OWNER,
        "org_roles": [role.value for role in OrganizationRole],
        "environment_roles": [role.value for role in EnvironmentRole],
        **extra,
    }
    status = 400 if "error" in extra else 200
    return render(request, "members.html", context, page=Page("members", org), status=status)


@router.get("/orgs/{slug}/members")
async def members(
    request: Request, slug: str, session: Annotated[Session, Depends(require_session)]
) -> Response:
    return await _members_page(request, session, await membership(request, session, slug))


async def _manager(request: Request, session: Session, slug: str) -> Membership:
    org = await membership(request, session, slug)
    if not _manages_people(org):
        raise PageError(403, "Not allowed", "Only owners and admins manage members.")
    return org


@router.post("/orgs/{slug}/members/invite")
async def invite(
    request: Request,
    slug: str,
    session: Annotated[Session, Depends(check_csrf)],
    email: Annotated[str, Form(max_length=254)],
    role: Annotated[str, Form(max_length=16)],
) -> Response:
    """A single-use link, valid seven days, shown to the inviter (fhirgate sends no mail)."""
    org = await _manager(request, session, slug)
    services = services_of(request)
    try:
        wanted = OrganizationRole(role)
        if wanted == OrganizationRole.OWNER and org.role != OrganizationRole.OWNER:
            raise ValueError("only an owner can invite an owner")
        token = await services.invitations.create(
            org.organization_id, email, wanted, session.user.id
        )
    except ValueError as exc:
        return await _members_page(request, session, org, error=str(exc))
    await services.audit.record(
        "dashboard.invitation_created",
        actor=session.user.email,
        organization_id=org.organization_id,
        detail=f"email={email.strip().lower()[:100]} role={wanted.value}",
    )
    link = services.settings.url(f"/dashboard/invitations/{token}")
    return await _members_page(request, session, org, invitation_link=link)


@router.post("/orgs/{slug}/members/{user_id}/role")
async def set_role(
    request: Request,
    slug: str,
    user_id: str,
    session: Annotated[Session, Depends(check_csrf)],
    role: Annotated[str, Form(max_length=16)] = "",
    environment: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    """An organization role (``environment`` empty) or a role in one environment. Admins
    cannot make or unmake owners; nobody leaves the organization without an owner."""
    org = await _manager(request, session, slug)
    services = services_of(request)
    people = dict(
        (person.id, current)
        for person, current in await services.accounts.members(org.organization_id)
    )
    if user_id not in people:
        not_found()
    try:
        if environment:
            env = await services.organizations.environment_of(org.organization_id, environment)
            if env is None:
                raise ValueError(f"unknown environment {environment!r}")
            if role:
                await services.accounts.set_environment_role(user_id, env.id, EnvironmentRole(role))
            else:
                await services.accounts.clear_environment_role(user_id, env.id)
            detail = f"user={user_id} env={environment} role={role or 'none'}"
        else:
            wanted = OrganizationRole(role)
            touches_owner = OrganizationRole.OWNER in (wanted, people[user_id])
            if touches_owner and org.role != OrganizationRole.OWNER:
                raise ValueError("only an owner can make or unmake an owner")
            await services.accounts.set_organization_role(user_id, org.organization_id, wanted)
            detail = f"user={user_id} role={role}"
    except LastOwner as exc:
        return await _members_page(request, session, org, error=str(exc))
    except ValueError as exc:
        return await _members_page(request, session, org, error=f"Role not changed: {exc}")
    await services.audit.record(
        "dashboard.role_changed",
        actor=session.user.email,
        organization_id=org.organization_id,
        detail=detail,
    )
    return redirect(f"/dashboard/orgs/{slug}/members")


# Audit -------------------------------------------------------------------------------------


@router.get("/orgs/{slug}/audit")
async def audit(
    request: Request, slug: str, session: Annotated[Session, Depends(require_session)]
) -> Response:
    """Who changed what, when, in this organization (owners and admins)."""
    org = await membership(request, session, slug)
    if not _manages_people(org):
        raise PageError(403, "Not allowed", "Only owners and admins read the audit log.")
    events = await services_of(request).audit.recent(organization_id=org.organization_id, limit=200)
    return render(request, "audit.html", {"events": events}, page=Page("audit", org))

"""The API-key service the dashboard pages and the Platform API share: validation, public keys
(PEM and JWK), secrets, JWKS URL tests through the SSRF guard, activity from the audit log,
user-level keys and the role rules — on real storage, with real token requests."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from sqlalchemy import insert, select

from fhirgate.dashboard.api_keys import (
    ApiKeys,
    Forbidden,
    KeyChangeError,
    NotFound,
)
from fhirgate.domain.organizations import EnvironmentRole, OrganizationRole
from fhirgate.oauth.jose import jwk_from_public_key
from fhirgate.oauth.quota import CallQuota
from fhirgate.oauth.registration import jwk_thumbprint
from fhirgate.services import Services
from fhirgate.storage.models import AuditEventRow
from tests.jwks_server import JWKSServer, Reply, jwks_reply
from tests.platform.support import Org, organization, person, public_jwk
from tests.support import Running, SigningClient, pin_window, private_key


@pytest.fixture
async def acme(running: Running) -> tuple[Org, str]:
    org = await organization(running.services, "acme")
    return org, await person(running.services, "owner@acme.example", org, OrganizationRole.OWNER)


async def _jwt_key(services: Services, actor: str, org: Org, name: str = "bridge") -> str:
    created = await services.api_keys.create(actor, org.dev.id, name)
    assert created.secret is None
    return created.key.client_id


async def _token(http: httpx.AsyncClient, signing: SigningClient) -> httpx.Response:
    return await http.post("/oauth2/token", data=signing.form(scope="system/*.rs"))


def _basic(client_id: str, secret: str) -> dict[str, object]:
    return {
        "data": {"grant_type": "client_credentials", "scope": "system/*.rs"},
        "auth": httpx.BasicAuth(client_id, secret),
    }


async def _events(services: Services, client_id: str) -> list[tuple[str, str, str | None, str]]:
    event = AuditEventRow
    stmt = (
        select(event.event, event.actor, event.organization_id, event.detail)
        .where(event.client_id == client_id, event.event.like("api_key.%"))
        .order_by(event.id)
    )
    async with services.engine.connect() as conn:
        return [tuple(row) for row in await conn.execute(stmt)]


# -- names ------------------------------------------------------------------------------------


async def test_renaming_validates_and_strips_the_name(
    running: Running, acme: tuple[Org, str]
) -> None:
    services = running.services
    org, owner = acme
    key_id = await _jwt_key(services, owner, org)
    assert (await services.api_keys.rename(owner, key_id, "  EHR feed  ")).name == "EHR feed"
    assert (await services.api_keys.rename(owner, key_id, "n" * 100)).name == "n" * 100
    for bad, why in (
        ("", "empty"),
        ("   ", "empty"),
        ("n" * 101, "at most 100"),
        ("line\nbreak", "control"),
        ("nul\x00", "control"),
        ("bidi\u202eevil", "control"),
        ("tab\there", "control"),
    ):
        with pytest.raises(KeyChangeError, match=why) as caught:
            await services.api_keys.rename(owner, key_id, bad)
        assert caught.value.field == "name"
    assert (await services.api_keys.get(owner, key_id)).name == "n" * 100
    events = await _events(services, key_id)
    assert [e[0] for e in events] == ["api_key.created", "api_key.renamed", "api_key.renamed"]
    assert {(e[1], e[2]) for e in events} == {("owner@acme.example", org.id)}


async def test_roles_and_organizations_bound_every_operation(
    running: Running, acme: tuple[Org, str]
) -> None:
    services = running.services
    org, owner = acme
    other = await organization(services, "globex")
    outsider = await person(services, "x@globex.example", other, OrganizationRole.OWNER)
    viewer = await person(services, "v@acme.example", org, development=EnvironmentRole.VIEWER)
    engineer = await person(services, "e@acme.example", org, development=EnvironmentRole.ENGINEER)
    key_id = await _jwt_key(services, owner, org)
    prod = await services.api_keys.create(owner, org.prod.id, "prod")

    assert [k.client_id for k in await services.api_keys.list_keys(viewer, org.dev.id)] == [key_id]
    with pytest.raises(Forbidden):
        await services.api_keys.rename(viewer, key_id, "mine")
    with pytest.raises(Forbidden):
        await services.api_keys.create(viewer, org.dev.id, "mine")
    with pytest.raises(Forbidden):
        await services.api_keys.revoke(engineer, prod.key.client_id)
    assert (await services.api_keys.rename(engineer, key_id, "eng")).name == "eng"
    await services.api_keys.create(engineer, org.dev.id, "eng's")

    with pytest.raises(NotFound) as unknown:
        await services.api_keys.get(outsider, "does-not-exist")
    with pytest.raises(NotFound) as foreign:
        await services.api_keys.get(outsider, key_id)
    assert str(unknown.value) == str(foreign.value)
    for operation in (
        services.api_keys.activity(outsider, key_id),
        services.api_keys.delete(outsider, key_id),
        services.api_keys.list_keys(outsider, org.dev.id),
        services.api_keys.create(outsider, org.dev.id, "x"),
    ):
        with pytest.raises(NotFound):
            await operation
    assert await services.clients.get(key_id) is not None
    envs = await services.api_keys.environments(engineer)
    assert [(e.kind, e.can_manage) for e in envs] == [
        ("development", True),
        ("staging", False),
        ("production", False),
    ]


# -- public keys ------------------------------------------------------------------------------


async def test_public_keys_are_added_as_pem_or_jwk_and_authenticate(
    running: Running, acme: tuple[Org, str]
) -> None:
    services, http = running.services, running.http
    org, owner = acme
    key_id = await _jwt_key(services, owner, org)

    rsa_key = private_key("RS384", 0)
    pem = rsa_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    view = await services.api_keys.add_public_key(owner, key_id, pem.decode())
    thumbprint = jwk_thumbprint(jwk_from_public_key(rsa_key.public_key(), ""))
    assert [(k.kid, k.kty) for k in view.keys] == [(thumbprint, "RSA")]
    assert (
        await _token(http, SigningClient(key_id, rsa_key, thumbprint, "RS384"))
    ).status_code == 200

    ec_key = private_key("ES384", 1)
    bare = jwk_from_public_key(ec_key.public_key(), "")
    del bare["kid"]
    view = await services.api_keys.add_public_key(owner, key_id, json.dumps(bare), kid="laptop")
    assert [k.kid for k in view.keys] == [thumbprint, "laptop"]
    assert (await _token(http, SigningClient(key_id, ec_key, "laptop", "ES384"))).status_code == 200

    another = jwk_from_public_key(private_key("ES384", 2).public_key(), "")
    del another["kid"]
    view = await services.api_keys.add_public_key(owner, key_id, json.dumps(another))
    assert view.keys[-1].kid == jwk_thumbprint(another)
    as_set = {"keys": [public_jwk("s1", slot=3), public_jwk("s2", slot=4)]}
    view = await services.api_keys.add_public_key(owner, key_id, json.dumps(as_set))
    assert [k.kid for k in view.keys][-2:] == ["s1", "s2"]
    assert all(set(jwk) & {"d", "p", "q"} == set() for jwk in view.public_jwks)

    removed = await services.api_keys.remove_public_key(owner, key_id, "laptop")
    assert "laptop" not in [k.kid for k in removed.keys]
    refused = await _token(http, SigningClient(key_id, ec_key, "laptop", "ES384"))
    assert refused.status_code == 401, refused.text  # gone at once, no cache delay here
    with pytest.raises(KeyChangeError, match="no public key with kid"):
        await services.api_keys.remove_public_key(owner, key_id, "laptop")

    events = await _events(services, key_id)
    assert [e[0] for e in events][1:] == ["api_key.key_added"] * 4 + ["api_key.key_removed"]
    assert events[2][3] == "kid=laptop" and events[-1][3] == "kid=laptop"
    assert all(bare["x"] not in e[3] for e in events)


async def test_private_duplicate_and_unusable_keys_are_refused(
    running: Running, acme: tuple[Org, str]
) -> None:
    services = running.services
    org, owner = acme
    key_id = await _jwt_key(services, owner, org)
    ec_key = private_key("ES384", 0)
    private_pem = ec_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    private_jwk = {**public_jwk("p"), "d": "AAAA"}
    cases = [
        (private_pem.decode(), "private key"),
        (json.dumps(private_jwk), r"private key material \(d\)"),
        (json.dumps({**public_jwk("r"), "kty": "RSA", "p": "x", "q": "y"}), r"\(p, q\)"),
        (json.dumps({"kid": "s", "kty": "oct", "k": "AAAA"}), r"\(k\)"),
        ("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", "not a PEM public key"),
        ("just some text", "neither a PEM public key nor a JWK"),
        ("", "paste"),
        (json.dumps({"kid": "x", "kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}), "unusable"),
        (json.dumps(["not", "a", "jwk"]), "JSON object"),
    ]
    for text, why in cases:
        with pytest.raises(KeyChangeError, match=why):
            await services.api_keys.add_public_key(owner, key_id, text)
    await services.api_keys.add_public_key(owner, key_id, json.dumps(public_jwk("k1")))
    with pytest.raises(KeyChangeError, match="'k1' is already registered"):
        await services.api_keys.add_public_key(owner, key_id, json.dumps(public_jwk("k1", slot=4)))
    with pytest.raises(KeyChangeError, match="kid"):
        await services.api_keys.add_public_key(owner, key_id, json.dumps(public_jwk("a b")))
    assert [k.kid for k in (await services.api_keys.get(owner, key_id)).keys] == ["k1"]


async def test_keys_added_at_the_same_moment_are_all_kept(server: Running) -> None:
    """Optimistic concurrency: concurrent additions retry on a fresh row, none is lost."""
    services = server.services
    org = await organization(services, "acme")
    owner = await person(services, "owner@acme.example", org, OrganizationRole.OWNER)
    key_id = await _jwt_key(services, owner, org)
    texts = [json.dumps(public_jwk(f"k{i}", slot=i)) for i in range(3)]
    await asyncio.gather(*(services.api_keys.add_public_key(owner, key_id, t) for t in texts))
    kids = sorted(k.kid for k in (await services.api_keys.get(owner, key_id)).keys)
    assert kids == ["k0", "k1", "k2"]


# -- secrets ----------------------------------------------------------------------------------


async def test_a_secret_is_shown_once_and_rotation_ends_the_old_one_now(
    running: Running, acme: tuple[Org, str]
) -> None:
    services, http = running.services, running.http
    org, owner = acme
    created = await services.api_keys.create(owner, org.dev.id, "pattern", "client_secret_basic")
    secret, key_id = created.secret, created.key.client_id
    assert secret is not None and secret not in repr(created)
    assert not any("secret" in name or "hash" in name for name in created.key.__slots__)
    assert (await http.post("/oauth2/token", **_basic(key_id, secret))).status_code == 200

    rotated = await services.api_keys.rotate_secret(owner, key_id)
    assert rotated.secret is not None and rotated.secret != secret
    old = await http.post("/oauth2/token", **_basic(key_id, secret))
    assert old.status_code == 401, old.text
    new = await http.post("/oauth2/token", **_basic(key_id, rotated.secret))
    assert new.status_code == 200, new.text
    events = await _events(services, key_id)
    assert [e[0] for e in events] == ["api_key.created", "api_key.secret_rotated"]
    assert all(secret not in e[3] and rotated.secret not in e[3] for e in events)

    jwt_key = await _jwt_key(services, owner, org)
    with pytest.raises(KeyChangeError, match="has no secret"):
        await services.api_keys.rotate_secret(owner, jwt_key)
    with pytest.raises(KeyChangeError, match="takes no public keys"):
        await services.api_keys.add_public_key(owner, key_id, json.dumps(public_jwk()))
    with pytest.raises(KeyChangeError, match="takes no public keys"):
        await services.api_keys.create(
            owner, org.dev.id, "x", "client_secret_post", jwks_url="https://k.example.org/j"
        )
    legacy = await services.api_keys.create(owner, org.dev.id, "legacy", "legacy_api_key")
    assert legacy.secret is not None and legacy.key.auth_method == "legacy_api_key"
    with pytest.raises(KeyChangeError) as method:
        await services.api_keys.create(owner, org.dev.id, "x", "magic")
    assert method.value.field == "auth_method"
    with pytest.raises(KeyChangeError, match="user-level"):
        await services.api_keys.create(owner, org.dev.id, "x", scope="system/*.rs platform")


# -- JWKS URLs --------------------------------------------------------------------------------


async def test_a_jwks_url_is_set_tested_for_real_and_cleared(
    running: Running, acme: tuple[Org, str]
) -> None:
    services = running.services
    org, owner = acme
    key_id = await _jwt_key(services, owner, org)
    async with JWKSServer() as jwks_server:
        url = jwks_server.url("/jwks.json")
        jwks_server.replies["/jwks.json"] = jwks_reply(public_jwk("a"), public_jwk("b", slot=4))
        view = await services.api_keys.set_jwks_url(owner, key_id, url)
        assert view.jwks_url == url
        assert (await services.api_keys.test_jwks_url(owner, key_id)).kids == ("a", "b")
        jwks_server.replies["/jwks.json"] = jwks_reply(public_jwk("c", slot=5))
        checked = await services.api_keys.test_jwks_url(owner, key_id)
        assert checked.kids == ("c",) and jwks_server.hits["/jwks.json"] == 2  # no cache
        jwks_server.replies["/gone"] = Reply(status=404)
        with pytest.raises(KeyChangeError, match="HTTP 404"):
            await services.api_keys.test_jwks_url(owner, key_id, jwks_server.url("/gone"))
        jwks_server.replies["/junk"] = Reply(body=b"<html>")
        with pytest.raises(KeyChangeError, match="not a JWK Set"):
            await services.api_keys.test_jwks_url(owner, key_id, jwks_server.url("/junk"))
    cleared = await services.api_keys.set_jwks_url(owner, key_id, None)
    assert cleared.jwks_url is None
    with pytest.raises(KeyChangeError, match="no JWKS URL"):
        await services.api_keys.test_jwks_url(owner, key_id)
    events = await _events(services, key_id)
    assert [e[3] for e in events if e[0] == "api_key.jwks_url_set"] == ["host=127.0.0.1", "cleared"]


async def test_the_ssrf_guard_refuses_private_addresses_and_plain_http(
    running: Running, acme: tuple[Org, str]
) -> None:
    services = running.services
    org, owner = acme
    key_id = await _jwt_key(services, owner, org)
    for url in ("https://10.1.2.3/jwks.json", "https://169.254.169.254/latest/meta-data"):
        with pytest.raises(KeyChangeError, match="private, loopback or reserved") as caught:
            await services.api_keys.test_jwks_url(owner, key_id, url)
        assert url.split("/")[2] not in str(caught.value)  # the address is not echoed
    strict = _service(
        services, settings=services.settings.model_copy(update={"allow_insecure_jwks": False})
    )
    async with JWKSServer() as jwks_server:
        jwks_server.replies["/jwks.json"] = jwks_reply(public_jwk("a"))
        with pytest.raises(KeyChangeError, match="https"):
            await strict.set_jwks_url(owner, key_id, jwks_server.url("/jwks.json"))
        loopback = f"https://127.0.0.1:{jwks_server.port}/jwks.json"
        with pytest.raises(KeyChangeError, match="private, loopback or reserved"):
            await strict.test_jwks_url(owner, key_id, loopback)
        assert jwks_server.hits["/jwks.json"] == 0
    viewer = await person(services, "v@acme.example", org)
    with pytest.raises(Forbidden):  # testing a URL of one's choice takes the manage right
        await services.api_keys.test_jwks_url(viewer, key_id, "https://keys.example.org/j")


# -- activity ---------------------------------------------------------------------------------


async def test_activity_counts_tokens_per_day_and_lists_failures(server: Running) -> None:
    services, http = server.services, server.http
    org = await organization(services, "acme")
    owner = await person(services, "owner@acme.example", org, OrganizationRole.OWNER)
    member = await person(services, "m@acme.example", org)
    created = await services.api_keys.create(
        owner, org.dev.id, "busy", jwk_set={"keys": [public_jwk("a1", slot=5)]}
    )
    key_id = created.key.client_id
    signing = SigningClient(key_id, private_key("ES384", 5), "a1", "ES384")
    empty = await services.api_keys.activity(owner, key_id)
    assert empty.last_used is None and empty.failures == ()
    assert [d.tokens for d in empty.tokens_per_day] == [0] * 14

    for _ in range(3):
        assert (await _token(http, signing)).status_code == 200
    forged = await http.post(
        "/oauth2/token", data=signing.form(scope="system/*.rs", key=private_key("ES384", 6))
    )
    assert forged.status_code == 401
    # a refused code or refresh token (1upHealth flow) is audited so; other events are not
    # failures
    services.audit.enqueue("grant.failure", client_id=key_id, source="203.0.113.9", detail="reuse")
    services.audit.enqueue("fhir.read", client_id=key_id, source="203.0.113.9")
    at = datetime.now(UTC)
    async with services.engine.begin() as conn:
        await conn.execute(
            insert(AuditEventRow),
            [
                {"occurred_at": at - timedelta(days=days), "event": "token.issued",
                 "client_id": key_id, "detail": ""}
                for days in (3, 20)
            ],
        )  # fmt: skip
    await services.audit.flush()

    activity = await services.api_keys.activity(member, key_id)  # any member may look
    days = [d.day for d in activity.tokens_per_day]
    today = datetime.now(UTC).date()
    assert days == [today - timedelta(days=13 - i) for i in range(14)]
    counts = [d.tokens for d in activity.tokens_per_day]
    assert counts[-1] == 3 and counts[-4] == 1 and sum(counts) == 4
    assert activity.last_used is not None
    assert abs((datetime.now(UTC) - activity.last_used).total_seconds()) < 60
    assert [f.event for f in activity.failures] == ["grant.failure", "client_auth.failure"]
    assert activity.failures[0].detail == "reuse"
    assert activity.failures[0].source == "203.0.113.9"
    assert activity.failures[1].detail == "signature" and activity.failures[1].source
    for i in range(10):
        services.audit.enqueue("client_auth.failure", client_id=key_id, detail=f"n{i}")
    await services.audit.flush()
    latest = (await services.api_keys.activity(owner, key_id)).failures
    assert [f.detail for f in latest] == [f"n{i}" for i in reversed(range(10))]
    listed = await services.api_keys.list_keys(owner, org.dev.id)
    assert listed[0].last_used == activity.last_used


# -- user-level keys --------------------------------------------------------------------------


async def test_user_level_keys_belong_to_their_owner_alone(
    running: Running, acme: tuple[Org, str]
) -> None:
    services, http = running.services, running.http
    org, owner = acme
    admin = await person(services, "a@acme.example", org, OrganizationRole.ADMIN)
    view = await services.api_keys.create_user_key(admin, "  CI robot ")
    assert (view.name, view.user_level, view.auth_method, view.scope) == (
        "CI robot", True, "private_key_jwt", "platform",
    )  # fmt: skip
    assert view.keys == () and view.jwks_url is None  # "JWKS with 0 key(s)"
    assert (view.environment_id, view.organization_id) == (org.dev.id, org.id)
    stored = await services.clients.get(view.client_id)
    assert stored is not None and stored.owner_user_id == admin

    assert await services.api_keys.list_keys(admin, org.dev.id) == []
    assert [k.client_id for k in await services.api_keys.list_user_keys(admin)] == [view.client_id]
    assert await services.api_keys.list_user_keys(owner) == []
    for operation in (
        services.api_keys.get(owner, view.client_id),
        services.api_keys.add_public_key(owner, view.client_id, json.dumps(public_jwk())),
        services.api_keys.revoke(owner, view.client_id),
        services.api_keys.delete(owner, view.client_id),
    ):
        with pytest.raises(NotFound):  # even the organization's owner
            await operation

    await services.api_keys.add_public_key(admin, view.client_id, json.dumps(public_jwk("ci")))
    signing = SigningClient(view.client_id, private_key("ES384", 3), "ci", "ES384")
    granted = await http.post("/oauth2/token", data=signing.form(scope="platform"))
    assert granted.status_code == 200 and granted.json()["scope"] == "platform"
    fhir = await http.post("/oauth2/token", data=signing.form(scope="system/*.rs"))
    assert fhir.status_code == 400  # a user-level key gets the platform scope only
    revoked = await services.api_keys.revoke(admin, view.client_id)
    assert revoked.status == "revoked"
    assert (
        await http.post("/oauth2/token", data=signing.form(scope="platform"))
    ).status_code == 401
    await services.api_keys.delete(admin, view.client_id)
    assert await services.api_keys.list_user_keys(admin) == []
    events = await _events(services, view.client_id)
    assert [e[0] for e in events] == [
        "api_key.created",
        "api_key.key_added",
        "api_key.revoked",
        "api_key.deleted",
    ]
    assert {e[1] for e in events} == {"a@acme.example"}


async def test_jwks_url_tests_are_rate_limited_per_person(
    running: Running, acme: tuple[Org, str]
) -> None:
    """Each test makes the server fetch a URL someone chose: a person gets a few a minute."""
    services = running.services
    org, owner = acme
    key_id = await _jwt_key(services, owner, org)
    quota = CallQuota(2, 60, None, "test:")
    pin_window(quota)  # counted per fixed minute: no boundary mid-test
    limited = _service(services, test_quota=quota)
    async with JWKSServer() as jwks_server:
        jwks_server.replies["/jwks.json"] = jwks_reply(public_jwk("a"))
        url = jwks_server.url("/jwks.json")
        for _ in range(2):
            assert (await limited.test_jwks_url(owner, key_id, url)).kids == ("a",)
        with pytest.raises(KeyChangeError, match="too many JWKS URL tests"):
            await limited.test_jwks_url(owner, key_id, url)
        assert jwks_server.hits["/jwks.json"] == 2  # the refused test fetched nothing


def _service(services: Services, **changed: Any) -> ApiKeys:
    """The service over the server's parts, with ``changed`` ones of its own."""
    parts: dict[str, Any] = {
        "settings": services.settings,
        "engine": services.engine,
        "clients": services.clients,
        "directory": services.directory,
        "audit": services.audit,
        "hasher": services.hasher,
    }
    return ApiKeys(**{**parts, **changed})

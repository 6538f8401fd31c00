"""The Platform API on every backend: a user-level key's token, the Redox envelope and field
names, create/list/get/patch/delete, the roles, and the audit rows each change writes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from fhirgate.dashboard.api_keys import PRIVATE_JWK_MEMBERS
from fhirgate.domain.organizations import EnvironmentRole, OrganizationRole
from fhirgate.storage.models import AuditEventRow
from tests.platform.support import (
    Caller,
    apikeys_path,
    assert_error,
    caller,
    organization,
    person,
    public_jwk,
    token,
    user_key,
)
from tests.support import Running, SigningClient, private_key

META = {"version": "1.0.0"}
APIKEY_FIELDS = {
    "id", "name", "jwksURL", "jwkSet", "environment",
    "authMethod", "status", "createdAt", "updatedAt", "lastUsedAt",
}  # fmt: skip


def _keys_anywhere(value: Any) -> set[str]:
    """Every member name of every JSON object in ``value``."""
    if isinstance(value, dict):
        return set(value).union(*(_keys_anywhere(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys_anywhere(v) for v in value))
    return set()


async def test_a_user_key_lists_creates_gets_patches_and_deletes(server: Running) -> None:
    services, http = server.services, server.http
    org = await organization(services, "acme")
    owner = await person(services, "owner@acme.example", org, OrganizationRole.OWNER)
    me = await caller(services, http, owner)

    listed = await me.get(apikeys_path(org.dev))
    assert listed.status_code == 200, listed.text
    # the user-level key lives in this environment, yet is never listed among its keys
    assert listed.json() == {"meta": META, "payload": {"apikeys": []}}

    jwk = public_jwk("k1")
    created = await me.post(
        apikeys_path(org.dev),
        {
            "name": "EHR bridge",
            "jwksURL": "https://keys.example.org/jwks.json",
            "jwkSet": {"keys": [jwk]},
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"meta", "payload"} and body["meta"] == META
    assert set(body["payload"]) == {"apikey"}
    apikey = body["payload"]["apikey"]
    assert set(apikey) == APIKEY_FIELDS
    assert apikey["name"] == "EHR bridge"
    assert apikey["jwksURL"] == "https://keys.example.org/jwks.json"
    assert apikey["jwkSet"] == {"keys": [jwk]}
    assert apikey["environment"] == {"id": org.dev.id, "environmentFlag": "Development"}
    assert (apikey["authMethod"], apikey["status"], apikey["lastUsedAt"]) == (
        "private_key_jwt", "active", None,
    )  # fmt: skip
    key_id = apikey["id"]
    stored = await services.clients.get(key_id)
    assert stored is not None and stored.owner_user_id is None
    assert stored.environment.id == org.dev.id and stored.scope == "system/*.rs"

    # while the JWKS URL (unreachable here) is registered, it is used and fails closed;
    # without it, the registered key is real: it authenticates at the token endpoint
    signing = SigningClient(key_id, private_key("ES384", 3), "k1", "ES384")
    refused = await http.post("/oauth2/token", data=signing.form(scope="system/*.rs"))
    assert refused.status_code == 401, refused.text
    no_url = await me.patch(f"/platform/v1/apikeys/{key_id}", {"jwksURL": None})
    assert no_url.status_code == 200, no_url.text
    apikey = no_url.json()["payload"]["apikey"]
    assert apikey["jwksURL"] is None and apikey["jwkSet"] == {"keys": [jwk]}
    await token(http, signing, scope="system/*.rs")
    await services.audit.flush()

    listed = await me.get(apikeys_path(org.dev))
    assert [k["id"] for k in listed.json()["payload"]["apikeys"]] == [key_id]
    got = await me.get(f"/platform/v1/apikeys/{key_id}")
    assert got.status_code == 200, got.text
    assert got.json()["meta"] == META
    shown = got.json()["payload"]["apikey"]
    assert {k: v for k, v in shown.items() if k != "lastUsedAt"} == {
        k: v for k, v in apikey.items() if k != "lastUsedAt"
    }
    assert shown["lastUsedAt"] is not None

    new_jwk = public_jwk("k2", slot=4)
    patched = await me.patch(
        f"/platform/v1/apikeys/{key_id}",
        {"name": "EHR bridge v2", "jwkSet": {"keys": [new_jwk]}},
    )
    assert patched.status_code == 200, patched.text
    after = patched.json()["payload"]["apikey"]
    assert (after["name"], after["jwksURL"], after["jwkSet"]) == (
        "EHR bridge v2", None, {"keys": [new_jwk]},
    )  # fmt: skip
    assert after["updatedAt"] > after["createdAt"]
    refused = await http.post("/oauth2/token", data=signing.form(scope="system/*.rs"))
    assert refused.status_code == 401, refused.text  # k1 is gone, at once
    signing = SigningClient(key_id, private_key("ES384", 4), "k2", "ES384")
    await token(http, signing, scope="system/*.rs")

    only_name = await me.patch(f"/platform/v1/apikeys/{key_id}", {"name": "renamed"})
    assert only_name.json()["payload"]["apikey"]["jwkSet"] == {"keys": [new_jwk]}

    deleted = await me.delete(f"/platform/v1/apikeys/{key_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {
        "meta": META, "payload": {"message": f"API key {key_id} deleted"},
    }  # fmt: skip
    assert await services.clients.get(key_id) is None
    assert_error(await me.get(f"/platform/v1/apikeys/{key_id}"), 404, "not_found")
    assert_error(await me.delete(f"/platform/v1/apikeys/{key_id}"), 404, "not_found")

    rows = await _audit_rows(server, key_id)
    assert [r["event"] for r in rows] == [
        "api_key.created",
        "api_key.jwks_url_set",
        "api_key.renamed",
        "api_key.keys_replaced",
        "api_key.renamed",
        "api_key.deleted",
    ]
    assert {(r["actor"], r["organization_id"]) for r in rows} == {("owner@acme.example", org.id)}
    assert all(new_jwk["x"] not in r["detail"] and jwk["x"] not in r["detail"] for r in rows)
    assert rows[1]["detail"] == "cleared" and rows[3]["detail"] == "kids=k2"


async def _audit_rows(server: Running, client_id: str) -> list[dict[str, Any]]:
    event = AuditEventRow
    stmt = (
        select(event.event, event.actor, event.organization_id, event.detail)
        .where(event.client_id == client_id, event.event.like("api_key.%"))
        .order_by(event.id)
    )
    async with server.services.engine.connect() as conn:
        return [dict(row._mapping) for row in await conn.execute(stmt)]


async def test_the_redox_token_path_serves_the_platform_api_too(server: Running) -> None:
    services, http = server.services, server.http
    org = await organization(services, "acme")
    owner = await person(services, "owner@acme.example", org, OrganizationRole.OWNER)
    key = await user_key(services, owner)
    redox_token = await token(http, key, "/v2/auth/token", scope="platform")
    me = Caller(http, owner, redox_token)
    environments = await me.get("/platform/v1/environments")
    assert environments.status_code == 200, environments.text
    flags = [
        (e["id"], e["environmentFlag"]) for e in environments.json()["payload"]["environments"]
    ]
    assert flags == [
        (org.dev.id, "Development"),
        (org.environments["staging"].id, "Staging"),
        (org.prod.id, "Production"),
    ]


async def test_roles_decide_who_reads_and_who_changes(server: Running) -> None:
    services, http = server.services, server.http
    org = await organization(services, "acme")
    other = await organization(services, "globex")
    engineer_roles = {"development": EnvironmentRole.ENGINEER, "production": EnvironmentRole.VIEWER}
    ids = {
        "owner": await person(services, "owner@acme.example", org, OrganizationRole.OWNER),
        "admin": await person(services, "admin@acme.example", org, OrganizationRole.ADMIN),
        "engineer": await person(services, "eng@acme.example", org, **engineer_roles),
        "support": await person(
            services, "support@acme.example", org, development=EnvironmentRole.SUPPORT
        ),
        "viewer": await person(
            services, "viewer@acme.example", org, development=EnvironmentRole.VIEWER
        ),
        "member": await person(services, "member@acme.example", org),
        "outsider": await person(services, "boss@globex.example", other, OrganizationRole.OWNER),
    }
    who = {name: await caller(services, http, user_id) for name, user_id in ids.items()}

    async def create(name: str, env_path: str, status: int = 201) -> str:
        response = await who[name].post(env_path, {"name": f"by {name}"})
        if status != 201:
            assert_error(response, status)
            return ""
        assert response.status_code == 201, response.text
        return str(response.json()["payload"]["apikey"]["id"])

    dev, prod = apikeys_path(org.dev), apikeys_path(org.prod)
    prod_key = await create("owner", prod)
    dev_key = await create("owner", dev)

    # an engineer of development changes keys there, and only reads production's
    assert await create("engineer", dev)
    await create("engineer", prod, 403)
    assert_error(
        await who["engineer"].patch(f"/platform/v1/apikeys/{prod_key}", {"name": "x"}),
        403,
        "forbidden",
    )
    assert_error(await who["engineer"].delete(f"/platform/v1/apikeys/{prod_key}"), 403, "forbidden")
    assert (await who["engineer"].get(prod)).status_code == 200
    assert (await who["engineer"].get(f"/platform/v1/apikeys/{prod_key}")).status_code == 200
    engineer_patch = await who["engineer"].patch(f"/platform/v1/apikeys/{dev_key}", {"name": "eng"})
    assert engineer_patch.status_code == 200, engineer_patch.text

    # support, viewers and members without an environment role read, and change nothing
    for name in ("support", "viewer", "member"):
        listed = await who[name].get(dev)
        assert listed.status_code == 200, listed.text
        assert dev_key in {k["id"] for k in listed.json()["payload"]["apikeys"]}
        assert (await who[name].get(f"/platform/v1/apikeys/{dev_key}")).status_code == 200
        await create(name, dev, 403)
        patch = await who[name].patch(f"/platform/v1/apikeys/{dev_key}", {"name": name})
        assert_error(patch, 403, "forbidden")
        assert_error(await who[name].delete(f"/platform/v1/apikeys/{dev_key}"), 403, "forbidden")

    # owners and admins change keys in every environment
    assert await create("admin", prod)
    admin_patch = await who["admin"].patch(f"/platform/v1/apikeys/{prod_key}", {"name": "adm"})
    assert admin_patch.status_code == 200, admin_patch.text
    assert await create("owner", apikeys_path(org.environments["staging"]))

    # another organization's environments and keys do not exist for an outsider
    unknown = assert_error(await who["outsider"].get("/platform/v1/apikeys/no-such-key"), 404)
    foreign = assert_error(await who["outsider"].get(f"/platform/v1/apikeys/{prod_key}"), 404)
    assert foreign == unknown
    no_env = assert_error(await who["outsider"].get(apikeys_path(org.prod)), 404, "not_found")
    missing_env = await who["outsider"].get("/platform/v1/environments/nope/apikeys")
    assert assert_error(missing_env, 404) == no_env
    await create("outsider", dev, 404)
    assert_error(
        await who["outsider"].patch(f"/platform/v1/apikeys/{prod_key}", {"name": "x"}), 404
    )
    assert_error(await who["outsider"].delete(f"/platform/v1/apikeys/{dev_key}"), 404)
    # nor does anyone's user-level key, at the Platform API
    own_key = (await services.api_keys.list_user_keys(ids["owner"]))[0].client_id
    assert_error(await who["owner"].get(f"/platform/v1/apikeys/{own_key}"), 404)

    after = await who["owner"].get(f"/platform/v1/apikeys/{prod_key}")
    assert after.json()["payload"]["apikey"]["name"] == "adm"  # refused attempts changed nothing
    assert await services.clients.get(dev_key) is not None


async def test_no_response_carries_a_secret_a_hash_or_a_private_member(server: Running) -> None:
    services, http = server.services, server.http
    org = await organization(services, "acme")
    owner = await person(services, "owner@acme.example", org, OrganizationRole.OWNER)
    me = await caller(services, http, owner)
    secret_key = await services.api_keys.create(owner, org.dev.id, "legacy", "client_secret_basic")
    assert secret_key.secret is not None
    stored = await services.clients.get(secret_key.key.client_id)
    assert stored is not None and stored.secret_hash is not None

    responses = [
        await me.get(apikeys_path(org.dev)),
        await me.post(apikeys_path(org.dev), {"name": "jwt", "jwkSet": {"keys": [public_jwk()]}}),
        await me.get(f"/platform/v1/apikeys/{secret_key.key.client_id}"),
        await me.patch(f"/platform/v1/apikeys/{secret_key.key.client_id}", {"name": "renamed"}),
        await me.patch(
            f"/platform/v1/apikeys/{secret_key.key.client_id}", {"jwkSet": {"keys": []}}
        ),
        await me.post(
            apikeys_path(org.dev),
            {"name": "bad", "jwkSet": {"keys": [{**public_jwk(), "d": "AAAA"}]}},
        ),
        await me.get("/platform/v1/environments"),
    ]
    assert [r.status_code for r in responses] == [200, 201, 200, 200, 422, 422, 200]
    for response in responses:
        names = {name.lower() for name in _keys_anywhere(response.json())}
        assert not any("secret" in name or "hash" in name for name in names), response.text
        assert not names & PRIVATE_JWK_MEMBERS, response.text
        assert secret_key.secret not in response.text
        assert stored.secret_hash not in response.text

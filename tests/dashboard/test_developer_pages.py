"""The Developer page and a key's Settings page through HTTP: what each role sees and may do,
secrets shown once, keys pasted and removed, revocation, Postman downloads, escaping."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fhirgate.domain.organizations import EnvironmentRole, OrganizationRole
from fhirgate.oauth.jose import jwk_from_public_key
from tests.dashboard.support import Browser, browser_for, person
from tests.support import Running, private_key

DEV = "/dashboard/orgs/default/development"


async def _create(
    browser: Browser, name: str, method: str = "private_key_jwt", env: str = DEV
) -> str:
    created = await browser.post(f"{env}/api-keys", {"name": name, "auth_method": method})
    assert created.status_code == 303, created.text
    return str(created.headers["location"]).rsplit("/", 1)[1]


def _public_jwk(alg: str = "RS384", slot: int = 0, kid: str = "k1") -> str:
    return json.dumps(jwk_from_public_key(private_key(alg, slot).public_key(), kid, alg))


async def test_the_api_keys_tab_lists_keys_with_their_details(owner: Browser) -> None:
    client_id = await _create(owner, "Billing integration")
    page = await owner.http.get(f"{DEV}/developer")
    assert page.status_code == 200
    assert "Billing integration" in page.text and client_id in page.text
    assert "OAuth API key (signed JWT)" in page.text
    assert "never" in page.text  # last used
    assert 'aria-current="page">Development' in page.text
    staging = await owner.http.get("/dashboard/orgs/default/staging/developer")
    assert staging.status_code == 200 and client_id not in staging.text


async def test_a_secret_is_shown_once(owner: Browser, running: Running) -> None:
    created = await owner.post(
        f"{DEV}/api-keys", {"name": "Pattern app", "auth_method": "client_secret_basic"}
    )
    assert created.status_code == 200
    assert created.headers["cache-control"] == "no-store"
    secret = re.search(r'<p class="secret" id="secret-value">([^<]+)</p>', created.text)
    assert secret is not None
    client_id = re.search(r'<code id="client-id">([^<]+)</code>', created.text).group(1)  # type: ignore[union-attr]
    again = await owner.http.get(f"/dashboard/keys/{client_id}")
    assert secret.group(1) not in again.text
    stored = await running.services.clients.get(client_id)
    assert stored is not None and stored.secret_hash is not None
    assert secret.group(1) not in json.dumps(stored.jwks) and stored.secret_hash != secret.group(1)


async def test_rotating_a_secret_shows_the_new_one_once(owner: Browser) -> None:
    created = await owner.post(
        f"{DEV}/api-keys", {"name": "s", "auth_method": "client_secret_post"}
    )
    client_id = re.search(r'<code id="client-id">([^<]+)</code>', created.text).group(1)  # type: ignore[union-attr]
    first = re.search(r'id="secret-value">([^<]+)<', created.text).group(1)  # type: ignore[union-attr]
    rotated = await owner.post(f"/dashboard/keys/{client_id}/secret")
    second = re.search(r'id="secret-value">([^<]+)<', rotated.text).group(1)  # type: ignore[union-attr]
    assert rotated.status_code == 200 and first != second


def _once(page: httpx.Response, action: str) -> str:
    """The ``once`` field of the page's form posting to ``action``."""
    form = re.search(rf'<form method="post" action="{re.escape(action)}"[^>]*>(.*?)</form>',
                     page.text, re.S)  # fmt: skip
    assert form is not None, page.text
    once = re.search(r'name="once" value="([^"]+)"', form.group(1))
    assert once is not None, form.group(1)
    return once.group(1)


async def test_a_form_sent_again_by_a_reload_neither_creates_nor_replaces_twice(
    owner: Browser, running: Running
) -> None:
    """Without the page's script, reloading the page that showed a secret sends its form again:
    it must not create a second key, nor replace the secret just shown."""
    listing = await owner.http.get(f"{DEV}/developer")
    fields = {"name": "Reloaded", "auth_method": "client_secret_post",
              "once": _once(listing, f"{DEV}/api-keys")}  # fmt: skip
    created = await owner.post(f"{DEV}/api-keys", fields)
    assert created.status_code == 200 and 'id="secret-value"' in created.text
    client_id = re.search(r'<code id="client-id">([^<]+)</code>', created.text).group(1)  # type: ignore[union-attr]
    count = len(await running.services.clients.list())
    again = await owner.post(f"{DEV}/api-keys", fields)
    assert again.status_code == 303
    assert again.headers["location"] == f"{DEV}/developer?resent=1"
    assert len(await running.services.clients.list()) == count  # no second key
    landed = await owner.http.get(again.headers["location"])
    assert "already sent" in landed.text and client_id in landed.text

    action = f"/dashboard/keys/{client_id}/secret"
    once = _once(created, action)
    rotated = await owner.post(action, {"once": once})
    secret = re.search(r'id="secret-value">([^<]+)<', rotated.text).group(1)  # type: ignore[union-attr]
    resent = await owner.post(action, {"once": once})
    assert resent.status_code == 303
    assert resent.headers["location"] == f"/dashboard/keys/{client_id}?resent=1"
    stored = await running.services.clients.get(client_id)
    assert stored is not None and stored.secret_hash == running.services.hasher.hash(secret)
    assert "already sent" in (await owner.http.get(resent.headers["location"])).text
    malformed = await owner.post(action, {"once": "not-a-once"})
    assert malformed.status_code == 400


async def test_paste_rename_and_remove_public_keys(owner: Browser, running: Running) -> None:
    client_id = await _create(owner, "Keys")
    added = await owner.post(f"/dashboard/keys/{client_id}/keys", {"key": _public_jwk(kid="first")})
    assert added.status_code == 200 and "Public key added." in added.text
    public = private_key("ES384", 1).public_key()
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    second = await owner.post(f"/dashboard/keys/{client_id}/keys", {"key": pem, "kid": "second"})
    assert second.status_code == 200
    stored = await running.services.clients.get(client_id)
    assert stored is not None and [k["kid"] for k in stored.jwks["keys"]] == ["first", "second"]  # type: ignore[index]
    removed = await owner.post(f"/dashboard/keys/{client_id}/keys/remove", {"kid": "first"})
    assert removed.status_code == 200 and "Key first removed." in removed.text
    renamed = await owner.post(f"/dashboard/keys/{client_id}/rename", {"name": "Renamed key"})
    assert renamed.status_code == 200 and "Renamed key" in renamed.text
    stored = await running.services.clients.get(client_id)
    assert stored is not None and stored.name == "Renamed key"
    assert [k["kid"] for k in stored.jwks["keys"]] == ["second"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("not a key", "key"),
        (json.dumps({"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB", "kid": "x"}), "private"),
    ],
)
async def test_bad_public_keys_are_refused_with_a_message(
    owner: Browser, running: Running, key: str, message: str
) -> None:
    client_id = await _create(owner, "Keys")
    refused = await owner.post(f"/dashboard/keys/{client_id}/keys", {"key": key})
    assert refused.status_code == 400
    assert message in refused.text.lower()
    stored = await running.services.clients.get(client_id)
    assert stored is not None and not (stored.jwks or {}).get("keys")


async def test_scripts_get_json_answers(owner: Browser) -> None:
    client_id = await _create(owner, "Generated")
    token = await owner.csrf(f"/dashboard/keys/{client_id}")
    headers = {"X-CSRF-Token": token, "Accept": "application/json"}
    added = await owner.http.post(
        f"/dashboard/keys/{client_id}/keys",
        data={"key": _public_jwk(kid="gen"), "kid": "gen"},
        headers=headers,
    )
    assert added.status_code == 200 and added.json() == {"kids": ["gen"]}
    refused = await owner.http.post(
        f"/dashboard/keys/{client_id}/jwks-url/test",
        data={"jwks_url": "ftp://example.org/jwks"},
        headers=headers,
    )
    assert refused.status_code == 400 and "https" in refused.json()["error"]
    forged = await owner.http.post(
        f"/dashboard/keys/{client_id}/keys",
        data={"key": _public_jwk(kid="x")},
        headers={"Accept": "application/json"},
    )
    assert forged.status_code == 403


async def test_revoke_and_delete_go_through_a_confirmation(
    owner: Browser, running: Running
) -> None:
    client_id = await _create(owner, "Short-lived")
    confirm = await owner.http.get(f"/dashboard/keys/{client_id}/revoke")
    assert confirm.status_code == 200 and "Revoke this API key?" in confirm.text
    revoked = await owner.post(f"/dashboard/keys/{client_id}/revoke")
    assert revoked.status_code == 200 and "revoked" in revoked.text
    stored = await running.services.clients.get(client_id)
    assert stored is not None and not stored.active
    deleted = await owner.post(f"/dashboard/keys/{client_id}/delete")
    assert deleted.status_code == 303
    assert await running.services.clients.get(client_id) is None
    assert (await owner.http.get(f"/dashboard/keys/{client_id}")).status_code == 404
    assert (await owner.http.get(f"/dashboard/keys/{client_id}/explode")).status_code in {404, 405}


async def test_postman_downloads_carry_no_private_key(owner: Browser) -> None:
    client_id = await _create(owner, "Postman")
    await owner.post(f"/dashboard/keys/{client_id}/keys", {"key": _public_jwk("ES384", kid="ec")})
    collection = await owner.http.get(f"/dashboard/keys/{client_id}/postman/collection.json")
    assert collection.status_code == 200
    assert "attachment" in collection.headers["content-disposition"]
    names = [item["name"] for item in collection.json()["item"]]
    assert names == ["Get access token", "Who am I", "Search patients"]
    environment = await owner.http.get(f"/dashboard/keys/{client_id}/postman/environment.json")
    values = {v["key"]: v["value"] for v in environment.json()["values"]}
    assert values["clientId"] == client_id and values["kid"] == "ec" and values["alg"] == "ES384"
    assert values["privateKey"] == ""
    assert values["tokenUrl"].endswith("/oauth2/token")


async def test_viewers_see_keys_read_only(owner: Browser, running: Running) -> None:
    client_id = await _create(owner, "Shared")
    await person(
        running.services,
        "viewer@example.org",
        OrganizationRole.MEMBER,
        env_roles={"development": EnvironmentRole.VIEWER},
    )
    viewer = browser_for(running.app)
    async with viewer.http:
        await viewer.sign_in("viewer@example.org")
        tab = await viewer.http.get(f"{DEV}/developer")
        assert tab.status_code == 200 and "Shared" in tab.text
        assert "Create API key" not in tab.text and "not change them" in tab.text
        settings = await viewer.http.get(f"/dashboard/keys/{client_id}")
        assert settings.status_code == 200
        assert "Generate key pair" not in settings.text and "Revoke API key" not in settings.text
        for path, data in (
            (f"{DEV}/api-keys", {"name": "mine"}),
            (f"/dashboard/keys/{client_id}/rename", {"name": "hijacked"}),
            (f"/dashboard/keys/{client_id}/keys", {"key": _public_jwk()}),
            (f"/dashboard/keys/{client_id}/revoke", {}),
            (f"/dashboard/keys/{client_id}/delete", {}),
        ):
            refused = await viewer.post(path, data)
            assert refused.status_code == 403, path
    stored = await running.services.clients.get(client_id)
    assert stored is not None and stored.name == "Shared" and stored.active
    assert len(await running.services.clients.list()) == 1


async def test_an_engineer_changes_only_their_environment(owner: Browser, running: Running) -> None:
    production_key = await _create(owner, "Prod", env="/dashboard/orgs/default/production")
    await person(
        running.services,
        "eng@example.org",
        OrganizationRole.MEMBER,
        env_roles={"development": EnvironmentRole.ENGINEER},
    )
    engineer = browser_for(running.app)
    async with engineer.http:
        await engineer.sign_in("eng@example.org")
        await _create(engineer, "Dev key")
        refused = await engineer.post(
            "/dashboard/orgs/default/production/api-keys", {"name": "Prod 2"}
        )
        assert refused.status_code == 403
        rename = await engineer.post(f"/dashboard/keys/{production_key}/rename", {"name": "x"})
        assert rename.status_code == 403


async def test_another_organizations_keys_do_not_exist_for_you(
    owner: Browser, running: Running
) -> None:
    other = await running.services.organizations.create("other", "Other")
    await person(running.services, "them@example.org", organization_id=other)
    them = browser_for(running.app)
    async with them.http:
        await them.sign_in("them@example.org")
        theirs = await _create(them, "Theirs", env="/dashboard/orgs/other/development")
    for path in (
        f"/dashboard/keys/{theirs}",
        f"/dashboard/keys/{theirs}/postman/environment.json",
        "/dashboard/orgs/other/development/developer",
    ):
        assert (await owner.http.get(path)).status_code == 404, path
    assert (await owner.post(f"/dashboard/keys/{theirs}/revoke")).status_code == 404
    stored = await running.services.clients.get(theirs)
    assert stored is not None and stored.active


async def test_names_are_shown_as_text(owner: Browser) -> None:
    client_id = await _create(owner, "<script>alert(1)</script>")
    for path in (f"{DEV}/developer", f"/dashboard/keys/{client_id}", f"{DEV}/developer/devtools"):
        page = await owner.http.get(path)
        assert "<script>alert(1)</script>" not in page.text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, path


async def test_bad_names_and_methods_are_refused(owner: Browser, running: Running) -> None:
    for data in ({"name": "   "}, {"name": "x" * 101}, {"name": "ok", "auth_method": "magic"}):
        refused = await owner.post(f"{DEV}/api-keys", data)
        assert refused.status_code == 400, data
    assert await running.services.clients.list() == []


async def test_user_level_keys_page(owner: Browser, running: Running) -> None:
    form = await owner.http.get("/dashboard/account/api-keys")
    fields = {"name": "My platform key", "once": _once(form, "/dashboard/account/api-keys")}
    created = await owner.post("/dashboard/account/api-keys", fields)
    assert created.status_code == 303
    client_id = created.headers["location"].rsplit("/", 1)[1]
    twice = await owner.post("/dashboard/account/api-keys", fields)  # a double click
    assert twice.headers["location"] == "/dashboard/account/api-keys?resent=1"
    listing = await owner.http.get(twice.headers["location"])
    assert "My platform key" in listing.text and "JWKS with 0 key(s)" in listing.text
    assert listing.text.count("My platform key") == 1 and "already sent" in listing.text
    tab = await owner.http.get(f"{DEV}/developer")
    assert client_id not in tab.text  # never among an environment's keys
    stored = await running.services.clients.get(client_id)
    assert stored is not None and stored.scope == "platform"

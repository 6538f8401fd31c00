"""1upHealth's user-management API (``/user-management/v1``): users, codes, credentials, quotas.

Wire shapes as 1upHealth documents them (research/vendors.md §2): ``POST /user`` answers the user
with a first code; ``GET /user`` lists, filters and pages an application's users; ``PUT /user``
renames (and, fhirgate, deactivates); ``POST /user/auth-code`` issues a code for a user;
``POST /user/revoke`` (fhirgate) ends the application's grant for a user. Errors are
``{"error": message}``.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from fhirgate.config import Settings
from fhirgate.oauth.client_auth import SecretHasher
from tests.delegation.support import Application, register_application
from tests.support import Running, pin_window, register_client, register_secret_client, start

UM = "/user-management/v1"
USER = f"{UM}/user"
AUTH_CODE = f"{UM}/user/auth-code"
REVOKE = f"{UM}/user/revoke"
EXISTS = {"error": "this user already exists"}
NO_MATCH = {"error": "Could not find a user matching this query"}
CODE = re.compile(r"[A-Za-z0-9_-]{22,}")  # base64url, at least 128 bits


# --------------------------------------------------------------------------- helpers


async def new_app(running: Running, scope: str = "user/*.* system/*.rs") -> Application:
    return await register_application(running.services, running.http, scope)


async def create(app: Application, app_user_id: str, **extra: str) -> dict[str, Any]:
    """Create a user; its ``POST /user`` answer."""
    response = await app.create_user(app_user_id, **extra)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def list_users(app: Application, **params: str) -> httpx.Response:
    return await app.http.get(USER, params=params, headers=app.credentials)


async def put_user(app: Application, **form: str) -> httpx.Response:
    return await app.http.put(USER, data=form, headers=app.credentials)


async def exchange(app: Application, code: str) -> dict[str, Any]:
    """Exchange a code at the token endpoint; the token response."""
    response = await app.exchange(code)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def whoami(http: httpx.AsyncClient, access_token: str) -> httpx.Response:
    return await http.get("/whoami", headers={"Authorization": f"Bearer {access_token}"})


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a compact JWS, unverified (the id_token's signature is tested elsewhere)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def assert_error(response: httpx.Response, status: int) -> None:
    """1upHealth's error shape: ``{"error": <text>}``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body


# --------------------------------------------------------------------------- POST /user


async def test_create_user_answers_the_user_and_a_first_code(running: Running) -> None:
    app = await new_app(running)
    response = await app.create_user("alice")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"success", "code", "oneup_user_id", "app_user_id", "active"}
    assert body["success"] is True
    assert body["app_user_id"] == "alice"
    assert body["active"] is True
    assert type(body["oneup_user_id"]) is int
    assert CODE.fullmatch(body["code"]), body["code"]
    tokens = await exchange(app, body["code"])
    assert tokens["token_type"] == "Bearer"


async def test_an_existing_app_user_id_is_refused(running: Running) -> None:
    app = await new_app(running)
    await create(app, "alice")
    again = await app.create_user("alice")
    assert again.status_code == 400
    assert again.json() == EXISTS
    listed = await list_users(app)
    assert listed.json()["total"] == 1


async def test_the_same_app_user_id_in_another_application_is_another_user(
    running: Running,
) -> None:
    first, second = await new_app(running), await new_app(running)
    mine = await create(first, "alice")
    theirs = await create(second, "alice")
    assert mine["oneup_user_id"] != theirs["oneup_user_id"]
    assert theirs["app_user_id"] == "alice"


async def test_oneup_user_ids_are_distinct_numbers(running: Running) -> None:
    first, second = await new_app(running), await new_app(running)
    numbers = [
        (await create(app, f"user-{i}"))["oneup_user_id"]
        for i in range(4)
        for app in (first, second)
    ]
    assert all(type(n) is int and n > 0 for n in numbers), numbers
    assert len(set(numbers)) == len(numbers)


async def test_create_without_app_user_id_is_refused(running: Running) -> None:
    app = await new_app(running)
    response = await running.http.post(USER, data={"scope": "user/*.*"}, headers=app.credentials)
    assert_error(response, 400)
    assert (await list_users(app)).json()["total"] == 0


@pytest.mark.parametrize(
    "app_user_id",
    ["nul\x00byte", "tab\there", "new\nline", "bell\x07", "del\x7f", "x" * 256, ""],
    ids=["nul", "tab", "newline", "bell", "del", "256-chars", "empty"],
)
async def test_an_app_user_id_with_control_characters_or_too_long_is_refused(
    running: Running, app_user_id: str
) -> None:
    app = await new_app(running)
    response = await running.http.post(
        USER, json={"app_user_id": app_user_id}, headers=app.credentials
    )
    assert_error(response, 400)
    assert "app_user_id" in response.json()["error"]
    assert (await list_users(app)).json()["total"] == 0


async def test_an_app_user_id_of_255_printable_characters_is_accepted(running: Running) -> None:
    app = await new_app(running)
    name = "é" * 100 + "x" * 155
    body = await create(app, name)
    assert body["app_user_id"] == name


@pytest.mark.parametrize(
    ("application_scope", "requested"),
    [("system/*.rs", None), ("user/*.* system/*.rs", "system/*.rs"), ("user/*.rs", "user/*.*")],
    ids=["app-without-user-scopes", "system-scope-asked", "wider-than-allowed"],
)
async def test_a_scope_the_application_may_not_grant_creates_no_user(
    running: Running, application_scope: str, requested: str | None
) -> None:
    app = await new_app(running, application_scope)
    extra = {} if requested is None else {"scope": requested}
    response = await app.create_user("alice", **extra)
    assert_error(response, 400)
    listed = await list_users(app)
    assert listed.status_code == 200, listed.text
    assert listed.json()["total"] == 0 and listed.json()["entry"] == []


async def test_a_json_field_that_is_not_a_scalar_is_refused(running: Running) -> None:
    app = await new_app(running)
    for value in (["alice", "bob"], {"name": "alice"}):
        response = await running.http.post(
            USER, json={"app_user_id": value}, headers=app.credentials
        )
        assert_error(response, 400)
    assert (await list_users(app)).json()["total"] == 0


# --------------------------------------------------------------------------- credentials


def placed(app: Application, where: str, **fields: str) -> dict[str, Any]:
    """httpx keyword arguments sending ``fields`` and the credentials ``where`` asked."""
    if where == "headers":
        return {"data": fields, "headers": app.credentials}
    if where == "form":
        return {"data": {**fields, **app.credentials}}
    if where == "json":
        return {"json": {**fields, **app.credentials}}
    assert where == "query"
    return {"data": fields, "params": app.credentials}


@pytest.mark.parametrize("where", ["headers", "form", "json", "query"])
async def test_application_credentials_are_accepted_from_each_place(
    running: Running, where: str
) -> None:
    app = await new_app(running)
    created = await running.http.post(USER, **placed(app, where, app_user_id="alice"))
    assert created.status_code == 200, created.text
    code = await running.http.post(AUTH_CODE, **placed(app, where, app_user_id="alice"))
    assert code.status_code == 200, code.text
    assert code.json()["oneup_user_id"] == created.json()["oneup_user_id"]


async def test_a_client_secret_basic_client_is_an_application_too(running: Running) -> None:
    client_id, secret = await register_secret_client(
        running.services, "client_secret_basic", scope="user/*.*"
    )
    app = Application(running.http, client_id, secret)
    await create(app, "alice")


async def test_a_wrong_secret_and_an_unknown_client_get_identical_401s(running: Running) -> None:
    app = await new_app(running)
    wrong_secret = await running.http.post(
        USER,
        data={"app_user_id": "alice"},
        headers={"client_id": app.client_id, "client_secret": SecretHasher.generate()},
    )
    unknown_client = await running.http.post(
        USER,
        data={"app_user_id": "alice"},
        headers={"client_id": "no-such-client", "client_secret": app.secret},
    )
    assert_error(wrong_secret, 401)
    assert_error(unknown_client, 401)
    assert wrong_secret.content == unknown_client.content
    assert (await list_users(app)).json()["total"] == 0


@pytest.mark.parametrize("method", ["private_key_jwt", "legacy_api_key"])
async def test_clients_of_other_methods_cannot_use_the_api(running: Running, method: str) -> None:
    if method == "private_key_jwt":
        client_id = (await register_client(running.services, scope="user/*.*")).client_id
        secret = SecretHasher.generate()
    else:
        client_id, secret = await register_secret_client(
            running.services, "legacy_api_key", scope="user/*.*"
        )
    response = await running.http.post(
        USER,
        data={"app_user_id": "alice"},
        headers={"client_id": client_id, "client_secret": secret},
    )
    assert_error(response, 401)


async def test_conflicting_client_ids_in_header_and_query_are_refused(running: Running) -> None:
    app, other = await new_app(running), await new_app(running)
    response = await running.http.post(
        USER,
        data={"app_user_id": "alice"},
        headers=app.credentials,
        params={"client_id": other.client_id},
    )
    assert_error(response, 400)
    for application in (app, other):
        assert (await list_users(application)).json()["total"] == 0


async def test_conflicting_app_user_ids_in_query_and_body_are_refused(running: Running) -> None:
    app = await new_app(running)
    response = await running.http.post(
        USER,
        data={"app_user_id": "alice"},
        params={"app_user_id": "bob"},
        headers=app.credentials,
    )
    assert_error(response, 400)
    assert (await list_users(app)).json()["total"] == 0


async def test_the_same_value_given_twice_is_accepted(running: Running) -> None:
    app = await new_app(running)
    response = await running.http.post(
        USER,
        data={"app_user_id": "alice", **app.credentials},
        headers=app.credentials,
        params=app.credentials,
    )
    assert response.status_code == 200, response.text


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record at DEBUG: the root's, and fhirgate's and SQLAlchemy's even if they stop
    propagating."""
    caplog.set_level(logging.DEBUG)
    added = []
    for name in ["fhirgate", "sqlalchemy.engine", "aiosqlite"]:
        caplog.set_level(logging.DEBUG, logger=name)
        logger = logging.getLogger(name)
        if not logger.propagate and caplog.handler not in logger.handlers:
            logger.addHandler(caplog.handler)
            added.append(logger)
    yield caplog
    for logger in added:
        logger.removeHandler(caplog.handler)


async def test_the_secret_never_reaches_the_server_logs(
    sqlite_settings: Settings, all_logs: pytest.LogCaptureFixture
) -> None:
    running, stack = await start(sqlite_settings)  # started under DEBUG: SQL is logged too
    try:
        app = await new_app(running)
        query = app.credentials
        calls = [
            running.http.post(USER, data={"app_user_id": "alice"}, params=query),
            running.http.post(USER, data={"app_user_id": "alice"}, params=query),  # 400
            running.http.get(USER, params={**query, "limit": "1"}),
            running.http.get(USER, params={**query, "app_user_id": "nobody"}),  # 400
            running.http.get(USER, params={**query, "limit": "0"}),  # 400
            running.http.post(AUTH_CODE, data={"app_user_id": "alice"}, params=query),
            running.http.post(AUTH_CODE, data={"oneup_user_id": "x"}, params=query),  # 400
            running.http.post(REVOKE, data={"app_user_id": "alice"}, params=query),
            # the right secret under a wrong client id, and a wrong secret with the right id
            running.http.post(
                USER, data={"app_user_id": "b"}, params={**query, "client_id": "nobody"}
            ),
            running.http.post(
                USER,
                data={"app_user_id": "b"},
                params={"client_id": app.client_id, "client_secret": app.secret[::-1]},
            ),
        ]
        statuses = [(await call).status_code for call in calls]
        assert statuses == [200, 400, 200, 400, 400, 200, 400, 200, 401, 401]
        code = (await app.auth_code(app_user_id="alice")).json()["code"]
        await exchange(app, code)
        await running.services.audit.flush()
    finally:
        await stack.aclose()
    # httpx's own "HTTP Request: … ?client_secret=…" lines are this test's client, not the server
    server_records = [r for r in all_logs.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any(r.name.startswith("fhirgate") for r in server_records)  # capture works
    assert any(r.name.startswith("sqlalchemy") for r in server_records)
    for secret in (app.secret, app.secret[::-1]):
        for record in server_records:
            texts = [record.getMessage(), repr(record.args), repr(vars(record))]
            assert not any(secret in text for text in texts), record.name


# --------------------------------------------------------------------------- GET /user


async def test_listing_shows_only_this_applications_users(running: Running) -> None:
    app, other = await new_app(running), await new_app(running)
    alice, bob = await create(app, "alice"), await create(app, "bob")
    await create(other, "carol")
    await create(other, "alice")
    listed = await list_users(app)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["success"] is True
    assert body["total"] == 2
    assert body["entry"] == [
        {"oneup_user_id": alice["oneup_user_id"], "app_user_id": "alice", "active": True},
        {"oneup_user_id": bob["oneup_user_id"], "app_user_id": "bob", "active": True},
    ]
    assert "next" not in body


async def test_filters_select_a_user_by_either_id(running: Running) -> None:
    app = await new_app(running)
    await create(app, "alice")
    bob = await create(app, "bob")
    expected = [{"oneup_user_id": bob["oneup_user_id"], "app_user_id": "bob", "active": True}]
    by_name = await list_users(app, app_user_id="bob")
    by_number = await list_users(app, oneup_user_id=str(bob["oneup_user_id"]))
    by_both = await list_users(app, app_user_id="bob", oneup_user_id=str(bob["oneup_user_id"]))
    for response in (by_name, by_number, by_both):
        assert response.status_code == 200, response.text
        assert response.json()["entry"] == expected
        assert response.json()["total"] == 1


@pytest.mark.parametrize("which", ["unknown-name", "unknown-number", "foreign-number", "mixed"])
async def test_a_filter_without_a_match_is_400(running: Running, which: str) -> None:
    app, other = await new_app(running), await new_app(running)
    await create(app, "alice")
    carol = await create(other, "carol")
    params = {
        "unknown-name": {"app_user_id": "nobody"},
        "unknown-number": {"oneup_user_id": str(carol["oneup_user_id"] + 1000)},
        "foreign-number": {"oneup_user_id": str(carol["oneup_user_id"])},
        "mixed": {"app_user_id": "alice", "oneup_user_id": str(carol["oneup_user_id"])},
    }[which]
    response = await list_users(app, **params)
    assert response.status_code == 400
    assert response.json() == NO_MATCH


async def test_pages_walk_every_user_through_next_without_credentials(running: Running) -> None:
    app, other = await new_app(running), await new_app(running)
    names = [f"user-{i:02d}" for i in range(7)]
    for name in names:
        await create(app, name)
    await create(other, "someone-else")
    seen: list[str] = []
    response = await running.http.get(USER, params={**app.credentials, "limit": "3"})
    pages = 0
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        assert body["total"] == 7
        assert body["limit"] == 3 and body["offset"] == 3 * (pages - 1)
        seen += [entry["app_user_id"] for entry in body["entry"]]
        if "next" not in body:
            break
        following = body["next"]
        assert "client_id" not in following and "client_secret" not in following
        assert app.secret not in following and app.client_id not in following
        response = await running.http.get(following, headers=app.credentials)
    assert pages == 3
    assert seen == names


async def test_offset_past_the_end_is_an_empty_page(running: Running) -> None:
    app = await new_app(running)
    await create(app, "alice")
    response = await list_users(app, offset="5")
    assert response.status_code == 200, response.text
    assert response.json()["entry"] == [] and response.json()["total"] == 1


@pytest.mark.parametrize("limit", ["0", "1001", "abc", "-1", "1.5"])
async def test_an_invalid_limit_is_refused(running: Running, limit: str) -> None:
    app = await new_app(running)
    await create(app, "alice")
    assert_error(await list_users(app, limit=limit), 400)


async def test_limits_1_and_1000_are_valid(running: Running) -> None:
    app = await new_app(running)
    await create(app, "alice")
    for limit in ("1", "1000"):
        response = await list_users(app, limit=limit)
        assert response.status_code == 200, response.text


async def test_a_large_unknown_oneup_user_id_matches_no_user(server: Running) -> None:
    """Any number the API accepts (up to 18 digits) is looked up like any other, on every
    backend: past 32 bits it is still just a user that does not exist."""
    app = await new_app(server)
    await create(app, "alice")
    for number in ("2147483648", "9" * 18):
        answers = {
            "GET": await list_users(app, oneup_user_id=number),
            "PUT": await put_user(app, oneup_user_id=number, app_user_id="renamed"),
            "auth-code": await app.auth_code(oneup_user_id=number),
            "revoke": await server.http.post(
                REVOKE, data={"oneup_user_id": number}, headers=app.credentials
            ),
        }
        for call, response in answers.items():
            assert (response.status_code, response.json()) == (400, NO_MATCH), (call, number)


# --------------------------------------------------------------------------- PUT /user


async def test_renaming_keeps_the_oneup_user_id(running: Running) -> None:
    app = await new_app(running)
    alice = await create(app, "alice")
    number = alice["oneup_user_id"]
    renamed = await put_user(app, oneup_user_id=str(number), app_user_id="alicia")
    assert renamed.status_code == 200, renamed.text
    assert renamed.json() == {"oneUpUserId": number, "success": True}
    found = await list_users(app, app_user_id="alicia")
    assert found.json()["entry"] == [
        {"oneup_user_id": number, "app_user_id": "alicia", "active": True}
    ]
    assert (await list_users(app, app_user_id="alice")).json() == NO_MATCH
    code = await app.auth_code(app_user_id="alicia")
    assert code.status_code == 200 and code.json()["oneup_user_id"] == number


async def test_renaming_to_an_existing_app_user_id_is_refused(running: Running) -> None:
    app = await new_app(running)
    alice = await create(app, "alice")
    await create(app, "bob")
    response = await put_user(app, oneup_user_id=str(alice["oneup_user_id"]), app_user_id="bob")
    assert response.status_code == 400
    assert response.json() == EXISTS
    still = await list_users(app, oneup_user_id=str(alice["oneup_user_id"]))
    assert still.json()["entry"][0]["app_user_id"] == "alice"


@pytest.mark.parametrize("which", ["unknown", "foreign"])
async def test_updating_an_unknown_or_foreign_user_is_refused(running: Running, which: str) -> None:
    app, other = await new_app(running), await new_app(running)
    await create(app, "alice")
    carol = await create(other, "carol")
    number = carol["oneup_user_id"] + (1000 if which == "unknown" else 0)
    for change in ({"app_user_id": "stolen"}, {"active": "false"}):
        response = await put_user(app, oneup_user_id=str(number), **change)
        assert response.status_code == 400
        assert response.json() == NO_MATCH
    unchanged = await list_users(other)
    assert unchanged.json()["entry"] == [
        {"oneup_user_id": carol["oneup_user_id"], "app_user_id": "carol", "active": True}
    ]


async def test_deactivation_stops_codes_and_reactivation_restores_them(running: Running) -> None:
    app = await new_app(running)
    alice = await create(app, "alice")
    number = str(alice["oneup_user_id"])
    off = await put_user(app, oneup_user_id=number, active="false")
    assert off.status_code == 200, off.text
    assert off.json() == {"oneUpUserId": alice["oneup_user_id"], "success": True}
    assert (await list_users(app, oneup_user_id=number)).json()["entry"][0]["active"] is False
    assert_error(await app.auth_code(oneup_user_id=number), 400)
    assert_error(await app.auth_code(app_user_id="alice"), 400)
    on = await put_user(app, oneup_user_id=number, active="true")
    assert on.status_code == 200, on.text
    assert (await list_users(app, oneup_user_id=number)).json()["entry"][0]["active"] is True
    code = await app.auth_code(oneup_user_id=number)
    assert code.status_code == 200, code.text
    await exchange(app, code.json()["code"])


async def test_deactivation_ends_the_users_tokens_and_codes(running: Running) -> None:
    app = await new_app(running)
    tokens = await app.user_tokens("alice")
    unused = (await app.auth_code(app_user_id="alice")).json()["code"]
    assert (await whoami(running.http, tokens["access_token"])).status_code == 200
    number = str(tokens["oneup_user_id"])
    assert (await put_user(app, oneup_user_id=number, active="false")).status_code == 200
    assert (await whoami(running.http, tokens["access_token"])).status_code == 401
    assert (await app.refresh(tokens["refresh_token"])).status_code == 400
    assert (await app.exchange(unused)).status_code == 400
    # reactivating the user does not bring back what deactivation ended
    assert (await put_user(app, oneup_user_id=number, active="true")).status_code == 200
    assert (await whoami(running.http, tokens["access_token"])).status_code == 401
    assert (await app.exchange(unused)).status_code == 400


async def test_active_must_be_true_or_false(running: Running) -> None:
    app = await new_app(running)
    alice = await create(app, "alice")
    response = await put_user(app, oneup_user_id=str(alice["oneup_user_id"]), active="no")
    assert_error(response, 400)
    assert (await list_users(app)).json()["entry"][0]["active"] is True


# --------------------------------------------------------------------------- auth-code


@pytest.mark.parametrize("by", ["app_user_id", "oneup_user_id", "both"])
async def test_auth_code_names_the_user_by_either_id_or_both(running: Running, by: str) -> None:
    app = await new_app(running)
    await create(app, "alice")
    bob = await create(app, "bob")
    params = {
        "app_user_id": {"app_user_id": "bob"},
        "oneup_user_id": {"oneup_user_id": str(bob["oneup_user_id"])},
        "both": {"app_user_id": "bob", "oneup_user_id": str(bob["oneup_user_id"])},
    }[by]
    response = await app.auth_code(**params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["oneup_user_id"] == bob["oneup_user_id"] and body["app_user_id"] == "bob"
    assert body["active"] is True
    assert CODE.fullmatch(body["code"]) and body["code"] != bob["code"]
    tokens = await exchange(app, body["code"])
    who = await whoami(running.http, tokens["access_token"])
    assert who.json()["oneup_user_id"] == bob["oneup_user_id"]


async def test_auth_code_for_a_mismatched_pair_is_refused(running: Running) -> None:
    app = await new_app(running)
    await create(app, "alice")
    bob = await create(app, "bob")
    response = await app.auth_code(app_user_id="alice", oneup_user_id=str(bob["oneup_user_id"]))
    assert response.status_code == 400
    assert response.json() == NO_MATCH


async def test_auth_code_needs_a_user(running: Running) -> None:
    app = await new_app(running)
    await create(app, "alice")
    assert_error(await app.auth_code(), 400)


async def test_the_default_code_scope_is_user_all(running: Running) -> None:
    app = await new_app(running)
    await create(app, "alice")
    code = await app.auth_code(app_user_id="alice")
    tokens = await exchange(app, code.json()["code"])
    assert tokens["scope"] == "user/*.*"
    assert "id_token" not in tokens


async def test_an_openid_scope_adds_an_id_token(running: Running) -> None:
    app = await new_app(running)
    alice = await create(app, "alice")
    code = await app.auth_code(app_user_id="alice", scope="user/Observation.rs openid")
    assert code.status_code == 200, code.text
    tokens = await exchange(app, code.json()["code"])
    assert tokens["scope"] == "user/Observation.rs openid"
    claims = jwt_claims(tokens["id_token"])
    assert claims["sub"] == str(alice["oneup_user_id"])
    assert claims["aud"] == app.client_id


@pytest.mark.parametrize("by", ["app_user_id", "oneup_user_id"])
async def test_auth_code_for_another_applications_user_is_refused(
    running: Running, by: str
) -> None:
    app, other = await new_app(running), await new_app(running)
    await create(app, "alice")
    carol = await create(other, "carol")
    params = (
        {"app_user_id": "carol"}
        if by == "app_user_id"
        else {"oneup_user_id": str(carol["oneup_user_id"])}
    )
    response = await app.auth_code(**params)
    assert response.status_code == 400
    assert response.json() == NO_MATCH


# --------------------------------------------------------------------------- revoke


async def test_revoke_ends_the_users_tokens_but_keeps_the_user(running: Running) -> None:
    app = await new_app(running)
    tokens = await app.user_tokens("alice")
    bob = await app.user_tokens("bob")
    assert (await whoami(running.http, tokens["access_token"])).status_code == 200
    revoked = await running.http.post(
        REVOKE, data={"app_user_id": "alice"}, headers=app.credentials
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["success"] is True
    assert (await whoami(running.http, tokens["access_token"])).status_code == 401
    assert (await app.refresh(tokens["refresh_token"])).status_code == 400
    assert (await whoami(running.http, bob["access_token"])).status_code == 200  # only alice's
    listed = await list_users(app, app_user_id="alice")
    assert listed.json()["entry"][0]["active"] is True
    code = await app.auth_code(app_user_id="alice")
    assert code.status_code == 200, code.text
    fresh = await exchange(app, code.json()["code"])
    assert (await whoami(running.http, fresh["access_token"])).status_code == 200


async def test_revoking_another_applications_user_is_refused(running: Running) -> None:
    app, other = await new_app(running), await new_app(running)
    carol = await other.user_tokens("carol")
    response = await running.http.post(
        REVOKE, data={"oneup_user_id": str(carol["oneup_user_id"])}, headers=app.credentials
    )
    assert response.status_code == 400
    assert response.json() == NO_MATCH
    assert (await whoami(running.http, carol["access_token"])).status_code == 200


# --------------------------------------------------------------------------- quotas


async def test_failed_authentications_do_not_use_the_applications_quota(
    sqlite_settings: Settings,
) -> None:
    settings = sqlite_settings.model_copy(
        update={"user_management_rate_limit": 3, "auth_failure_limit": 0}
    )
    running, stack = await start(settings)
    pin_window(running.services.user_management_quota, 3600)
    try:
        app = await new_app(running)
        wrong = {"client_id": app.client_id, "client_secret": SecretHasher.generate()}
        for _ in range(5):
            response = await running.http.get(USER, headers=wrong)
            assert_error(response, 401)
        statuses = [(await list_users(app)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
    finally:
        await stack.aclose()


@pytest.fixture
async def limited(backend_settings: Settings) -> AsyncIterator[Running]:
    """The app on each backend, with 3 user-management calls an hour per application."""
    settings = backend_settings.model_copy(update={"user_management_rate_limit": 3})
    running, stack = await start(settings)
    try:
        yield running
    finally:
        await stack.aclose()


async def test_the_fourth_call_in_an_hour_is_refused_for_that_application_only(
    limited: Running,
) -> None:
    pin_window(limited.services.user_management_quota, 3600)
    app, other = await new_app(limited), await new_app(limited)
    statuses = [
        (await app.create_user("alice")).status_code,
        (await list_users(app)).status_code,
        (await app.auth_code(app_user_id="alice")).status_code,
    ]
    refused = await list_users(app)
    assert statuses == [200, 200, 200]
    assert_error(refused, 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 3600
    assert_error(await app.create_user("bob"), 429)
    # another application has its own quota
    assert (await other.create_user("alice")).status_code == 200
    assert (await list_users(other)).status_code == 200
    # refused calls changed nothing
    assert [
        u.app_user_id for u in (await limited.services.delegation.users.list(app.client_id)).users
    ] == ["alice"]


async def test_failed_credentials_are_throttled_like_client_secrets(
    sqlite_settings: Settings,
) -> None:
    running, stack = await start(sqlite_settings.model_copy(update={"auth_failure_limit": 2}))
    pin_window(running.services.authenticator._limiter)
    try:
        app = await new_app(running)
        wrong = {"client_id": app.client_id, "client_secret": SecretHasher.generate()}
        statuses = [
            (await running.http.post(USER, data={"app_user_id": "a"}, headers=wrong)).status_code
            for _ in range(2)
        ]
        blocked = await app.create_user("alice")
        assert statuses == [401, 401]
        assert_error(blocked, 429)
        assert 1 <= int(blocked.headers["retry-after"]) <= 60
        assert (await running.services.delegation.users.list(app.client_id)).total == 0
    finally:
        await stack.aclose()

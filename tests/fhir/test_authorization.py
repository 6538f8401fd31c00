"""Who may do what on the FHIR API: the authorization matrix, written as data.

Every cell is (principal kind, interaction, resource type, owner of the target). What a cell
answers comes from two tables: :data:`PARTITIONS` (what the principal's partition lets it do to
a resource made by each owner) and the SMART permissions its scopes grant (:data:`KINDS`); a
permission the scopes lack is refused before the partition is consulted. Adding a resource
type (:data:`RESOURCE_TYPES` and a factory in ``tests.fhir.support``), an interaction
(:data:`INTERACTIONS`, a request in :func:`perform` and a row per partition) or a principal
kind (:data:`KINDS`, ``World.KINDS``) extends the matrix.

Outcomes:

* ``OK`` — the interaction's success status, with the target's content;
* ``HIDDEN`` — answered exactly like the same interaction on an id that does not exist
  (status, headers, OperationOutcome), the target untouched;
* ``SCOPE`` — 403 with ``WWW-Authenticate: Bearer realm="fhirgate", error="insufficient_scope",
  scope="<context>/<Type>.<letter>"`` and an OperationOutcome, target untouched;
* ``READ_ONLY`` — the guard's 403 for ``x-oneup-user-id: client`` writes, target untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from fhirgate.domain.organizations import EnvironmentKind
from tests.fhir.support import (
    FHIR,
    World,
    assert_outcome,
    bearer,
    create,
    make_resource,
    missing_id,
    observation,
    patient,
    send,
    system_headers,
    token_for_secret_client,
)
from tests.support import BASE, Running, register_secret_client

OK, HIDDEN, SCOPE, READ_ONLY = "ok", "hidden", "scope", "read-only"

#: Who made the target of an interaction (``World`` callers).
OWNERS = ("system", "user_a", "user_b")
RESOURCE_TYPES = ("Patient", "Observation")


@dataclass(frozen=True)
class Interaction:
    permission: str  # the SMART v2 permission letter it needs
    success: int  # its status when allowed
    on_target: bool = True  # False: it makes a new resource (no owner)


INTERACTIONS = {
    "read": Interaction("r", 200),
    "vread": Interaction("r", 200),
    "history": Interaction("r", 200),
    "update": Interaction("u", 200),
    "delete": Interaction("d", 204),
    "create": Interaction("c", 201, on_target=False),
}


@dataclass(frozen=True)
class Kind:
    context: str  # the scope context it is judged by (named in insufficient_scope)
    grants: dict[str, str]  # resource type or "*" -> the permission letters its scopes grant
    partition: str  # a key of PARTITIONS


KINDS = {
    "system": Kind("system", {"*": "cruds"}, "environment"),
    "system_patient_rs": Kind("system", {"Patient": "rs"}, "environment"),
    "other_org": Kind("system", {"*": "cruds"}, "another environment"),
    "user_a": Kind("user", {"*": "cruds"}, "user A"),
    "header_user_a": Kind("user", {"*": "cruds"}, "user A"),
    "user_b": Kind("user", {"*": "cruds"}, "user B"),
    "other_app_user": Kind("user", {"*": "cruds"}, "a user of another application"),
    "read_only_app_user": Kind("user", {"Patient": "rs"}, "a user of another application"),
    "client": Kind("user", {"*": "cruds"}, "every user of the application"),
    "legacy": Kind("system", {"*": "rs"}, "environment"),
}
assert set(KINDS) == set(World.KINDS)

_ALL_OK = {"read": OK, "vread": OK, "history": OK, "update": OK, "delete": OK, "create": OK}

#: What a partition may do to a resource made by each owner (a single outcome: every owner).
#:                                   target made by:  system     user A     user B
PARTITIONS: dict[str, dict[str, str | tuple[str, str, str]]] = {
    # backend services, secret and legacy clients: their whole environment, users' data too
    "environment": _ALL_OK,
    # another organization's backend service: nothing of ours exists for it; a PUT to one of
    # our ids creates its own resource (update-as-create), as for any unknown id
    "another environment": {
        "read": HIDDEN,
        "vread": HIDDEN,
        "history": HIDDEN,
        "update": HIDDEN,
        "delete": HIDDEN,
        "create": OK,
    },
    "user A": {
        "read": (HIDDEN, OK, HIDDEN),
        "vread": (HIDDEN, OK, HIDDEN),
        "history": (HIDDEN, OK, HIDDEN),
        "update": (HIDDEN, OK, HIDDEN),
        "delete": (HIDDEN, OK, HIDDEN),
        "create": OK,
    },
    "user B": {
        "read": (HIDDEN, HIDDEN, OK),
        "vread": (HIDDEN, HIDDEN, OK),
        "history": (HIDDEN, HIDDEN, OK),
        "update": (HIDDEN, HIDDEN, OK),
        "delete": (HIDDEN, HIDDEN, OK),
        "create": OK,
    },
    "a user of another application": {
        "read": HIDDEN,
        "vread": HIDDEN,
        "history": HIDDEN,
        "update": HIDDEN,
        "delete": HIDDEN,
        "create": OK,
    },
    # 1upHealth's x-oneup-user-id: client — every user's data of the application, reads only
    "every user of the application": {
        "read": (HIDDEN, OK, OK),
        "vread": (HIDDEN, OK, OK),
        "history": (HIDDEN, OK, OK),
        "update": READ_ONLY,
        "delete": READ_ONLY,
        "create": READ_ONLY,
    },
}

#: Every cell of one principal kind: (interaction, resource type, owner or None).
CELLS = [
    (interaction, resource_type, owner)
    for interaction, spec in INTERACTIONS.items()
    for resource_type in RESOURCE_TYPES
    for owner in (OWNERS if spec.on_target else (None,))
]


def letters(kind: Kind, resource_type: str) -> str:
    return kind.grants.get(resource_type, "") + kind.grants.get("*", "")


def expected(kind: Kind, interaction: str, resource_type: str, owner: str | None) -> str:
    row = PARTITIONS[kind.partition][interaction]
    outcome = row if isinstance(row, str) else row[OWNERS.index(owner or "system")]
    if outcome == READ_ONLY:  # the guard refuses it before any scope is looked at
        return outcome
    if INTERACTIONS[interaction].permission not in letters(kind, resource_type):
        return SCOPE
    return outcome


# --------------------------------------------------------------------------- one cell


def changed(resource: dict[str, Any], resource_id: str) -> dict[str, Any]:
    """The update every cell sends: the resource with ``language`` set."""
    body = {key: value for key, value in resource.items() if key != "meta"}
    return body | {"id": resource_id, "language": "fr"}


async def perform(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    interaction: str,
    resource_type: str,
    resource_id: str,
    source: dict[str, Any],
) -> httpx.Response:
    """The request of ``interaction`` on ``resource_type/resource_id`` (``source``: the body
    an update or a create starts from)."""
    path = f"{FHIR}/{resource_type}/{resource_id}"
    if interaction == "read":
        return await http.get(path, headers=headers)
    if interaction == "vread":
        return await http.get(f"{path}/_history/1", headers=headers)
    if interaction == "history":
        return await http.get(f"{path}/_history", headers=headers)
    if interaction == "update":
        return await send(http, "PUT", path, headers, changed(source, resource_id))
    if interaction == "delete":
        return await http.delete(path, headers=headers)
    if interaction == "create":
        return await send(http, "POST", f"{FHIR}/{resource_type}", headers, source)
    raise AssertionError(f"no request for {interaction!r}")


async def assert_unchanged(world: World, target: dict[str, Any] | None) -> None:
    """The target is still its first version (seen by the backend service, which sees all)."""
    if target is None:
        return
    path = f"{FHIR}/{target['resourceType']}/{target['id']}"
    current = await world.http.get(path, headers=world.system)
    assert current.status_code == 200, f"target changed: {current.status_code} {current.text}"
    assert current.json() == target, f"target changed: {current.text}"


def _comparable(response: httpx.Response, resource_id: str) -> tuple[Any, ...]:
    """What must match between an answer about ``resource_id`` and one about another id:
    everything but the id, the date, the request id and (of a resource made) its time of
    writing."""
    headers = {
        name: value.replace(resource_id, "<id>")
        for name, value in response.headers.items()
        if name not in ("content-length", "date", "last-modified", "x-request-id")
    }
    body = response.json()
    if response.is_success:
        body["meta"].pop("lastUpdated")
    return response.status_code, headers, repr(body).replace(resource_id, "<id>")


@dataclass
class Cell:
    world: World
    headers: dict[str, str]
    kind: Kind
    interaction: str
    resource_type: str
    target: dict[str, Any] | None
    response: httpx.Response

    async def check(self, outcome: str) -> None:
        checks = {
            OK: self.allowed,
            HIDDEN: self.hidden,
            SCOPE: self.scope,
            READ_ONLY: self.read_only,
        }
        await checks[outcome]()

    async def allowed(self) -> None:
        response, target, http = self.response, self.target, self.world.http
        assert response.status_code == INTERACTIONS[self.interaction].success, response.text
        if self.interaction in ("read", "vread"):
            assert response.json() == target
        elif self.interaction == "history":
            bundle = response.json()
            assert bundle["type"] == "history" and bundle["total"] == 1, bundle
            assert bundle["entry"][0]["resource"] == target
        elif self.interaction == "update":
            assert target is not None
            assert response.json()["meta"]["versionId"] == "2", response.text
            path = f"{FHIR}/{self.resource_type}/{target['id']}"
            now = (await http.get(path, headers=self.world.system)).json()
            assert now["language"] == "fr" and now["meta"]["versionId"] == "2", now
        elif self.interaction == "delete":
            assert target is not None
            path = f"{FHIR}/{self.resource_type}/{target['id']}"
            assert (await http.get(path, headers=self.world.system)).status_code == 410
        elif self.interaction == "create":
            made = response.json()
            assert made["resourceType"] == self.resource_type and made["meta"]["versionId"] == "1"
            if "r" in letters(self.kind, self.resource_type):  # it can read back what it made
                path = f"{FHIR}/{self.resource_type}/{made['id']}"
                assert (await http.get(path, headers=self.headers)).json() == made

    async def hidden(self) -> None:
        """The same interaction on an id nobody has answers the same way."""
        assert self.target is not None
        unknown = missing_id()
        control = await perform(
            self.world.http,
            self.headers,
            self.interaction,
            self.resource_type,
            unknown,
            self.target,
        )
        assert self.response.status_code in (404, 201), self.response.text  # 201: PUT creates
        if self.response.status_code == 404:
            assert_outcome(self.response, 404, "not-found")
        assert _comparable(self.response, self.target["id"]) == _comparable(control, unknown)
        await assert_unchanged(self.world, self.target)

    async def scope(self) -> None:
        assert_outcome(self.response, 403, "forbidden")
        permission = INTERACTIONS[self.interaction].permission
        needed = f"{self.kind.context}/{self.resource_type}.{permission}"
        assert self.response.headers.get("www-authenticate") == (
            f'Bearer realm="fhirgate", error="insufficient_scope", scope="{needed}"'
        )
        await assert_unchanged(self.world, self.target)

    async def read_only(self) -> None:
        assert_outcome(self.response, 403, "forbidden")
        challenge = self.response.headers.get("www-authenticate", "")
        assert challenge.startswith('Bearer realm="fhirgate"'), challenge
        assert 'error="insufficient_scope"' in challenge, challenge
        await assert_unchanged(self.world, self.target)


async def run_cell(
    world: World,
    headers: dict[str, str],
    kind: Kind,
    interaction: str,
    resource_type: str,
    owner: str | None,
) -> str | None:
    """Run one cell on a fresh target; a description of what went wrong, or None."""
    outcome = expected(kind, interaction, resource_type, owner)
    target = None
    source = make_resource(resource_type)
    if owner is not None:
        target = await create(world.http, await world.caller(owner), source)
        source = target
    resource_id = target["id"] if target else missing_id()
    response = await perform(world.http, headers, interaction, resource_type, resource_id, source)
    cell = Cell(world, headers, kind, interaction, resource_type, target, response)
    try:
        await cell.check(outcome)
    except AssertionError as exc:
        return (
            f"{interaction} {resource_type} made by {owner}: expected {outcome}, got "
            f"{response.status_code} {response.text[:160]} "
            f"[{response.headers.get('www-authenticate', '')}] — {exc}"
        )
    return None


async def run_matrix(world: World, headers: dict[str, str], kind: Kind) -> None:
    problems = [
        problem
        for cell in CELLS
        if (problem := await run_cell(world, headers, kind, *cell)) is not None
    ]
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("kind", list(KINDS))
async def test_each_principal_gets_exactly_what_its_partition_and_scopes_allow(
    server: Running, kind: str
) -> None:
    """Every interaction, resource type and owner for one principal kind, on each backend
    (SQLite, PostgreSQL, PostgreSQL + Redis): the partitions are SQL."""
    world = await World.build(server)
    await run_matrix(world, await world.caller(kind), KINDS[kind])


def _grants(scope: str) -> dict[str, str]:
    """The unrestricted permission letters of ``system/`` scopes (v1 names as v2 letters)."""
    v1 = {"read": "rs", "write": "cud", "*": "cruds"}
    grants: dict[str, str] = {}
    for token in scope.split():
        match = re.fullmatch(r"system/(\*|[A-Za-z]+)\.([a-z*]+)", token)
        if match:  # a restricted scope (with ?...) grants nothing unrestricted
            resource_type, permissions = match.groups()
            grants[resource_type] = grants.get(resource_type, "") + v1.get(permissions, permissions)
    return grants


@pytest.mark.parametrize(
    "scope",
    [
        "system/Patient.c",
        "system/Patient.r",
        "system/Patient.u",
        "system/Patient.d",
        "system/Patient.cd system/Observation.r",
        "system/Patient.read",
        "system/Patient.write",
        "system/*.ru",
        "system/*.read system/Observation.cud",
    ],
)
async def test_each_interaction_needs_its_own_permission(running: Running, scope: str) -> None:
    world = await World.build(running)
    kind = Kind("system", _grants(scope), "environment")
    await run_matrix(world, await system_headers(running, scope), kind)


# --------------------------------------------------------------------------- named cases


async def test_another_organization_reading_our_resource_gets_the_missing_answer(
    running: Running,
) -> None:
    world = await World.build(running)
    theirs = await world.caller("other_org")
    ours = await create(running.http, world.system, patient())
    seen = await running.http.get(f"{FHIR}/Patient/{ours['id']}", headers=theirs)
    unknown = missing_id()
    missing = await running.http.get(f"{FHIR}/Patient/{unknown}", headers=theirs)
    assert seen.status_code == missing.status_code == 404
    assert assert_outcome(seen, 404)["code"] == assert_outcome(missing, 404)["code"]
    assert seen.text.replace(ours["id"], "<id>") == missing.text.replace(unknown, "<id>")


async def test_user_b_cannot_read_update_or_delete_user_as_resource(running: Running) -> None:
    world = await World.build(running)
    alices = await create(running.http, world.user_a, patient())
    path = f"{FHIR}/Patient/{alices['id']}"
    unknown = missing_id()
    read = await running.http.get(path, headers=world.user_b)
    missing = await running.http.get(f"{FHIR}/Patient/{unknown}", headers=world.user_b)
    assert read.text.replace(alices["id"], "<id>") == missing.text.replace(unknown, "<id>")
    assert_outcome(read, 404, "not-found")
    update = await send(running.http, "PUT", path, world.user_b, changed(alices, alices["id"]))
    assert_outcome(update, 404, "not-found")  # as for an id nobody has: users never choose ids
    assert_outcome(await running.http.delete(path, headers=world.user_b), 404, "not-found")
    assert (await running.http.get(path, headers=world.user_a)).json() == alices


async def test_client_headers_read_every_users_data_but_never_write(running: Running) -> None:
    world = await World.build(running)
    client = await world.caller("client")
    alices = await create(running.http, world.user_a, observation())
    bobs = await create(running.http, world.user_b, patient())
    for made in (alices, bobs):
        path = f"{FHIR}/{made['resourceType']}/{made['id']}"
        assert (await running.http.get(path, headers=client)).json() == made
        refused = [
            await send(running.http, "PUT", path, client, changed(made, made["id"])),
            await running.http.delete(path, headers=client),
            await send(running.http, "POST", f"{FHIR}/Patient", client, patient()),
        ]
        for response in refused:
            assert_outcome(response, 403, "forbidden")
        assert (await running.http.get(path, headers=client)).json() == made


async def test_insufficient_scope_names_the_scope_in_the_challenge(running: Running) -> None:
    world = await World.build(running)
    reader = await world.caller("system_patient_rs")
    response = await send(running.http, "POST", f"{FHIR}/Patient", reader, patient())
    assert_outcome(response, 403, "forbidden")
    assert response.headers["www-authenticate"] == (
        'Bearer realm="fhirgate", error="insufficient_scope", scope="system/Patient.c"'
    )
    user = await world.caller("read_only_app_user")
    response = await running.http.get(f"{FHIR}/Observation/{missing_id()}", headers=user)
    assert_outcome(response, 403, "forbidden")
    assert response.headers["www-authenticate"] == (
        'Bearer realm="fhirgate", error="insufficient_scope", scope="user/Observation.r"'
    )


async def test_a_token_for_another_environment_of_the_same_organization_sees_nothing(
    running: Running,
) -> None:
    world = await World.build(running)
    ours = await create(running.http, world.system, patient())
    client_id, secret = await register_secret_client(
        running.services, scope="system/*.cruds", environment=EnvironmentKind.STAGING
    )
    token = await token_for_secret_client(running.http, client_id, secret, "system/*.cruds")
    staging = bearer(token)
    response = await running.http.get(f"{FHIR}/Patient/{ours['id']}", headers=staging)
    assert_outcome(response, 404, "not-found")
    redox = await running.http.get(
        f"/fhir/R4/default/Development/Patient/{ours['id']}", headers=staging
    )
    assert_outcome(redox, 403, "forbidden")
    theirs = await running.http.get(
        f"/fhir/R4/default/Staging/Patient/{ours['id']}", headers=staging
    )
    assert_outcome(theirs, 404, "not-found")


# --------------------------------------------------------------------------- references


def reference_forms(patient_id: str) -> dict[str, str]:
    return {
        "relative": f"Patient/{patient_id}",
        "absolute": f"{BASE}{FHIR}/Patient/{patient_id}",
        "versioned": f"Patient/{patient_id}/_history/1",
    }


#: Where a Patient reference can sit in a resource: a body with ``reference`` at that place.
PLACES = {
    "Observation.subject": lambda ref: observation(subject=ref),
    "Observation.performer[1]": lambda ref: observation(
        performer=[{"display": "Dr. Who"}, {"reference": ref}]
    ),
    "Observation.component[0].extension[0].valueReference": lambda ref: observation(
        component=[
            {
                "code": {"text": "part"},
                "extension": [
                    {"url": "http://example.org/about", "valueReference": {"reference": ref}}
                ],
            }
        ]
    ),
    "Patient.link[0].other": lambda ref: patient(
        link=[{"other": {"reference": ref}, "type": "seealso"}]
    ),
}


async def _write_referencing(
    http: httpx.AsyncClient, headers: dict[str, str], place: str, reference: str
) -> list[httpx.Response]:
    """A create, then an update of an existing resource of the caller, each with the
    reference at ``place``."""
    body = PLACES[place](reference)
    created = await send(http, "POST", f"{FHIR}/{body['resourceType']}", headers, body)
    mine = await create(http, headers, make_resource(body["resourceType"]))
    path = f"{FHIR}/{body['resourceType']}/{mine['id']}"
    updated = await send(http, "PUT", path, headers, body | {"id": mine["id"]})
    return [created, updated]


@pytest.mark.parametrize("place", list(PLACES))
async def test_a_user_may_reference_only_patients_it_owns(running: Running, place: str) -> None:
    http = running.http
    world = await World.build(running)
    own = await create(http, world.user_a, patient())
    own_deleted = await create(http, world.user_a, patient())
    assert (
        await http.delete(f"{FHIR}/Patient/{own_deleted['id']}", headers=world.user_a)
    ).status_code == 204
    others = {
        "user B's": (await create(http, world.user_b, patient()))["id"],
        "the backend's": (await create(http, world.system, patient()))["id"],
        "a missing": missing_id(),
        "a deleted own": own_deleted["id"],
    }
    problems = []
    for form, reference in reference_forms(own["id"]).items():
        for response in await _write_referencing(http, world.user_a, place, reference):
            if response.status_code not in (200, 201):
                problems.append(f"own Patient, {form}: {response.status_code} {response.text}")
    for whose, patient_id in others.items():
        for form, reference in reference_forms(patient_id).items():
            for response in await _write_referencing(http, world.user_a, place, reference):
                try:
                    assert_outcome(response, 403, "forbidden")
                except AssertionError:
                    problems.append(
                        f"{whose} Patient, {form}: {response.status_code} {response.text}"
                    )
    assert not problems, "\n".join(problems)


async def test_the_reference_rule_holds_on_every_backend_and_for_header_users(
    server: Running,
) -> None:
    http = server.http
    world = await World.build(server)
    header_a = await world.caller("header_user_a")
    own = await create(http, world.user_a, patient())
    bobs = await create(http, world.user_b, patient())
    for headers in (world.user_a, header_a):
        mine = observation(subject=f"Patient/{own['id']}")
        assert (await send(http, "POST", f"{FHIR}/Observation", headers, mine)).status_code == 201
        theirs = observation(subject=f"Patient/{bobs['id']}")
        refused = await send(http, "POST", f"{FHIR}/Observation", headers, theirs)
        assert_outcome(refused, 403, "forbidden")
        nested = observation(
            performer=[
                {"reference": f"Patient/{own['id']}"},
                {"reference": f"Patient/{bobs['id']}"},
            ]
        )
        refused = await send(http, "POST", f"{FHIR}/Observation", headers, nested)
        assert_outcome(refused, 403, "forbidden")


async def test_a_backend_service_may_reference_any_patient_of_its_environment(
    running: Running,
) -> None:
    world = await World.build(running)
    bobs = await create(running.http, world.user_b, patient())
    body = observation(subject=f"Patient/{bobs['id']}")
    response = await send(running.http, "POST", f"{FHIR}/Observation", world.system, body)
    assert response.status_code == 201, response.text

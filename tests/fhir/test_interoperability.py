"""Interoperability: real FHIR clients against fhirgate served by uvicorn over TCP.

- ``fhirpy`` (sync over ``requests``, async over ``aiohttp``) creates, reads, searches, pages
  (``fetch_all`` following the Bundle's ``next`` links), updates and deletes Patients and
  Observations with a token from the SDK's ``PrivateKeyJWTAuth``;
- the Redox documentation's Python pattern: a ``requests`` auth object that signs an assertion,
  gets a token at ``/v2/auth/token`` (no scope) and ``POST``s ``Patient/_search`` with a form body
  to ``/fhir/R4/{organization}/{Environment}``; the same token on another organization's path
  is refused.

The server's ``public_url`` is the address it listens on (its socket is bound before the app is
built), as in a deployment: assertion audiences and the Bundle links a client follows use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from cryptography.hazmat.primitives import serialization
from fhirpy import AsyncFHIRClient, SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

from fhirgate.app import create_app
from fhirgate.client import PrivateKeyJWTAuth
from fhirgate.config import Settings
from fhirgate.domain.organizations import EnvironmentKind
from fhirgate.oauth.jose import PrivateKey, jwk_from_public_key
from fhirgate.storage.db import create_engine, upgrade
from fhirgate.storage.repos import ClientRepo, OrganizationRepo
from tests.support import private_key

OTHER_ORG = "interop-other"
TOKEN = "/oauth2/token"
REDOX_TOKEN = "/v2/auth/token"
CRUDS = "system/Patient.cruds system/Observation.cruds"
FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True)
class Registered:
    """A ``private_key_jwt`` client: its id, kid, alg and the PEM file of its private key."""

    client_id: str
    kid: str
    alg: str
    key_file: str


@dataclass(frozen=True)
class Live:
    """The served app's base URL and its clients (default organization, another one)."""

    url: str
    ours: Registered
    theirs: Registered

    def auth(
        self, path: str = TOKEN, scope: str | None = CRUDS, *, other: bool = False
    ) -> PrivateKeyJWTAuth:
        client = self.theirs if other else self.ours
        return PrivateKeyJWTAuth(f"{self.url}{path}", client.client_id, client.key_file,
                                 kid=client.kid, alg=client.alg, scope=scope)  # fmt: skip


def _pem_file(directory: Path, name: str, key: PrivateKey) -> str:
    path = directory / f"{name}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


async def _register(settings: Settings, directory: Path) -> tuple[Registered, Registered]:
    """A ``system/*.cruds`` client in the default organization (RS384) and one in another
    organization (ES384), registered as ``fhirgate clients create --jwks-file`` does."""
    engine = create_engine(settings.database_url)
    try:
        organizations, clients = OrganizationRepo(engine), ClientRepo(engine)
        await organizations.create(OTHER_ORG, "Another organization")
        made = []
        for alg, environment in (
            ("RS384", await organizations.default_environment(EnvironmentKind.DEVELOPMENT)),
            ("ES384", await organizations.environment(OTHER_ORG, EnvironmentKind.DEVELOPMENT)),
        ):
            key, kid = private_key(alg), f"interop-{alg.lower()}"
            created = await clients.create(
                environment=environment,
                name=f"interoperability {alg}",
                auth_method="private_key_jwt",
                scope="system/*.cruds",
                jwks={"keys": [jwk_from_public_key(key.public_key(), kid, alg)]},
            )
            made.append(Registered(created.client_id, kid, alg, _pem_file(directory, kid, key)))
        return made[0], made[1]
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """fhirgate (lifespan on) served by uvicorn from a thread on 127.0.0.1."""
    directory = tmp_path_factory.mktemp("interop")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{directory}/fhirgate.db",
        var_dir=directory / "var",
        public_url=url,
        secret_key="interop-" + secrets.token_hex(8),
    )
    upgrade(settings.database_url)
    ours, theirs = asyncio.run(_register(settings, directory))
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on",
                            loop="asyncio", ws="none")  # fmt: skip
    server = uvicorn.Server(config)
    runner = threading.Thread(target=server.run, args=([sock],), name="interop", daemon=True)
    runner.start()
    give_up = time.monotonic() + 15
    while not server.started:
        assert runner.is_alive() and time.monotonic() < give_up, "the server did not start"
        time.sleep(0.02)
    try:
        yield Live(url, ours, theirs)
    finally:
        server.should_exit = True
        runner.join(15)
        with contextlib.suppress(OSError):
            sock.close()


def family() -> str:
    """A family name no other test uses (string search matches prefixes: same length)."""
    return "Interop" + uuid.uuid4().hex[:12]


def sync_client(live: Live, base: str = "/fhir/R4") -> SyncFHIRClient:
    """fhirpy's sync client with ``Authorization: Bearer`` and a token fetched by the SDK."""
    token = live.auth().get_token()
    return SyncFHIRClient(f"{live.url}{base}", authorization=f"Bearer {token}",
                          requests_config={"timeout": 10})  # fmt: skip


def names(resources: list[Any]) -> list[tuple[str, str]]:
    return sorted((r["name"][0]["given"][0], r["gender"]) for r in resources)


# --------------------------------------------------------------------------- fhirpy, sync


def test_fhirpy_sync_creates_reads_and_searches_patients_and_observations(live: Live) -> None:
    client = sync_client(live)
    surname = family()
    jane = client.resource("Patient", name=[{"family": surname, "given": ["Jane"]}],
                           gender="female", birthDate="1980-02-03")  # fmt: skip
    jane.save()
    john = client.resource("Patient", name=[{"family": surname, "given": ["John"]}], gender="male")
    john.save()
    for created in (jane, john):
        assert created.id and created["meta"]["versionId"] == "1", created
    pulse = client.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        valueQuantity={"value": 72, "unit": "/min"},
        subject=jane.to_reference(),
    )
    pulse.save()
    assert pulse.id and pulse["subject"]["reference"] == f"Patient/{jane.id}"

    read = client.reference("Patient", jane.id).to_resource()
    assert read.id == jane.id and read["birthDate"] == "1980-02-03"
    assert read["name"] == [{"family": surname, "given": ["Jane"]}]
    assert client.resources("Patient").search(_id=john.id).get().id == john.id

    patients = client.resources("Patient")
    assert names(patients.search(family=surname).fetch()) == [("Jane", "female"), ("John", "male")]
    assert names(patients.search(family=surname, gender="male").fetch()) == [("John", "male")]
    assert patients.search(family=surname, gender="other").fetch() == []

    found = client.resources("Observation").search(patient=jane).fetch()
    assert [obs.id for obs in found] == [pulse.id]
    assert client.resources("Observation").search(patient=f"Patient/{john.id}").fetch() == []
    subject = found[0]["subject"].to_resource()  # the reference, resolved through the API
    assert subject.id == jane.id and subject["gender"] == "female"


def test_fhirpy_fetch_all_follows_next_links_returning_every_match_once(live: Live) -> None:
    client = sync_client(live)
    surname = family()
    made = set()
    for index in range(5):
        patient = client.resource("Patient", name=[{"family": surname, "given": [f"P{index}"]}],
                                  gender="unknown")  # fmt: skip
        patient.save()
        made.add(patient.id)
    search = client.resources("Patient").search(family=surname).limit(2)

    first = search.fetch_raw()
    assert first["type"] == "searchset" and first["total"] == 5 and len(first["entry"]) == 2
    next_url = [link["url"] for link in first["link"] if link["relation"] == "next"]
    assert next_url and next_url[0].startswith(f"{live.url}/fhir/R4/Patient?"), first["link"]
    assert len(search.fetch()) == 2  # one page

    everything = search.fetch_all()  # three pages of 2, 2 and 1
    assert len(everything) == 5
    assert {patient.id for patient in everything} == made


def test_fhirpy_save_again_makes_version_2_and_delete_makes_the_patient_gone(
    live: Live,
) -> None:
    client = sync_client(live)
    surname = family()
    patient = client.resource("Patient", name=[{"family": surname, "given": ["Ann"]}],
                              gender="female")  # fmt: skip
    patient.save()
    assert patient["meta"]["versionId"] == "1"

    patient["gender"] = "other"
    patient["name"][0]["given"] = ["Anne"]
    patient.save()  # a PUT of the resource with its id
    assert patient["meta"]["versionId"] == "2"
    read = client.reference("Patient", patient.id).to_resource()
    assert read["meta"]["versionId"] == "2" and read["gender"] == "other"
    assert read["name"][0]["given"] == ["Anne"]
    first = patient.execute("_history/1", method="get")
    assert first["meta"]["versionId"] == "1" and first["gender"] == "female"

    patient.delete()
    with pytest.raises(ResourceNotFound):
        client.reference("Patient", patient.id).to_resource()
    assert client.resources("Patient").search(family=surname).fetch() == []


def test_fhirpy_with_the_sdk_auth_as_its_requests_auth_reads_and_searches(live: Live) -> None:
    auth = live.auth()
    client = SyncFHIRClient(f"{live.url}/fhir/R4", requests_config={"auth": auth, "timeout": 10})
    surname = family()
    patient = client.resource("Patient", name=[{"family": surname, "given": ["Bo"]}],
                              gender="male")  # fmt: skip
    patient.save()
    token = auth.get_token()  # the one the auth fetched for the first request, cached
    assert client.reference("Patient", patient.id).to_resource()["gender"] == "male"
    assert [p.id for p in client.resources("Patient").search(family=surname).fetch()] == [
        patient.id
    ]
    assert auth.get_token() == token


# --------------------------------------------------------------------------- fhirpy, async


async def test_fhirpy_async_creates_reads_pages_updates_and_deletes(live: Live) -> None:
    token = await live.auth().aget_token()
    client = AsyncFHIRClient(f"{live.url}/fhir/R4", authorization=f"Bearer {token}")
    surname = family()
    made = []
    for given, gender in (("Ada", "female"), ("Ben", "male"), ("Cy", "male")):
        patient = client.resource("Patient", name=[{"family": surname, "given": [given]}],
                                  gender=gender)  # fmt: skip
        await patient.save()
        made.append(patient)
    ada = made[0]
    observation = client.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        subject=ada.to_reference(),
    )
    await observation.save()

    read = await client.reference("Patient", ada.id).to_resource()
    assert read.id == ada.id and read["name"][0]["given"] == ["Ada"]
    search = client.resources("Patient").search(family=surname)
    paged = await search.limit(2).fetch_all()
    assert sorted(p.id for p in paged) == sorted(p.id for p in made)
    assert names(await search.search(gender="male").fetch()) == [("Ben", "male"), ("Cy", "male")]
    found = await client.resources("Observation").search(subject=f"Patient/{ada.id}").fetch()
    assert [obs.id for obs in found] == [observation.id]

    ada["birthDate"] = "1815-12-10"
    await ada.save()
    assert ada["meta"]["versionId"] == "2"
    assert (await client.reference("Patient", ada.id).to_resource())["birthDate"] == "1815-12-10"

    await observation.delete()
    with pytest.raises(ResourceNotFound):
        await client.reference("Observation", observation.id).to_resource()


# --------------------------------------------------------------------------- Redox's pattern


def test_redox_python_pattern_posts_patient_search_with_the_sdk_requests_auth(
    live: Live,
) -> None:
    surname = family()
    patient = sync_client(live).resource("Patient", name=[{"family": surname, "given": ["Red"]}],
                                         gender="female")  # fmt: skip
    patient.save()
    base = f"{live.url}/fhir/R4/default/Development"
    auth = live.auth(REDOX_TOKEN, scope=None)  # Redox's sample sends no scope

    response = requests.post(f"{base}/Patient/_search", data={"family": surname}, auth=auth,
                             timeout=10)  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert bundle["total"] == 1
    [entry] = bundle["entry"]
    assert entry["resource"]["id"] == patient.id
    assert entry["resource"]["name"] == [{"family": surname, "given": ["Red"]}]
    assert entry["fullUrl"] == f"{base}/Patient/{patient.id}"
    assert entry["search"]["mode"] == "match"

    redox = sync_client(live, "/fhir/R4/default/Development")  # and fhirpy at the same base
    assert [p.id for p in redox.resources("Patient").search(family=surname).fetch_all()] == [
        patient.id
    ]


def test_redox_token_is_refused_on_another_organizations_path(live: Live) -> None:
    surname = family()
    sync_client(live).resource("Patient", name=[{"family": surname}], gender="male").save()
    ours = live.auth(REDOX_TOKEN, scope=None)
    theirs_path = f"{live.url}/fhir/R4/{OTHER_ORG}/Development/Patient/_search"

    refused = requests.post(theirs_path, data={"family": surname}, auth=ours, timeout=10)
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"].startswith(FHIR_JSON)
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "forbidden", outcome
    assert "entry" not in outcome

    # the path works for that organization's own token, which does not see our patient
    theirs = live.auth(REDOX_TOKEN, scope=None, other=True)
    answer = requests.post(theirs_path, data={"family": surname}, auth=theirs, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["total"] == 0 and answer.json().get("entry", []) == []

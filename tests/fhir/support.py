"""Helpers for the FHIR API tests: a caller (request headers) for every kind of principal,
resource factories, requests with FHIR JSON bodies, and OperationOutcome assertions."""

from __future__ import annotations

import contextlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from fhirgate.domain.errors import Conflict
from fhirgate.domain.organizations import EnvironmentKind
from tests.delegation.support import Application, register_application
from tests.support import BASE, Running, register_secret_client

__all__ = [
    "BASES",
    "FHIR",
    "FHIR_JSON",
    "INSTANT",
    "World",
    "access_token_claims",
    "assert_no_internals",
    "assert_outcome",
    "bearer",
    "create",
    "legacy_headers",
    "make_resource",
    "missing_id",
    "observation",
    "other_org_headers",
    "patient",
    "send",
    "system_headers",
    "token_for_secret_client",
]

FHIR = "/fhir/R4"
FHIR_JSON = "application/fhir+json"
#: Every base the FHIR API answers at: canonical, 1upHealth's, Redox's (both spellings of the
#: environment; the default organization's slug is ``default``).
BASES = ("/fhir/R4", "/r4", "/fhir/R4/default/Development", "/fhir/R4/default/development")
#: A FHIR ``instant`` in UTC with a ``Z`` (FHIR R4 §2.24.0.1).
INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
#: Text that must never reach a client: stack traces, SQL, driver and framework internals.
INTERNALS = (
    "Traceback",
    'File "',
    "sqlalchemy",
    "sqlite3",
    "asyncpg",
    "SELECT ",
    "INSERT ",
    "UPDATE fhir",
    "fhir_resources",
    "IntegrityError",
    "Exception",
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def access_token_claims(
    server: Running, client_id: str, scope: str, lifetime: int
) -> dict[str, Any]:
    """The claims of an access token as the token endpoint issues it to ``client_id`` in the
    default organization's development environment, with any scope and lifetime."""
    environment = await server.services.organizations.default_environment("development")
    now = int(time.time())
    return {
        "iss": BASE,
        "sub": client_id,
        "aud": BASE,
        "exp": now + lifetime,
        "iat": now,
        "jti": secrets.token_urlsafe(16),
        "client_id": client_id,
        "scope": scope,
        "organization": environment.organization_id,
        "environment": "development",
    }


def missing_id() -> str:
    """A well-formed id no resource has (server ids are UUIDs too, so lengths match)."""
    return str(uuid.uuid4())


# --------------------------------------------------------------------------- resources


def patient(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "gender": "female",
        **extra,
    }


def observation(subject: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 72, "unit": "/min"},
        **extra,
    }
    if subject is not None:
        body["subject"] = {"reference": subject}
    return body


#: A factory per resource type the tests use (no Patient references: anyone may write them).
FACTORIES = {"Patient": patient, "Observation": observation}


def make_resource(resource_type: str, **extra: Any) -> dict[str, Any]:
    return FACTORIES[resource_type](**extra)


# --------------------------------------------------------------------------- requests


async def send(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any = None,
    *,
    content_type: str = FHIR_JSON,
    **extra_headers: str,
) -> httpx.Response:
    """One request; a ``body`` goes as JSON with ``content_type``."""
    all_headers = {**headers, **extra_headers}
    content = None
    if body is not None:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        all_headers["Content-Type"] = content_type
    return await http.request(method, path, headers=all_headers, content=content)


async def create(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    body: dict[str, Any],
    base: str = FHIR,
) -> dict[str, Any]:
    """Create ``body`` (asserting 201); the stored resource."""
    response = await send(http, "POST", f"{base}/{body['resourceType']}", headers, body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def assert_no_internals(response: httpx.Response) -> None:
    for marker in INTERNALS:
        assert marker not in response.text, (marker, response.text)


def assert_outcome(
    response: httpx.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    """An OperationOutcome error with ``status`` (and issue code ``code``): its first issue."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(FHIR_JSON), response.headers
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    issue: dict[str, Any] = body["issue"][0]
    assert issue["severity"] in ("error", "fatal"), issue
    assert isinstance(issue["code"], str) and issue["code"], issue
    assert isinstance(issue["diagnostics"], str) and issue["diagnostics"], issue
    if code is not None:
        assert issue["code"] == code, issue
    assert_no_internals(response)
    return issue


# --------------------------------------------------------------------------- principals


async def token_for_secret_client(
    http: httpx.AsyncClient, client_id: str, secret: str, scope: str | None = None
) -> str:
    """A client_credentials access token (client_secret_basic)."""
    form = {"grant_type": "client_credentials"}
    if scope is not None:
        form["scope"] = scope
    response = await http.post("/oauth2/token", data=form, auth=(client_id, secret))
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def system_headers(running: Running, scope: str = "system/*.cruds") -> dict[str, str]:
    """A backend service of the default organization (development) with ``scope``."""
    client_id, secret = await register_secret_client(running.services, scope=scope)
    return bearer(await token_for_secret_client(running.http, client_id, secret, scope))


async def other_org_headers(
    running: Running, slug: str = "other-org", scope: str = "system/*.cruds"
) -> dict[str, str]:
    """A backend service of another organization (``slug``, created if need be)."""
    services = running.services
    with contextlib.suppress(Conflict):  # made by an earlier call
        await services.organizations.create(slug, f"Organization {slug}")
    environment = await services.organizations.environment(slug, EnvironmentKind.DEVELOPMENT)
    secret = services.hasher.generate()
    client = await services.clients.create(
        environment=environment,
        name="other organization's client",
        auth_method="client_secret_basic",
        scope=scope,
        secret_hash=services.hasher.hash(secret),
    )
    return bearer(await token_for_secret_client(running.http, client.client_id, secret, scope))


async def legacy_headers(running: Running, scope: str = "system/*.rs") -> dict[str, str]:
    """A Redox legacy API key's opaque access token (``POST /auth/authenticate``)."""
    api_key, secret = await register_secret_client(running.services, "legacy_api_key", scope=scope)
    response = await running.http.post(
        "/auth/authenticate", json={"apiKey": api_key, "secret": secret}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["accessToken"]
    assert "." not in token  # opaque: the guard's legacy path
    return bearer(token)


@dataclass
class World:
    """One deployment's principals: the default organization's backend service, an
    application with users A and B, and — made on first use — every other kind of caller.

    ``await world.caller(kind)`` gives the request headers of a kind (:data:`KINDS`)."""

    running: Running
    app: Application
    system: dict[str, str]
    user_a: dict[str, str]
    user_b: dict[str, str]
    user_a_number: int
    user_b_number: int
    _made: dict[str, dict[str, str]] = field(default_factory=dict)

    KINDS = (
        "system",  # backend service, system/*.cruds
        "system_patient_rs",  # backend service, system/Patient.rs only
        "other_org",  # backend service of another organization, system/*.cruds
        "user_a",  # user A of the application (user/*.*), by its access token
        "user_b",  # user B of the same application
        "header_user_a",  # the application's client_id/client_secret + x-oneup-user-id: A
        "other_app_user",  # a user of another application of the same organization
        "read_only_app_user",  # a user of an application allowed only user/Patient.rs
        "client",  # the application's headers with x-oneup-user-id: client (reads only)
        "legacy",  # a Redox legacy API key's opaque token, system/*.rs
    )

    @classmethod
    async def build(cls, running: Running) -> World:
        app = await register_application(running.services, running.http, "user/*.* system/*.rs")
        a = await app.user_tokens("alice")
        b = await app.user_tokens("bob")
        return cls(
            running,
            app,
            await system_headers(running),
            bearer(a["access_token"]),
            bearer(b["access_token"]),
            int(a["oneup_user_id"]),
            int(b["oneup_user_id"]),
        )

    @property
    def http(self) -> httpx.AsyncClient:
        return self.running.http

    async def caller(self, kind: str) -> dict[str, str]:
        fixed = {"system": self.system, "user_a": self.user_a, "user_b": self.user_b}
        if kind in fixed:
            return fixed[kind]
        if kind not in self._made:
            self._made[kind] = await self._make(kind)
        return self._made[kind]

    async def _make(self, kind: str) -> dict[str, str]:
        running = self.running
        if kind == "system_patient_rs":
            return await system_headers(running, "system/Patient.rs")
        if kind == "other_org":
            return await other_org_headers(running)
        if kind == "header_user_a":
            return {**self.app.credentials, "x-oneup-user-id": str(self.user_a_number)}
        if kind == "other_app_user":
            other = await register_application(running.services, running.http, "user/*.*")
            return bearer((await other.user_tokens("carol"))["access_token"])
        if kind == "read_only_app_user":
            other = await register_application(running.services, running.http, "user/Patient.rs")
            tokens = await other.user_tokens("dave", scope="user/Patient.rs")
            return bearer(tokens["access_token"])
        if kind == "client":
            return {**self.app.credentials, "x-oneup-user-id": "client"}
        if kind == "legacy":
            return await legacy_headers(running)
        raise AssertionError(f"unknown principal kind {kind!r}")

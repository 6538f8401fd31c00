"""``fhirgate fhir load-sample``: a synthetic data set to try the FHIR API with."""

from __future__ import annotations

import contextlib
from typing import Any

import click

from fhirgate.cli.context import Storage, emit, run_storage
from fhirgate.domain.clients import AuthMethod
from fhirgate.domain.errors import Conflict
from fhirgate.fhir.sample import sample_patients
from fhirgate.fhir.store import Partition, ResourceStore
from fhirgate.fhir.validation import validate
from fhirgate.oauth.client_auth import SecretHasher
from fhirgate.storage.app_users import AppUserRepo

__all__ = ["fhir"]

SAMPLE_ORG = "sample-clinic"
APP_USERS = ("alice", "bob")


@click.group()
def fhir() -> None:
    """The data behind the FHIR API."""


class _Loader:
    """Writes sample patients into partitions, reporting progress on stderr."""

    def __init__(self, storage: Storage, total: int) -> None:
        self.store = ResourceStore(storage.engine, "R4", storage.statements)
        self.total = total
        self.done = 0
        self.resources = 0

    async def patients(self, partition: Partition, count: int, seed: int, first: int) -> None:
        for sample in sample_patients(count, seed, first):
            patient = await self._write(partition, sample.patient)
            for resource in sample.about(patient):
                await self._write(partition, resource)
            self.done += 1
            if self.done % 10 == 0 or self.done == self.total:
                click.echo(f"  {self.done}/{self.total} patients", err=True)

    async def _write(self, partition: Partition, resource: dict[str, Any]) -> str:
        validate(resource["resourceType"], resource)
        stored = await self.store.create(partition, resource["resourceType"], resource)
        self.resources += 1
        return stored.resource_id


@fhir.command("load-sample")
@click.option(
    "--patients", default=10, show_default=True, type=click.IntRange(1, 10_000),
    help="Patients per partition.",
)  # fmt: skip
@click.option("--seed", default=1, show_default=True, help="Same seed, same data.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def load_sample(patients: int, seed: int, as_json: bool) -> None:
    """Load synthetic patients (encounters, vital signs, conditions, medications, allergies,
    immunizations) into: the default organization's development environment; the
    organization "sample-clinic"; and two users (alice, bob) of a new application "Sample app"
    in the default organization, whose client id and secret are printed once. Running it
    again adds another set."""

    async def job(storage: Storage) -> dict[str, Any]:
        with contextlib.suppress(Conflict):
            await storage.organizations.create(SAMPLE_ORG, "Sample clinic")
        default = await storage.organizations.default_environment("development")
        clinic = await storage.organizations.environment(SAMPLE_ORG, "development")
        secret = SecretHasher.generate()
        app = await storage.clients.create(
            environment=default,
            name="Sample app",
            auth_method=AuthMethod.CLIENT_SECRET_POST,
            scope="user/*.*",
            secret_hash=storage.hasher().hash(secret),
        )
        await storage.audit.record("client.created", client_id=app.client_id, actor="cli")
        loader = _Loader(storage, total=patients * (2 + len(APP_USERS)))
        click.echo(f"Loading {loader.total} sample patients…", err=True)
        await loader.patients(Partition(default.id), patients, seed, 1)
        await loader.patients(Partition(clinic.id), patients, seed + 1, patients + 1)
        users = {}
        for number, name in enumerate(APP_USERS):
            user = await AppUserRepo(storage.engine).create(app.client_id, name)
            users[name] = user.oneup_user_id
            partition = Partition(default.id, app.client_id, user.oneup_user_id)
            first = patients * (2 + number) + 1
            await loader.patients(partition, patients, seed + 2 + number, first)
        click.echo("Updating the query planner's statistics…", err=True)
        await storage.analyze()
        return {
            "patients": loader.done,
            "resources": loader.resources,
            "organizations": ["default", SAMPLE_ORG],
            "application": {"client_id": app.client_id, "client_secret": secret},
            "users": users,
        }

    result = run_storage(job)
    app = result["application"]
    text = (
        f"Loaded {result['resources']} resources ({result['patients']} patients) into "
        f"organizations default and {SAMPLE_ORG} (development), and for users alice and bob "
        f"of the application 'Sample app':\n"
        f"  client_id      {app['client_id']}\n"
        f"  client_secret  {app['client_secret']}   (shown only now)\n"
        "Get a user's token with the user-management API (docs/oneup.md), or register a "
        "client with system/*.rs for the organization's data."
    )
    emit(result, as_json, text)

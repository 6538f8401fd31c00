"""The ``fhirgate`` command: ``serve``, ``db``, ``orgs``, ``clients``, ``keys``, ``token``,
``users`` (an application's users: 1upHealth per-user delegated access).

Exit codes: 0 success, 1 error (a clear message on stderr), 2 usage error.
"""

from __future__ import annotations

import click
import uvicorn

from fhirgate import __version__
from fhirgate.cli.admin import admin
from fhirgate.cli.audit import audit
from fhirgate.cli.clients import clients
from fhirgate.cli.context import Storage, emit, load_settings, run_storage
from fhirgate.cli.fhir import fhir
from fhirgate.cli.keys import keys
from fhirgate.cli.token import token
from fhirgate.cli.users import users
from fhirgate.logs import log_config
from fhirgate.storage.db import upgrade

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fhirgate")
def cli() -> None:
    """fhirgate: OAuth 2.0 authorization server for health-data APIs.

    Configuration comes from FHIRGATE_* environment variables (see docs/configuration.md).
    """


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="Worker processes."
)
def serve(host: str, port: int, workers: int) -> None:
    """Apply migrations, then serve the API."""
    settings = load_settings()
    click.echo(
        f"fhirgate {__version__}: migrating {settings.database_url.split('@')[-1]}", err=True
    )
    upgrade(settings.database_url)
    click.echo(f"fhirgate: listening on http://{host}:{port} (issuer {settings.issuer})", err=True)
    click.echo("fhirgate: FHIR sample data for a first try: fhirgate fhir load-sample", err=True)
    uvicorn.run(
        "fhirgate.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=log_config(settings.log_level),
        access_log=False,
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    upgrade(load_settings().database_url)
    click.echo("Database is up to date.")


@cli.group()
def orgs() -> None:
    """Organizations."""


@orgs.command("create")
@click.option("--slug", required=True, help="URL name: lowercase letters, digits, hyphens.")
@click.option("--name", required=True, help="Display name.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def orgs_create(slug: str, name: str, as_json: bool) -> None:
    """Create an organization with development, staging and production environments."""

    async def job(storage: Storage) -> str:
        return await storage.organizations.create(slug, name)

    org_id = run_storage(job)
    emit({"id": org_id, "slug": slug, "name": name}, as_json, f"Created organization {slug}.")


cli.add_command(admin)
cli.add_command(audit)
cli.add_command(clients)
cli.add_command(fhir)
cli.add_command(keys)
cli.add_command(token)
cli.add_command(users)


def main() -> None:
    cli()

"""``fhirgate clients …``: register and manage API keys (clients)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from fhirgate.cli.context import Storage, emit, run_storage
from fhirgate.oauth.registration import (
    ClientKeys,
    RegistrationError,
    keys_from_pem,
    validate_keys,
    validate_scope,
)
from fhirgate.storage.models import AuthMethod
from fhirgate.storage.repos import DEFAULT_ORG_SLUG, Client

__all__ = ["clients"]


def describe(client: Client) -> dict[str, Any]:
    """A client as shown to operators: never a secret or a private key."""
    kids = [jwk.get("kid") for jwk in (client.jwks or {}).get("keys", [])]
    return {
        "client_id": client.client_id,
        "name": client.name,
        "status": client.status,
        "auth_method": client.auth_method,
        "scope": client.scope,
        "organization": client.environment.organization_slug,
        "environment": client.environment.kind,
        "jwks_url": client.jwks_url,
        "kids": kids,
        "created_at": client.created_at.isoformat(),
        "updated_at": client.updated_at.isoformat(),
    }


def _text(client: Client) -> str:
    info = describe(client)
    width = max(len(name) for name in info)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in info.items())


@click.group()
def clients() -> None:
    """Register and manage clients (API keys)."""


def _read_keys(
    jwks_file: Path | None,
    jwks_url: str | None,
    pem_file: Path | None,
    kid: str | None,
    allow_insecure: bool,
) -> ClientKeys:
    if sum(x is not None for x in (jwks_file, jwks_url, pem_file)) != 1:
        raise click.UsageError("give exactly one of --jwks-file, --jwks-url, --public-key-file")
    try:
        jwks = None
        if jwks_file is not None:
            jwks = json.loads(jwks_file.read_text())
        elif pem_file is not None:
            jwks = keys_from_pem(pem_file.read_bytes(), kid)
        return validate_keys(jwks, jwks_url, allow_insecure=allow_insecure)
    except (RegistrationError, json.JSONDecodeError) as exc:
        raise click.ClickException(str(exc)) from exc


@clients.command("create")
@click.option(
    "--auth",
    "auth_method",
    type=click.Choice([m.value for m in AuthMethod]),
    default=AuthMethod.PRIVATE_KEY_JWT.value,
    show_default=True,
    help="How the client authenticates at the token endpoint.",
)
@click.option("--name", required=True, help="A name people recognise.")
@click.option(
    "--jwks-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JWK Set (JSON) with the client's public keys.",
)
@click.option("--jwks-url", help="An https:// URL serving the client's JWK Set.")
@click.option(
    "--public-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A PEM public key (RSA or EC).",
)
@click.option("--kid", help="Key id for --public-key-file (default: its RFC 7638 thumbprint).")
@click.option(
    "--scope", help='Allowed scopes, space-separated in one value (default "system/*.rs").'
)
@click.option(
    "--org", "org", default=DEFAULT_ORG_SLUG, show_default=True, help="Organization slug."
)
@click.option(
    "--env",
    "env",
    default="development",
    show_default=True,
    type=click.Choice(["development", "staging", "production"]),
    help="Environment.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def create(
    auth_method: str,
    name: str,
    jwks_file: Path | None,
    jwks_url: str | None,
    public_key_file: Path | None,
    kid: str | None,
    scope: str | None,
    org: str,
    env: str,
    as_json: bool,
) -> None:
    """Register a client and print its client_id."""

    async def job(storage: Storage) -> Client:
        keys = _read_keys(
            jwks_file, jwks_url, public_key_file, kid, storage.settings.allow_insecure_jwks
        )
        try:
            allowed = validate_scope(scope)
        except RegistrationError as exc:
            raise click.ClickException(str(exc)) from exc
        if org == DEFAULT_ORG_SLUG:
            environment = await storage.organizations.default_environment(env)
        else:
            environment = await storage.organizations.environment(org, env)
        return await storage.clients.create(
            environment=environment,
            name=name,
            auth_method=auth_method,
            scope=allowed,
            jwks=keys.jwks,
            jwks_url=keys.jwks_url,
        )

    client = run_storage(job)
    emit(describe(client), as_json, f"Created client {client.client_id}\n\n{_text(client)}")


@clients.command("list")
@click.option("--org", help="Only this organization's clients.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def list_(org: str | None, as_json: bool) -> None:
    """List clients."""
    found = run_storage(lambda storage: storage.clients.list(org))
    rows = [
        f"{c.client_id}  {c.status:<8} {c.environment.organization_slug}/"
        f"{c.environment.kind:<12} {c.name}"
        for c in found
    ]
    emit([describe(c) for c in found], as_json, "\n".join(rows) or "No clients yet.")


async def _get(storage: Storage, client_id: str) -> Client:
    client = await storage.clients.get(client_id)
    if client is None:
        raise click.ClickException(f"no client {client_id!r}")
    return client


@clients.command("show")
@click.argument("client_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def show(client_id: str, as_json: bool) -> None:
    """Show one client."""
    client = run_storage(lambda storage: _get(storage, client_id))
    emit(describe(client), as_json, _text(client))


@clients.command("rename")
@click.argument("client_id")
@click.argument("name")
def rename(client_id: str, name: str) -> None:
    """Rename a client."""
    run_storage(lambda storage: storage.clients.rename(client_id, name))
    click.echo(f"Renamed {client_id} to {name!r}.")


@clients.command("revoke")
@click.argument("client_id")
def revoke(client_id: str) -> None:
    """Revoke a client: no new tokens, and its tokens stop working within seconds."""
    run_storage(lambda storage: storage.clients.revoke(client_id))
    click.echo(f"Revoked {client_id}.")


@clients.command("delete")
@click.argument("client_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(client_id: str, yes: bool) -> None:
    """Delete a client for good."""
    if not yes:
        click.confirm(f"Delete client {client_id}? This cannot be undone", abort=True)
    run_storage(lambda storage: storage.clients.delete(client_id))
    click.echo(f"Deleted {client_id}.")

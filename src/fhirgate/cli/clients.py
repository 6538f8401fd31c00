"""``fhirgate clients …``: register and manage API keys (clients)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from fhirgate.cli.context import Storage, emit, run_storage
from fhirgate.domain.clients import AuthMethod, Client
from fhirgate.oauth.client_auth import SecretHasher
from fhirgate.oauth.registration import (
    ClientKeys,
    RegistrationError,
    keys_from_pem,
    validate_keys,
    validate_scope,
    validate_token_lifetime,
)
from fhirgate.storage.repos import DEFAULT_ORG_SLUG

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
        "token_lifetime": client.token_lifetime,
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
    auth_method: str,
    jwks_file: Path | None,
    jwks_url: str | None,
    pem_file: Path | None,
    kid: str | None,
    allow_insecure: bool,
) -> ClientKeys:
    given = sum(x is not None for x in (jwks_file, jwks_url, pem_file))
    if AuthMethod(auth_method).uses_secret:
        if given:
            raise click.UsageError(f"a {auth_method} client has a secret, not keys")
        return ClientKeys(None, None)
    if given != 1:
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
    "--token-lifetime",
    type=int,
    help="Access-token lifetime in seconds (default: 300 for private_key_jwt, "
    "FHIRGATE_SECRET_TOKEN_TTL (3600) for secret clients; at most 300 / 86400).",
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
    token_lifetime: int | None,
    org: str,
    env: str,
    as_json: bool,
) -> None:
    """Register a client and print its client_id (and, for a secret client, its secret: the
    only time it is shown)."""

    async def job(storage: Storage) -> tuple[Client, str | None]:
        keys = _read_keys(
            auth_method,
            jwks_file,
            jwks_url,
            public_key_file,
            kid,
            storage.settings.allow_insecure_jwks,
        )
        try:
            allowed = validate_scope(scope)
            lifetime = validate_token_lifetime(auth_method, token_lifetime)
        except RegistrationError as exc:
            raise click.ClickException(str(exc)) from exc
        secret = SecretHasher.generate() if AuthMethod(auth_method).uses_secret else None
        secret_hash = storage.hasher().hash(secret) if secret is not None else None
        if org == DEFAULT_ORG_SLUG:
            environment = await storage.organizations.default_environment(env)
        else:
            environment = await storage.organizations.environment(org, env)
        client = await storage.clients.create(
            environment=environment,
            name=name,
            auth_method=auth_method,
            scope=allowed,
            jwks=keys.jwks,
            jwks_url=keys.jwks_url,
            secret_hash=secret_hash,
            token_lifetime=lifetime,
        )
        await storage.audit.record("client.created", client_id=client.client_id, actor="cli")
        return client, secret

    client, secret = run_storage(job)
    info = describe(client)
    text = f"Created client {client.client_id}\n\n{_text(client)}"
    if secret is not None:
        info["client_secret"] = secret
        text += _secret_text(client, secret)
    emit(info, as_json, text)


def _secret_text(client: Client, secret: str) -> str:
    names = ("apiKey", "secret") if client.auth_method == AuthMethod.LEGACY_API_KEY else None
    label = f"{names[1]} (the {names[0]} is the client id)" if names else "client_secret"
    return (
        f"\n\n{label}: {secret}\n"
        "Store it now: it is not stored anywhere in readable form and cannot be shown again."
    )


@clients.command("rotate-secret")
@click.argument("client_id")
@click.option(
    "--grace",
    type=click.IntRange(0, 30 * 86_400),
    default=0,
    show_default=True,
    help="Seconds the old secret keeps working (0: it stops working now).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def rotate_secret(client_id: str, grace: int, as_json: bool) -> None:
    """Issue a new secret for a secret client and print it (shown once)."""

    async def job(storage: Storage) -> tuple[Client, str]:
        client = await _get(storage, client_id)
        if not AuthMethod(client.auth_method).uses_secret:
            raise click.ClickException(
                f"client {client_id} has no secret: it authenticates with {client.auth_method}"
            )
        secret = SecretHasher.generate()
        await storage.clients.rotate_secret(client_id, storage.hasher().hash(secret), grace)
        await storage.audit.record(
            "client.secret_rotated", client_id=client_id, actor="cli", detail=f"grace={grace}"
        )
        return await _get(storage, client_id), secret

    client, secret = run_storage(job)
    old = (
        f"the old one works for {grace} more seconds"
        if grace
        else "the old one no longer works (running servers see this within 5 s)"
    )
    text = f"New secret for {client_id}; {old}.{_secret_text(client, secret)}"
    emit({"client_id": client_id, "client_secret": secret, "grace": grace}, as_json, text)


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

"""``fhirgate token``: get an access token as a client (private_key_jwt)."""

from __future__ import annotations

from pathlib import Path

import click
import httpx

from fhirgate.cli.context import emit, load_settings
from fhirgate.client import OAuthError, build_client_assertion, load_private_key
from fhirgate.client._assertion import token_form
from fhirgate.client._errors import parse_token_response

__all__ = ["token"]


@click.command()
@click.option("--client-id", required=True, help="The client's id.")
@click.option(
    "--private-key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The client's private key (PEM).",
)
@click.option("--kid", required=True, help="The kid of that key as registered.")
@click.option(
    "--alg",
    default="RS384",
    show_default=True,
    type=click.Choice(["RS384", "ES384", "RS256", "ES256", "PS384"]),
)
@click.option(
    "--scope",
    default="system/*.rs",
    show_default=True,
    help="Scopes to ask for, space-separated in one value.",
)
@click.option("--token-url", help="Token endpoint (default: FHIRGATE_PUBLIC_URL/oauth2/token).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole token response as JSON.")
def token(
    client_id: str,
    key_file: Path,
    kid: str,
    alg: str,
    scope: str,
    token_url: str | None,
    as_json: bool,
) -> None:
    """Get an access token with a signed client assertion and print it."""
    url = token_url or load_settings().url("/oauth2/token")
    try:
        key = load_private_key(key_file.read_bytes())
        assertion = build_client_assertion(
            client_id=client_id, token_url=url, private_key=key, kid=kid, alg=alg
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        answer = httpx.post(url, data=token_form(assertion, scope), timeout=10)
        parse_token_response(answer.status_code, answer.content)
    except OAuthError as exc:
        raise click.ClickException(str(exc)) from exc
    except httpx.HTTPError as exc:
        raise click.ClickException(f"could not reach {url}: {exc.__class__.__name__}") from exc
    response = answer.json()
    emit(response, as_json, str(response["access_token"]))

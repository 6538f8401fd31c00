"""``fhirgate token``: get an access token as a client (private_key_jwt or a client secret)."""

from __future__ import annotations

from pathlib import Path

import click
import httpx

from fhirgate.cli.context import emit, load_settings
from fhirgate.client import OAuthError, build_client_assertion, load_private_key
from fhirgate.client._assertion import token_form
from fhirgate.client._errors import parse_token_response
from fhirgate.client._secret import basic_authorization

__all__ = ["token"]


def _assertion_form(
    key_file: Path, kid: str | None, alg: str, client_id: str, url: str
) -> dict[str, str]:
    if kid is None:
        raise click.UsageError("--kid is required with --private-key")
    try:
        key = load_private_key(key_file.read_bytes())
        assertion = build_client_assertion(
            client_id=client_id, token_url=url, private_key=key, kid=kid, alg=alg
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    return token_form(assertion, None)


@click.command()
@click.option("--client-id", required=True, help="The client's id.")
@click.option(
    "--private-key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The client's private key (PEM), for a private_key_jwt client.",
)
@click.option("--kid", help="The kid of that key as registered.")
@click.option(
    "--alg",
    default="RS384",
    show_default=True,
    type=click.Choice(["RS384", "ES384", "RS256", "ES256", "PS384"]),
)
@click.option(
    "--client-secret",
    envvar="FHIRGATE_CLIENT_SECRET",
    help="The client's secret, for a secret client (sent with HTTP Basic). Prefer the "
    "FHIRGATE_CLIENT_SECRET environment variable: a command line is visible to other users.",
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
    key_file: Path | None,
    kid: str | None,
    alg: str,
    client_secret: str | None,
    scope: str,
    token_url: str | None,
    as_json: bool,
) -> None:
    """Get an access token (client credentials) and print it: with a signed client assertion
    (--private-key, --kid) or with a client secret (--client-secret, HTTP Basic)."""
    if (key_file is None) == (client_secret is None):
        raise click.UsageError("give either --private-key (and --kid) or --client-secret")
    url = token_url or load_settings().url("/oauth2/token")
    headers = {}
    if key_file is not None:
        form = _assertion_form(key_file, kid, alg, client_id, url)
    else:
        form = {"grant_type": "client_credentials"}
        headers["Authorization"] = basic_authorization(client_id, client_secret or "")
    if scope:
        form["scope"] = scope
    try:
        answer = httpx.post(url, data=form, headers=headers, timeout=10)
        parse_token_response(answer.status_code, answer.content)
    except OAuthError as exc:
        raise click.ClickException(str(exc)) from exc
    except httpx.HTTPError as exc:
        raise click.ClickException(f"could not reach {url}: {exc.__class__.__name__}") from exc
    response = answer.json()
    emit(response, as_json, str(response["access_token"]))

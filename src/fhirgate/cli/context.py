"""What every command shares: settings, a database opened on demand, output helpers, errors."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from fhirgate.config import Settings
from fhirgate.domain.errors import Conflict, NotFound
from fhirgate.oauth.client_auth import SecretHasher
from fhirgate.oauth.keys import SecretMismatch
from fhirgate.server_secret import server_secret
from fhirgate.storage.audit import AuditLog, CheckpointFile
from fhirgate.storage.audit_chain import audit_keys
from fhirgate.storage.database import Database
from fhirgate.storage.db import upgrade
from fhirgate.storage.repos import ClientRepo, OrganizationRepo

__all__ = ["Storage", "emit", "load_settings", "run_storage"]

_T = TypeVar("_T")


class Storage:
    """Repositories over a freshly migrated database, for one command."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database = Database(settings.database_url)
        self.engine = self.database.engine
        self.statements = self.database.statements
        self.organizations = OrganizationRepo(self.engine)
        self.clients = ClientRepo(self.engine)

    @functools.cached_property
    def audit(self) -> AuditLog:
        """The audit log, its rows signed under the server secret (needed to write them)."""
        try:
            keys = audit_keys(server_secret(self.settings))
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from exc
        return AuditLog(self.engine, keys, checkpoints=CheckpointFile.under(self.settings.var_dir))

    async def analyze(self) -> None:
        """Refresh the query planner's statistics (``ANALYZE``) after a bulk load, so that the
        first searches are planned for the data rather than for empty tables."""
        await self.database.analyze()

    def hasher(self) -> SecretHasher:
        """The client-secret hasher under the server secret (the same on every replica)."""
        try:
            return SecretHasher(server_secret(self.settings))
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from exc


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid FHIRGATE_* configuration:\n{exc}") from exc


def run_storage(job: Callable[[Storage], Awaitable[_T]]) -> _T:
    """Migrate the database, run ``job`` against it, and turn domain errors into exit code 1."""
    settings = load_settings()

    async def main() -> _T:
        storage = Storage(settings)
        try:
            return await job(storage)
        finally:
            await storage.database.aclose()

    try:
        upgrade(settings.database_url)
        return _run(main())
    except (NotFound, Conflict, SecretMismatch, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    except (DBAPIError, OSError) as exc:
        raise click.ClickException(
            f"the database is unreachable: {exc.__class__.__name__}"
        ) from exc


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coro)


def emit(data: dict[str, Any] | list[dict[str, Any]], as_json: bool, text: str) -> None:
    """Print ``data`` as JSON for scripts, or ``text`` for people."""
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text)

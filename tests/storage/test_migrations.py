"""The migrations build exactly the schema the models describe, on every backend: a model
changed without its migration (or the other way round) fails here, not in production."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from fhirgate.config import Settings
from fhirgate.storage.db import create_engine, upgrade_async
from fhirgate.storage.models import Base


async def test_migrated_schema_matches_the_models(backend_settings: Settings) -> None:
    await upgrade_async(backend_settings.database_url)
    engine = create_engine(backend_settings.database_url)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()
    assert differences == []

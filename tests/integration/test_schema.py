"""The migrations make exactly the schema the models describe, on SQLite and PostgreSQL:
a column added to a model without its migration (or the other way round) fails here,
not in production at the first write."""

from __future__ import annotations

import importlib
import pkgutil

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

import provisioner.store as store
from provisioner.store.models import Base


def test_the_migrated_schema_is_the_models_schema(db_url: str) -> None:
    for module in pkgutil.iter_modules(store.__path__):  # every module that declares tables
        importlib.import_module(f"{store.__name__}.{module.name}")
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}),
                                    Base.metadata)
    finally:
        engine.dispose()
    assert diff == []

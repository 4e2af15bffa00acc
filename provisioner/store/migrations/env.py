from __future__ import annotations

from alembic import context

from provisioner.store import domains as _domains  # noqa: F401 - registers the domains table
from provisioner.store import hosting as _hosting  # noqa: F401 - hosting tables
from provisioner.store import lifecycle as _lifecycle  # noqa: F401 - lifecycle clock tables
from provisioner.store import tls as _tls  # noqa: F401 - TLS tables for autogenerate
from provisioner.store import vps as _vps  # noqa: F401 - VPS hosts, machines, address leases
from provisioner.store import vps_access as _vps_access  # noqa: F401 - VPS root access, sealed
from provisioner.store import vps_usage as _vps_usage  # noqa: F401 - VPS usage samples
from provisioner.store import webhooks as _webhooks  # noqa: F401 - PayPal transmission ids
from provisioner.store.db import engine_for
from provisioner.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url
    engine = engine_for(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

"""A VPS's root password between its creation and its one-time link.

``vps.create`` needs the same password however often it runs: a run killed after the
driver made the machine (whose image holds the password, hashed) and before the link
was held must not hand the customer a second password the machine does not know. So the
password is made once per machine, here, before the driver is called, and kept sealed
(Fernet; ``vps_access_key`` or ``key_dir/vps-fernet.key``) until the run that holds the
step seals it into the customer's one-time link; then this copy is wiped (``sealed``
blanked, ``issued_at`` set) in the same transaction. The database alone never reveals it.
"""

from __future__ import annotations

import secrets
import string
from datetime import datetime

from cryptography.fernet import InvalidToken, MultiFernet
from sqlalchemy import ForeignKey, LargeBinary, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from provisioner.config import Settings
from provisioner.errors import ConfigurationError
from provisioner.keyfiles import fernet_from
from provisioner.store.models import Base, UtcDateTime

KEY_FILE = "vps-fernet.key"
WIPED = b"-"
_ALPHABET = string.ascii_letters + string.digits


class VpsRootAccess(Base):
    __tablename__ = "vps_root_access"
    vps_id: Mapped[int] = mapped_column(ForeignKey("vps_machines.id"), primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)  # Fernet(vps key); WIPED once issued
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    issued_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


def vps_fernet(settings: Settings) -> MultiFernet:
    return fernet_from(settings.vps_access_key, settings.effective_key_dir / KEY_FILE, "vps_access_key")


def new_password(length: int = 24) -> str:
    """A root password: letters and digits (no shell or config quoting matters), ~143 bits."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def root_password(s: Session, vps_id: int, fernet: MultiFernet, now: datetime) -> str | None:
    """The machine's root password, made and sealed on the first call (an INSERT that a
    concurrent first call loses without error: both then read the one that won). None once
    the password was issued (its copy here is wiped)."""
    insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    s.execute(insert(VpsRootAccess).values(
        vps_id=vps_id, sealed=fernet.encrypt(new_password().encode()), created_at=now,
    ).on_conflict_do_nothing(index_elements=["vps_id"]))
    row = s.execute(select(VpsRootAccess).where(VpsRootAccess.vps_id == vps_id)).scalar_one()
    if row.issued_at is not None:
        return None
    try:
        return fernet.decrypt(row.sealed).decode()
    except InvalidToken:
        raise ConfigurationError(f"VPS {vps_id}: its sealed root password does not open with "
                                 "vps_access_key (a rotated-out key?)") from None


def mark_issued(s: Session, vps_id: int, now: datetime) -> None:
    """The password is in the customer's link now: wipe this copy."""
    row = s.get(VpsRootAccess, vps_id)
    if row is not None and row.issued_at is None:
        row.sealed, row.issued_at = WIPED, now


def reseal(s: Session, vps_id: int, fernet: MultiFernet, now: datetime) -> None:
    """A reinstall: a new root password, made and sealed now (the machine's earlier one
    stops mattering with its old disk), until the reinstall's link holds it."""
    row = s.get(VpsRootAccess, vps_id)
    sealed = fernet.encrypt(new_password().encode())
    if row is None:
        s.add(VpsRootAccess(vps_id=vps_id, sealed=sealed, created_at=now, issued_at=None))
    else:
        row.sealed, row.created_at, row.issued_at = sealed, now, None


def issued(s: Session, vps_id: int) -> bool:
    row = s.get(VpsRootAccess, vps_id)
    return row is not None and row.issued_at is not None

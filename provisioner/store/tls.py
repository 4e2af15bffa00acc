"""Certificates and ACME accounts. Private keys are stored encrypted (Fernet).

The key comes from the setting ``tls_key_encryption_key``; when it is empty (the
embedded default) one is generated once into ``key_dir/tls-fernet.key`` (mode 0600).
Several keys may be given comma-separated: the first encrypts, all decrypt (rotation).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import InvalidToken, MultiFernet
from sqlalchemy import JSON, ForeignKey, Index, Integer, LargeBinary, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from provisioner.config import Settings
from provisioner.errors import ConfigurationError
from provisioner.keyfiles import fernet_from
from provisioner.store.models import Base, UtcDateTime
from provisioner.timeutil import utcnow

KEY_FILE = "tls-fernet.key"


class TlsCertificate(Base):
    """One issued certificate. The newest row per `primary_name` is the deployed one."""

    __tablename__ = "tls_certificates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service_id: Mapped[int | None] = mapped_column(ForeignKey("services.id"))
    primary_name: Mapped[str] = mapped_column(String(253))
    names: Mapped[list[Any]] = mapped_column(JSON)
    serial: Mapped[str] = mapped_column(String(64))
    not_before: Mapped[datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[datetime] = mapped_column(UtcDateTime)
    chain_pem: Mapped[str] = mapped_column(Text)
    key_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    challenges: Mapped[dict[str, Any]] = mapped_column(JSON)
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime)
    deployed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    __table_args__ = (
        Index("ix_tls_certificates_name", "primary_name", "issued_at"),
        Index("ix_tls_certificates_not_after", "not_after"),
    )


class AcmeAccount(Base):
    """The ACME account key per CA directory (encrypted) and its account URL."""

    __tablename__ = "acme_accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    directory: Mapped[str] = mapped_column(String(500), unique=True)
    key_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    account_uri: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


def fernet_for(settings: Settings) -> MultiFernet:
    return fernet_from(settings.tls_key_encryption_key, settings.effective_key_dir / KEY_FILE,
                       "tls_key_encryption_key", legacy=Path(settings.data_dir) / KEY_FILE)


def decrypt(fernet: MultiFernet, token: bytes) -> bytes:
    try:
        return fernet.decrypt(token)
    except InvalidToken as exc:
        raise ConfigurationError("a stored private key does not decrypt with tls_key_encryption_key") from exc


def latest_certificate(s: Session, primary_name: str) -> TlsCertificate | None:
    return s.execute(
        select(TlsCertificate).where(TlsCertificate.primary_name == primary_name)
        .order_by(TlsCertificate.issued_at.desc(), TlsCertificate.id.desc()).limit(1)
    ).scalar_one_or_none()


def save_certificate(s: Session, fernet: MultiFernet, *, primary_name: str, names: list[str], serial: int,
                     not_before: datetime, not_after: datetime, chain_pem: bytes, key_pem: bytes,
                     challenges: dict[str, str], service_id: int | None,
                     deployed_at: datetime | None) -> TlsCertificate:
    row = TlsCertificate(
        service_id=service_id, primary_name=primary_name, names=names, serial=f"{serial:x}",
        not_before=not_before, not_after=not_after, chain_pem=chain_pem.decode(),
        key_encrypted=fernet.encrypt(key_pem), challenges=challenges, issued_at=utcnow(),
        deployed_at=deployed_at,
    )
    s.add(row)
    s.flush()
    return row


def due_for_renewal(s: Session, before: datetime) -> list[TlsCertificate]:
    """The newest certificate of each name, where it expires before `before`."""
    rows = s.execute(select(TlsCertificate).where(TlsCertificate.not_after < before)
                     .order_by(TlsCertificate.not_after)).scalars()
    out = []
    for row in rows:
        latest = latest_certificate(s, row.primary_name)
        if latest is not None and latest.id == row.id:
            out.append(row)
    return out


def account_key(s: Session, fernet: MultiFernet, directory: str, generate: Any) -> bytes:
    """The account key for a CA directory; generated (by `generate()`) and stored once."""
    row = s.execute(select(AcmeAccount).where(AcmeAccount.directory == directory)).scalar_one_or_none()
    if row is None:
        row = AcmeAccount(directory=directory, key_encrypted=fernet.encrypt(generate()), created_at=utcnow())
        s.add(row)
        s.flush()
    return decrypt(fernet, row.key_encrypted)

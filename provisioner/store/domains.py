"""Domain registrations as we know them (the registry is the truth; this is our record).

One row per domain service: the registry's ROID and sponsor, the contact handles sent to
the registry, the name servers, the expiry the registry answered, the WHOIS privacy flag,
and what the provider keeps apart and never sends to a registry (the managing user and
the payer). A transfer code from the customer is kept only encrypted (Fernet), and only
until the transfer is done.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Date, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from provisioner.store.models import Base, UtcDateTime


class DomainRecord(Base):
    __tablename__ = "domains"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), unique=True)
    name: Mapped[str] = mapped_column(String(253), index=True)
    tld: Mapped[str] = mapped_column(String(63))
    status: Mapped[str] = mapped_column(String(24), default="pending")
    roid: Mapped[str | None] = mapped_column(String(100))
    sponsor: Mapped[str | None] = mapped_column(String(32))
    registrant: Mapped[str | None] = mapped_column(String(16))
    contacts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    nameservers: Mapped[list[Any]] = mapped_column(JSON, default=list)
    statuses: Mapped[list[Any]] = mapped_column(JSON, default=list)
    privacy: Mapped[bool] = mapped_column(Boolean, default=True)
    # kept by the provider, never sent to a registry (RULES "Domains", seed 000)
    manager: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    payer: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    registered_on: Mapped[date | None] = mapped_column(Date)
    expires_on: Mapped[date | None] = mapped_column(Date, index=True)
    transfer_auth: Mapped[bytes | None] = mapped_column(LargeBinary)
    detail: Mapped[str | None] = mapped_column(Text)
    # a transforming registry command in flight: {"step", "op", "from"}; observed on re-run
    pending: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # what we did at the registry for an unpaid term (domain.tld_profiles): deleted |
    # not_renewing | lapsed | restored | withdrawn, and on which day
    registry_action: Mapped[str | None] = mapped_column(String(24))
    registry_action_on: Mapped[date | None] = mapped_column(Date)
    # the first day the registry showed name servers (.si: "activated", no refund after)
    activated_on: Mapped[date | None] = mapped_column(Date)
    # a withdrawn registration the customer is to be refunded for (ops / the withdrawal)
    refund_due: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

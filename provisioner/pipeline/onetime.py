"""One-time links a customer opens from an e-mail (the access data, the migration form).

Shared by every kind of link: the token (random, 256 bits, only its SHA-256 stored),
the claim (one conditional UPDATE: unused and not expired; of concurrent requests
exactly one gets the row back, on SQLite and PostgreSQL alike) and, for the pages, the
link's state and its customer's language and brand. A link table has the columns
``token_sha256`` (unique), ``service_id``, ``expires_at`` and ``used_at``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, sessionmaker

from provisioner.domain.policy import get_brand
from provisioner.errors import InvalidInput
from provisioner.store.db import transaction
from provisioner.store.models import Customer, Order, Service

LinkState = Literal["valid", "used", "expired", "unknown"]

_WHY = {
    "unknown": "this link is not valid",
    "used": "this link was already used; ask for {what}",
    "expired": "this link has expired; ask for {what}",
}


class LinkUnusable(InvalidInput):
    """The link cannot be used: ``reason`` is ``unknown``, ``used`` or ``expired``;
    ``what`` the customer may ask for instead."""

    def __init__(self, reason: LinkState, what: str = "a new link") -> None:
        super().__init__(_WHY.get(reason, _WHY["unknown"]).format(what=what))
        self.reason = reason


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def checked_digest(token: object) -> str:
    """The stored form of ``token``; LinkUnusable("unknown") for anything that cannot be one."""
    if not isinstance(token, str) or not 20 <= len(token) <= 100 or not token.isascii():
        raise LinkUnusable("unknown")
    return token_hash(token)


def claim(s: Session, model: Any, digest: str, now: datetime, *returning: Any) -> Row[Any] | None:
    """In ``s``: mark the link ``digest`` used if it is unused and not expired; its
    ``id``, ``service_id`` and ``returning`` columns, or None when it cannot be claimed."""
    return s.execute(
        update(model)
        .where(model.token_sha256 == digest, model.used_at.is_(None), model.expires_at > now)
        .values(used_at=now)
        .returning(model.id, model.service_id, *returning)
        .execution_options(synchronize_session=False)
    ).first()


def state_of(s: Session, model: Any, digest: str, now: datetime) -> tuple[LinkState, int | None]:
    """Whether the link ``digest`` can be used, and its service."""
    row = s.execute(
        select(model.used_at, model.expires_at, model.service_id).where(model.token_sha256 == digest)
    ).first()
    if row is None:
        return "unknown", None
    if row.used_at is not None:
        return "used", row.service_id
    if row.expires_at <= now:
        return "expired", row.service_id
    return "valid", row.service_id


def refuse(s: Session, model: Any, digest: str, now: datetime, what: str = "a new link") -> LinkUnusable:
    """Why the link ``digest`` could not be claimed (after `claim` returned None)."""
    state, _ = state_of(s, model, digest, now)
    return LinkUnusable("unknown" if state == "valid" else state, what)


@dataclass(frozen=True)
class LinkOwner:
    """What a page needs to know of a link before anything is shown: whether it can be
    used, and its customer's language and brand (None for an unknown link)."""

    state: LinkState
    service_id: int | None = None
    lang: str | None = None
    brand: str | None = None


def owner_of(factory: sessionmaker[Session], model: Any, token: str, now: datetime) -> LinkOwner:
    try:
        digest = checked_digest(token)
    except LinkUnusable:
        return LinkOwner("unknown")
    with transaction(factory) as s:
        state, service_id = state_of(s, model, digest, now)
        if service_id is None:
            return LinkOwner("unknown")
        row = s.execute(
            select(Customer.lang, Order.brand)
            .join(Service, Service.customer_id == Customer.id)
            .join(Order, Order.id == Service.order_id)
            .where(Service.id == service_id)
        ).first()
    if row is None:
        return LinkOwner(state, service_id)
    return LinkOwner(state, service_id, row.lang, row.brand)


def brand_context(s: Session, order_id: int) -> dict[str, Any]:
    """The brand of order ``order_id`` as a mail or page names it (`BrandPolicy`):
    ``company`` (its display name) and ``brand`` (name, contacts, web site, colour)."""
    order = s.get(Order, order_id)
    policy = get_brand(order.brand if order is not None else "fcb")
    return {
        "company": policy.display_name or policy.name,
        "brand": {
            "code": policy.code,
            "name": policy.display_name or policy.name,
            "legal_name": policy.name,
            "support_email": policy.support_email,
            "support_phone": policy.support_phone,
            "website_url": policy.website_url,
            "colour": policy.colour,
        },
    }

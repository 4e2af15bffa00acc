"""The data-residency check at start-up (``serve``, ``worker``, ``beat``): every place
that keeps customers' personal data must be in a country ``allowed_countries`` admits,
or the process refuses to start with a ConfigurationError naming the node or setting.

Checked: every hosting node and every backup host (their ``country``; one registered
without a country counts as ``node_country_default``), the SMTP relay
(``smtp_relay_country``), and any other storage place a caller hands in as (label,
country) pairs.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.config import Settings
from provisioner.domain.residency import is_allowed, parse_allowed
from provisioner.errors import ConfigurationError, InvalidInput
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingNode
from provisioner.store.models import BackupHost


def residency_violations(settings: Settings, places: Iterable[tuple[str, str | None]]) -> list[str]:
    """The places (label, country) outside ``allowed_countries``, as messages."""
    try:
        allowed = parse_allowed(settings.allowed_countries)
    except InvalidInput as exc:
        raise ConfigurationError(f"setting allowed_countries: {exc}") from exc
    bad = []
    for label, country in places:
        where = country or ""
        try:
            ok = is_allowed(where, allowed)
        except InvalidInput:
            ok = False
        if not ok:
            bad.append(f"{label} is in {where or 'no known country'!s}")
    return bad


def check_residency(settings: Settings, factory: sessionmaker[Session],
                    extra: Iterable[tuple[str, str | None]] = ()) -> None:
    """Raise ConfigurationError unless every node, every backup host, the SMTP relay and
    ``extra`` ((label, country) pairs) are where ``allowed_countries`` allows."""
    places: list[tuple[str, str | None]] = [
        (f"SMTP relay {settings.smtp_host} (setting smtp_relay_country)", settings.smtp_relay_country)]
    with transaction(factory) as s:
        for name, country in s.execute(select(HostingNode.name, HostingNode.country)
                                       .order_by(HostingNode.name)).all():
            places.append((f"node {name}", country or settings.node_country_default))
        for name, country in s.execute(select(BackupHost.name, BackupHost.country)
                                       .order_by(BackupHost.name)).all():
            places.append((f"backup host {name}", country or settings.node_country_default))
    places.extend(extra)
    bad = residency_violations(settings, places)
    if bad:
        raise ConfigurationError(
            f"data residency: allowed_countries is {settings.allowed_countries!r}, but "
            + "; ".join(bad) + ". Move the data, or change the node's country "
            "(`provisioner nodes add NAME --address ... --country XX`) or the setting.")

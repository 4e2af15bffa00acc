"""Imports every capability module, so that their line planners and step handlers
are registered. Import this (not the modules one by one) wherever plans are made
or steps are run."""

from provisioner.pipeline import clock as _clock  # noqa: F401 - renewals, shutdown, staged deletion
from provisioner.pipeline import domains as _domains  # noqa: F401 - domain.register/transfer/renew/nameservers
from provisioner.pipeline import hosting as _hosting  # noqa: F401 - hosting.account, notify.credentials
from provisioner.pipeline import steps  # noqa: F401 - invoice issuance, e-mails, activation
from provisioner.pipeline import tls_dns as _tls_dns  # noqa: F401 - dns.zone, tls.issue, tls items

# Capabilities without line items of their own: ``dns`` gives hosting lines their zone
# (``tls`` is both a line kind and the hosting line's certificate).
EXTRA_KINDS = ("dns",)


def configure(line_kinds: str) -> None:
    """Apply the `line_kinds` setting: "all", or a comma list ("" = none).

    "all" is spelled out (every catalog kind, every registered planner and
    `EXTRA_KINDS`), so the hosting line's zone and certificate are on: they are planned
    only where a setting names them (`tls_dns.hosting_extras`)."""
    from provisioner.domain.catalog import KINDS
    from provisioner.pipeline.plan import enable_line_kinds, planned_kinds

    value = line_kinds.strip()
    if value == "all":
        enable_line_kinds(None)
        enable_line_kinds(sorted(set(KINDS) | planned_kinds() | set(EXTRA_KINDS)))
    else:
        enable_line_kinds([k.strip() for k in value.split(",") if k.strip()])

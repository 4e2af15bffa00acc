"""Imports every capability module, so that their line planners and step handlers
are registered. Import this (not the modules one by one) wherever plans are made
or steps are run."""

from provisioner.pipeline.capabilities import lifecycle as _clock  # noqa: F401 - renewals, shutdown, staged deletion
from provisioner.pipeline.capabilities import domains as _domains  # noqa: F401 - domain.register/transfer/renew/nameservers
from provisioner.pipeline.capabilities import hosting as _hosting  # noqa: F401 - hosting.account, notify.credentials
from provisioner.pipeline.capabilities import billing as steps  # noqa: F401 - invoice issuance, e-mails, activation
from provisioner.pipeline.capabilities import dns_tls as _tls_dns  # noqa: F401 - dns.zone, tls.issue, tls items


def configure(line_kinds: str) -> None:
    """Apply the `line_kinds` setting: "all", or a comma list ("" = none).

    "all" is every line kind, and hosting lines without a zone or a certificate (those
    need a DNS server and a CA): name ``dns`` (no line kind of its own: the hosting
    line's zone) and ``tls`` (a line kind, and the hosting line's certificate) to get
    them, e.g. "all,dns,tls" or "domain,hosting,dns,tls" (`tls_dns.hosting_extras`)."""
    from provisioner.domain.catalog import KINDS
    from provisioner.pipeline.engine.plan import enable_line_kinds, planned_kinds

    kinds = {k.strip() for k in line_kinds.split(",") if k.strip()}
    if "all" not in kinds:
        enable_line_kinds(sorted(kinds))
        return
    enable_line_kinds(None)
    extras = kinds - {"all"}
    if extras:  # spelled out, so that the hosting line sees which extras are on
        enable_line_kinds(sorted(set(KINDS) | planned_kinds() | extras))

"""Imports every capability module, so that their line planners and step handlers
are registered. Import this (not the modules one by one) wherever plans are made
or steps are run."""

from provisioner.pipeline import domains as _domains  # noqa: F401 - domain.register/transfer/renew/nameservers
from provisioner.pipeline import hosting as _hosting  # noqa: F401 - hosting.account, notify.credentials
from provisioner.pipeline import steps  # noqa: F401 - invoice issuance, e-mails, activation
from provisioner.pipeline import tls_dns as _tls_dns  # noqa: F401 - dns.zone, tls.issue, tls items


def configure(line_kinds: str) -> None:
    """Apply the `line_kinds` setting: "all", or a comma list ("" = none)."""
    from provisioner.pipeline.plan import enable_line_kinds

    value = line_kinds.strip()
    enable_line_kinds(None if value == "all" else [k.strip() for k in value.split(",") if k.strip()])

"""The rule for a hosting account's name: the one copy the controller and the nodes share.

The name is the account's system user and group, its MariaDB database and user, its
PHP-FPM pool, systemd slice and unit instance, FTP login and the last part of its
paths, so it is ``[a-z][a-z0-9]{0,31}`` and never a name the node already uses. No
``_`` (a wildcard in MariaDB's database-level grants) and no ``-`` (it nests a systemd
slice under another: ``hosting-a-b.slice`` is a child of ``hosting-a.slice``).

This file is used as it is, in three places:

* the controller: ``provisioner.domain.names`` imports it;
* the role's module: ``roles/hosting_account/module_utils/hosting_names.py`` is a link
  to this file (``from ansible.module_utils.hosting_names import ...``);
* the node's scripts (``hosting-account``, ``hosting-usage``, ``hosting-backup``) import
  it from ``/usr/local/lib/hosting/hosting_names.py``, which roles/hosting_node and
  roles/hosting_account install from the same link.

So it imports nothing of ours and runs on the node's ``python3`` (Debian 12: 3.11).
"""

from __future__ import annotations

import re

ACCOUNT_NAME_MAX_LENGTH = 32
ACCOUNT_NAME_PATTERN = f"[a-z][a-z0-9]{{0,{ACCOUNT_NAME_MAX_LENGTH - 1}}}"
ACCOUNT_NAME_RE = re.compile(ACCOUNT_NAME_PATTERN)

#: Names an account can never have: the node's system users and groups, the services'
#: and the roles' names (``hosting`` is the accounts' group), and names that must not be
#: handed to a customer. Names with ``-`` or ``_`` are listed for completeness; the
#: pattern already refuses them.
RESERVED_ACCOUNT_NAMES = frozenset(
    """
    root admin administrator daemon bin sys sync games man lp mail news uucp proxy www-data
    backup list irc gnats nobody _apt systemd systemd-network systemd-resolve
    systemd-timesync messagebus sshd postfix dovecot dovenull mysql postgres nginx apache
    ftp ftpuser vmail www hosting ansible provisioner operator support abuse postmaster
    hostmaster
    """.split()
)


def account_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be an account's name (a phrase to follow the name), or None."""
    if not isinstance(name, str):
        return f"must be text, not {type(name).__name__}"
    if not ACCOUNT_NAME_RE.fullmatch(name):
        return f"must match {ACCOUNT_NAME_PATTERN}"
    if name in RESERVED_ACCOUNT_NAMES:
        return "is reserved"
    return None


def is_account_name(name: object) -> bool:
    """True when ``name`` can be an account's name."""
    return account_name_problem(name) is None

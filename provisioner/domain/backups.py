"""Backups on a separate backup host (restic): the rules, as pure functions.

* A restic snapshot id is 8 (short) to 64 lower-case hex digits; nothing else is ever
  handed to a node (:func:`validate_snapshot_id`).
* Retention per plan (RULES "data kept in secondary backups"; 001 §11.3 "after a GDPR
  erasure, personal data still sit in backups 30-60 days, then rotated out"): the newest
  snapshot of each of the last N days is kept (``restic forget --keep-daily N``), N per
  plan, never more than the brand's ``gdpr_backup_rotation_days``, so that erased data
  are gone from every nightly backup by :func:`gdpr_backups_gone_by`.
* A node's repository is reached by its own SFTP user (``rn-<node>``, roles/backup_host)
  on the backup host, chrooted to that node's directory: :func:`sftp_user_for`,
  :func:`repository_url` (``sftp:rn-<node>@<host>:/repo``; SSH port 22).
* A failing backup job alerts ops once per failure (:func:`alert_transition`), not on every
  retry; it alerts again only after it has succeeded in between.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from types import MappingProxyType

from provisioner.domain.policy import BrandPolicy
from provisioner.errors import InvalidInput

SNAPSHOT_RE = re.compile(r"[0-9a-f]{8,64}")
_NODE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,27}")
_HOST_RE = re.compile(r"[A-Za-z0-9.-]{1,253}")
_SUBSET_RE = re.compile(r"([1-9][0-9]{0,3}/[1-9][0-9]{0,3}|[1-9][0-9]?%)")  # as roles/hosting_backup

# How many daily snapshots each hosting plan keeps (restic forget --keep-daily N).
KEEP_DAILY: Mapping[str, int] = MappingProxyType({"mega": 7, "giga5": 14, "giga10": 14, "giga15": 30})
DEFAULT_KEEP_DAILY = 7
# The repository's path inside the node's SFTP chroot on the backup host (roles/backup_host).
REPOSITORY_PATH = "/repo"
# restic check --read-data-subset: a weekly 1/N of the packs, so every pack is read over N weeks
DEFAULT_CHECK_SUBSET = "10%"


def validate_snapshot_id(value: object) -> str:
    """A restic snapshot id (8..64 lower-case hex), or InvalidInput."""
    if not isinstance(value, str) or not SNAPSHOT_RE.fullmatch(value):
        raise InvalidInput(f"snapshot id {value!r} must be 8 to 64 lower-case hex digits")
    return value


def validate_check_subset(value: str) -> str:
    """``n/t`` or ``p%`` (1-99) for ``restic check --read-data-subset``, or InvalidInput."""
    if not isinstance(value, str) or not _SUBSET_RE.fullmatch(value):
        raise InvalidInput(f"read-data subset {value!r} must be n/t or p% (1-99)")
    if "/" in value:
        n, t = (int(x) for x in value.split("/"))
        if n > t:
            raise InvalidInput(f"read-data subset {value!r}: n must not exceed t")
    return value


def keep_daily(plan: str | None, policy: BrandPolicy) -> int:
    """The daily snapshots an account of ``plan`` keeps: the plan's number, capped by the
    brand's GDPR rotation so erased data rotate out in time."""
    wanted = KEEP_DAILY.get(plan or "", DEFAULT_KEEP_DAILY)
    return max(1, min(wanted, policy.gdpr_backup_rotation_days))


def retention_table(policy: BrandPolicy) -> dict[str, int]:
    """``{plan: keep_daily}`` for the node converge (``hosting_node_backup_retention``)."""
    return {plan: keep_daily(plan, policy) for plan in KEEP_DAILY}


def gdpr_backups_gone_by(erased_on: date, policy: BrandPolicy) -> date:
    """The day by which data erased on ``erased_on`` are gone from every backup: the
    brand's rotation (``gdpr_backup_rotation_days``). The nightly ``forget --keep-daily N
    --prune`` with N <= that many days makes it true: the last snapshot holding the data
    is taken the night of the erasure and forgotten N days later."""
    return erased_on + timedelta(days=policy.gdpr_backup_rotation_days)


USER_PREFIX = "rn-"  # roles/backup_host's backup_host_user_prefix


def sftp_user_for(node: str) -> str:
    """The node's SFTP user on the backup host: ``rn-<node>`` (at most 31 characters)."""
    if not isinstance(node, str) or not _NODE_RE.fullmatch(node):
        raise InvalidInput(f"node {node!r}: a backup repository needs a node name of "
                           f"[a-z0-9][a-z0-9-]{{0,27}} (its SFTP user is {USER_PREFIX}<node>)")
    return f"{USER_PREFIX}{node}"


def repository_url(user: str, address: str) -> str:
    """The restic URL of a node's repository on the backup host (SFTP on port 22, chrooted:
    the repository is ``/repo`` inside the node's chroot)."""
    if not _HOST_RE.fullmatch(address or ""):
        raise InvalidInput(f"backup host address {address!r} must be a host name or an IPv4 address")
    return f"sftp:{user}@{address}:{REPOSITORY_PATH}"


def nightly_on_calendar(window: tuple[str, str], tz: str, after_min: int = 30) -> str:
    """The node timer's OnCalendar for the nightly run: ``after_min`` minutes after the
    maintenance window opens, in the window's own zone (systemd reads the zone)."""
    hh, mm = (int(x) for x in window[0].split(":"))
    total = (hh * 60 + mm + after_min) % (24 * 60)
    return f"*-*-* {total // 60:02d}:{total % 60:02d}:00 {tz}"


@dataclass(frozen=True)
class AlertState:
    """What a job's outcome does to its record: ``alert`` ops now, and the new flags."""

    alert: bool
    ok: bool
    alerted: bool


def alert_transition(ok: bool, was_alerted: bool) -> AlertState:
    """Once per failure: the first failure alerts; further failures (retries) do not; a
    success clears the flag so that the next failure alerts again."""
    if ok:
        return AlertState(False, True, False)
    return AlertState(not was_alerted, False, True)


__all__ = ["AlertState", "DEFAULT_CHECK_SUBSET", "KEEP_DAILY", "REPOSITORY_PATH", "USER_PREFIX",
           "alert_transition", "gdpr_backups_gone_by", "keep_daily", "nightly_on_calendar", "repository_url",
           "retention_table", "sftp_user_for", "validate_check_subset", "validate_snapshot_id"]

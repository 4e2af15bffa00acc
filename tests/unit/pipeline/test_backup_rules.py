"""The rules of backups on a backup host (`domain.backups`), pure: retention per plan
within the GDPR rotation, the date erased data are gone from the backups, the repository
URL and SFTP user per node, the nightly timer inside the window, alerts once per failure."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from provisioner.domain.backups import (
    KEEP_DAILY,
    alert_transition,
    gdpr_backups_gone_by,
    keep_daily,
    nightly_on_calendar,
    repository_url,
    retention_table,
    sftp_user_for,
    validate_check_subset,
    validate_snapshot_id,
)
from provisioner.domain.maintenance import in_window
from provisioner.domain.policy import BRANDS, get_brand
from provisioner.errors import InvalidInput

FCB = get_brand("fcb")


@pytest.mark.parametrize("brand", sorted(BRANDS))
def test_no_plan_keeps_backups_longer_than_the_brands_gdpr_rotation(brand: str) -> None:
    policy = get_brand(brand)
    assert max(retention_table(policy).values()) <= policy.gdpr_backup_rotation_days


def test_a_brand_with_a_short_rotation_caps_every_plan() -> None:
    short = replace(FCB, gdpr_backup_rotation_days=10)
    assert retention_table(short) == {"mega": 7, "giga5": 10, "giga10": 10, "giga15": 10}
    assert keep_daily("unknown-plan", FCB) == 7 and keep_daily(None, FCB) == 7
    assert retention_table(FCB) == dict(KEEP_DAILY)


def test_erased_data_are_gone_from_the_backups_after_the_rotation() -> None:
    assert gdpr_backups_gone_by(date(2026, 3, 1), FCB) == date(2026, 4, 30)  # 60 days (001 §11.3)
    # the longest retention forgets the last snapshot holding the data before that day
    assert date(2026, 3, 1).toordinal() + max(retention_table(FCB).values()) < \
        gdpr_backups_gone_by(date(2026, 3, 1), FCB).toordinal()


@pytest.mark.parametrize(("node", "user"), [("node1", "rn-node1"), ("n-2", "rn-n-2"), ("1a", "rn-1a"),
                                            ("a" * 28, "rn-" + "a" * 28)])
def test_each_node_has_its_own_sftp_user(node: str, user: str) -> None:
    assert sftp_user_for(node) == user
    assert repository_url(user, "backup1.example.net") == f"sftp:{user}@backup1.example.net:/repo"


@pytest.mark.parametrize("node", ["", "Node1", "-x", "a" * 29, "a b", "a/b", "../x", "a;b", "é"])
def test_a_node_name_that_cannot_be_an_sftp_user_is_refused(node: str) -> None:
    with pytest.raises(InvalidInput):
        sftp_user_for(node)


@pytest.mark.parametrize("address", ["", "2001:db8::1", "host;reboot", "a b", "h/x"])
def test_a_backup_host_address_the_node_cannot_use_is_refused(address: str) -> None:
    with pytest.raises(InvalidInput):
        repository_url("rn-node1", address)


@pytest.mark.parametrize("value", ["deadbeef", "0" * 64, "0123456789abcdef"])
def test_snapshot_ids_are_hex(value: str) -> None:
    assert validate_snapshot_id(value) == value


@pytest.mark.parametrize("value", ["deadbee", "0" * 65, "DEADBEEF", "deadbeeg", " deadbeef", "deadbeef\n",
                                   "latest", None, 12345678])
def test_anything_else_is_not_a_snapshot_id(value: object) -> None:
    with pytest.raises(InvalidInput):
        validate_snapshot_id(value)


@pytest.mark.parametrize(("value", "ok"), [("10%", True), ("99%", True), ("100%", False), ("1/7", True),
                                           ("7/7", True),
                                           ("0%", False), ("101%", False), ("8/7", False), ("1/0", False),
                                           ("5", False), ("5%;id", False)])
def test_the_read_data_subset(value: str, ok: bool) -> None:
    if ok:
        assert validate_check_subset(value) == value
    else:
        with pytest.raises(InvalidInput):
            validate_check_subset(value)


@pytest.mark.parametrize("day", [date(2026, 1, 15), date(2026, 7, 15), date(2026, 3, 29), date(2026, 10, 25)])
def test_the_nodes_nightly_timer_fires_inside_the_window_all_year(day: date) -> None:
    spec = nightly_on_calendar(FCB.maintenance_window, "Europe/Ljubljana")
    assert spec == "*-*-* 23:30:00 Europe/Ljubljana"
    at = datetime(day.year, day.month, day.day, 23, 30, tzinfo=ZoneInfo("Europe/Ljubljana")).astimezone(UTC)
    assert in_window(at, FCB.maintenance_window, "Europe/Ljubljana")


def test_a_failure_alerts_once_until_a_success_in_between() -> None:
    outcomes = [True, False, False, False, True, False, True, True, False]
    alerted, flag = [], False
    for ok in outcomes:
        state = alert_transition(ok, flag)
        alerted.append(state.alert)
        flag = state.alerted
    assert alerted == [False, True, False, False, False, True, False, False, True]

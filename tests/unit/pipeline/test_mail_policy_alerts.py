"""The daily quota check tells ops when a node's mail policy failed open (issue 12): once
per growth of the node's count, never for a count it has seen, and again at the next
check when the alert could not be sent. Fake usage reports; the database is a SQLite file."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from provisioner.adapters.hosting.ansible import Target
from provisioner.adapters.hosting.usage import NodeUsage
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingNode, add_node
from tests.helpers import World, make_settings, make_world
from tests.unit.pipeline.fakes import Alerts


class Reports:
    """Meets `ports.UsageReader`: the node's report says ``failures``."""

    def __init__(self) -> None:
        self.failures: int | None = 0

    def __call__(self, node: Target) -> NodeUsage:
        return NodeUsage({}, mail_policy_failures=self.failures,
                         mail_policy_last_error="OperationalError: database is locked")


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def alerts() -> Alerts:
    return Alerts()


@pytest.fixture
def world(sqlite_url: str, tmp_path: Path, reports: Reports, alerts: Alerts) -> World:
    w = make_world(make_settings(tmp_path, sqlite_url, 25, line_kinds="hosting"), usage=reports, alert=alerts)
    with transaction(w.factory) as s:
        add_node(s, "n1", "192.0.2.10", capacity_accounts=10, capacity_disk_mb=100_000)
    return w


def check(world: World) -> dict[str, Any]:
    return world.app.check_quotas(date(2026, 3, 1))


def test_a_node_whose_policy_never_failed_raises_no_alert(world: World, alerts: Alerts) -> None:
    assert check(world)["mail_policy_failures"] == {"n1": {"count": 0, "new": 0}}
    assert alerts.sent == []


def test_ops_are_alerted_once_per_growth_of_the_count(world: World, reports: Reports, alerts: Alerts) -> None:
    reports.failures = 2
    assert check(world)["mail_policy_failures"]["n1"] == {"count": 2, "new": 2}
    assert len(alerts.sent) == 1
    assert "n1" in alerts.sent[0]["detail"] and "2 more time(s)" in alerts.sent[0]["detail"]
    assert "database is locked" in alerts.sent[0]["detail"]
    check(world)
    assert len(alerts.sent) == 1  # the same count: told already
    reports.failures = 5
    check(world)
    assert len(alerts.sent) == 2 and "3 more time(s) (5 in all)" in alerts.sent[1]["detail"]
    reports.failures = 1  # the node's file was reset: taken as it is, no alert
    check(world)
    reports.failures = 2
    check(world)
    assert len(alerts.sent) == 3 and "1 more time(s) (2 in all)" in alerts.sent[2]["detail"]
    with transaction(world.factory) as s:
        assert s.query(HostingNode).one().mail_policy_failures == 2


def test_an_alert_that_could_not_be_sent_is_sent_by_the_next_check(
        world: World, reports: Reports, alerts: Alerts, monkeypatch: Any) -> None:
    reports.failures = 4
    sent = alerts.sent

    def broken(**kw: Any) -> None:
        raise OSError("the SMTP relay is down")

    monkeypatch.setattr(Alerts, "__call__", lambda self, **kw: broken(**kw))
    check(world)
    assert sent == []
    monkeypatch.undo()
    check(world)
    assert len(sent) == 1 and "4 more time(s)" in sent[0]["detail"]


def test_a_node_that_does_not_say_raises_no_alert(world: World, reports: Reports, alerts: Alerts) -> None:
    reports.failures = None
    assert check(world)["mail_policy_failures"] == {}
    assert alerts.sent == []

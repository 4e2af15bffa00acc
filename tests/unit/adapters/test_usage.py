"""The node's usage report (hosting-usage JSON) as AccountUsage values; no node needed."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from provisioner.adapters.hosting import Target
from provisioner.adapters.hosting.usage import AccountUsage, parse_usage, read_usage
from provisioner.errors import StepFailed, TransientError

LIMITS = {"disk_mb": 2000, "database_max_mb": 1024, "mailbox_mb": 1000, "mail_per_hour": 60}

REPORT: dict[str, Any] = {
    "version": 1,
    "generated_at": "2025-01-31T12:00:00Z",
    "errors": [],
    "accounts": {
        "examplesi": {
            "plan": "giga5", "suspended": False, "domains": ["example.si"],
            "home": "/srv/hosting/examplesi", "disk_bytes": 3 * 1024 * 1024, "mail_bytes": 4096,
            "db_bytes": 16384, "limits": LIMITS,
            "over": {"disk": False, "database": False}, "over_quota": False,
        },
        "fullsi": {
            "plan": "mega", "suspended": True, "domains": ["full.si"], "home": "/srv/hosting/fullsi",
            "disk_bytes": 2100 * 1024 * 1024, "mail_bytes": 0, "db_bytes": None,
            "limits": LIMITS, "over": {"disk": True, "database": False}, "over_quota": True,
        },
    },
}


def report(**changes: Any) -> dict[str, Any]:
    """A copy of REPORT with the given fields of account examplesi changed."""
    r = copy.deepcopy(REPORT)
    r["accounts"]["examplesi"].update(changes)
    return r


def test_a_report_becomes_one_usage_per_account() -> None:
    usage = parse_usage(json.dumps(REPORT))
    assert sorted(usage) == ["examplesi", "fullsi"]
    site = usage["examplesi"]
    assert site == AccountUsage(name="examplesi", plan="giga5", disk_bytes=3 * 1024 * 1024,
                                mail_bytes=4096, db_bytes=16384, limits=LIMITS)
    assert site.used_bytes == 3 * 1024 * 1024 + 4096
    assert site.over_quota is False


def test_an_account_over_its_disk_quota_says_so() -> None:
    full = parse_usage(json.dumps(REPORT))["fullsi"]
    assert full.over_disk and not full.over_database
    assert full.over_quota is True
    assert full.suspended is True
    assert full.db_bytes is None  # MariaDB did not answer: unknown, not zero


def test_an_account_over_its_database_cap_says_so() -> None:
    r = report(over={"disk": False, "database": True}, over_quota=True)
    site = parse_usage(json.dumps(r))["examplesi"]
    assert site.over_database and site.over_quota


def test_usage_values_are_frozen() -> None:
    site = parse_usage(json.dumps(REPORT))["examplesi"]
    with pytest.raises(AttributeError):
        site.disk_bytes = 0  # type: ignore[misc]


def test_an_empty_node_has_no_accounts() -> None:
    assert parse_usage(json.dumps({"version": 1, "accounts": {}, "errors": []})) == {}


def test_the_report_carries_how_often_the_mail_policy_failed_open() -> None:
    policy = {"failures": 3, "last_at": "2025-01-31T11:00:00Z",
              "last_error": "OperationalError: database is locked"}
    usage = parse_usage(json.dumps({**REPORT, "mail_policy": policy}))
    assert usage.mail_policy_failures == 3
    assert usage.mail_policy_last_error == "OperationalError: database is locked"
    assert sorted(usage) == ["examplesi", "fullsi"]  # the accounts as before


@pytest.mark.parametrize("policy", [None, {"failures": None, "last_error": ""}])
def test_a_report_that_does_not_say_has_no_failure_count(policy: Any) -> None:
    r = dict(REPORT) if policy is None else {**REPORT, "mail_policy": policy}
    assert parse_usage(json.dumps(r)).mail_policy_failures is None  # unknown, not zero


def test_the_node_script_reports_the_policys_failure_file(tmp_path: Path, monkeypatch: Any) -> None:
    from tests.unit.adapters.node_code import USAGE, load_node_template

    script = load_node_template("hosting_usage", USAGE)
    monkeypatch.setattr(script, "STATE_DIR", str(tmp_path / "accounts"))
    monkeypatch.setattr(script, "POLICY_FAILURES", str(tmp_path / "failures.json"))
    assert script.report(set())["mail_policy"] == {"failures": 0, "last_at": None, "last_error": ""}
    (tmp_path / "failures.json").write_text(json.dumps({"count": 2, "last_at": "t", "last_error": "locked"}))
    out = script.report(set())
    assert out["mail_policy"] == {"failures": 2, "last_at": "t", "last_error": "locked"}
    assert parse_usage(json.dumps(out)).mail_policy_failures == 2
    (tmp_path / "failures.json").write_text("{broken")
    broken = script.report(set())
    assert broken["mail_policy"]["failures"] is None and any("mail policy" in e for e in broken["errors"])


BAD_REPORTS = [
    ("policy not an object", json.dumps({**REPORT, "mail_policy": 3})),
    ("policy failures negative", json.dumps({**REPORT, "mail_policy": {"failures": -1}})),
    ("policy failures as text", json.dumps({**REPORT, "mail_policy": {"failures": "3"}})),
    ("not json", "{accounts"),
    ("not an object", json.dumps([1, 2])),
    ("unknown version", json.dumps({**REPORT, "version": 2})),
    ("no accounts", json.dumps({"version": 1})),
    ("bad account name", json.dumps({"version": 1, "accounts": {"../etc": REPORT["accounts"]["fullsi"]}})),
    ("negative bytes", json.dumps(report(disk_bytes=-1))),
    ("bytes as text", json.dumps(report(mail_bytes="12"))),
    ("bytes as bool", json.dumps(report(disk_bytes=True))),
    ("missing disk bytes", json.dumps(report(disk_bytes=None))),
    ("no limits", json.dumps(report(limits=None))),
    ("limit not a number", json.dumps(report(limits={"disk_mb": "lots"}))),
    ("no over object", json.dumps(report(over=None))),
    ("over flag not a bool", json.dumps(report(over={"disk": "no", "database": False}))),
    ("over_quota disagrees", json.dumps(report(over_quota=True))),
]


@pytest.mark.parametrize("text", [t for _, t in BAD_REPORTS], ids=[w for w, _ in BAD_REPORTS])
def test_a_malformed_report_is_a_failed_step(text: str) -> None:
    with pytest.raises(StepFailed) as exc:
        parse_usage(text)
    assert exc.value.step_key == "hosting.usage"


def test_an_unreachable_node_is_a_transient_error(tmp_path: Path) -> None:
    # A port nothing listens on: the connection is refused at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = tmp_path / "key"
    key.write_text("not used: the connection fails first")
    with pytest.raises(TransientError, match="node n1"):
        read_usage(Target("n1", "127.0.0.1", port=port, throwaway=True), key, timeout_s=5)

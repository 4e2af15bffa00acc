"""A fleet rollout over three real nodes, one of them broken (issue 15): the canary's
result decides, the broken node stops the rollout, the node after it is untouched, and
the JUnit file names the failure. Drift is found in check mode without changing a node.
The batch and window decisions in detail: tests/unit/pipeline/test_fleet.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from provisioner.devstack.hosts.node import up_node
from provisioner.pipeline.usecases import fleet
from provisioner.store.db import session_factory, transaction
from provisioner.store.hosting import add_node
from tests.e2e.nodes import in_parallel, infra_host
from tests.helpers import make_settings

IN_WINDOW = datetime(2027, 1, 12, 0, 30, tzinfo=UTC)  # 01:30 in Ljubljana
MANAGED = "/etc/mysql/mariadb.conf.d/90-hosting.cnf"  # written by the hosting_node role
MARK = "# changed by hand on the node"


@pytest.fixture(scope="module")
def three(hosts: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[Any, Any]]]:
    """Three nodes booted at once from the converged-node image (the rollout converges them)."""
    names = [f"t-fleet-{x}-{os.getpid()}" for x in "abc"]
    ssh = tmp_path_factory.mktemp("fleet-ssh")
    try:
        infos = in_parallel(*[partial(up_node, hosts, name) for name in names])
        yield [(info, infra_host(info, ssh)) for info in infos]
    finally:
        for name in names:
            hosts.down(name)


@pytest.mark.timeout(1200)  # three nodes booted, checked, and two converged
def test_a_broken_node_stops_the_rollout_and_the_canary_decides(three: list[tuple[Any, Any]],
                                                                 sqlite_url: str, tmp_path: Path) -> None:
    (a, host_a), (b, host_b), (c, host_c) = three
    settings = make_settings(tmp_path, sqlite_url, 25, node_ssh_key=str(a.ssh_key))
    factory = session_factory(sqlite_url)
    with transaction(factory) as s:
        for info in (a, b, c):
            add_node(s, info.name, info.address, capacity_accounts=10, capacity_disk_mb=1000,
                     throwaway=True, country="SI")
    for host in (host_a, host_c):  # drift on the canary and on the last node
        host.run(f"printf '%s\\n' '{MARK}' >> {MANAGED}")
    host_b.run("mv /usr/bin/python3 /usr/bin/python3.broken")  # Ansible cannot run there

    checked = fleet.drift(settings, factory, now=IN_WINDOW)
    status = {o.node: o for o in checked.outcomes}
    assert status[a.name].status == status[c.name].status == "drift"
    assert any("90-hosting" in task or "MariaDB" in task for task in status[a.name].changes)
    assert status[b.name].status == "failed"
    assert checked.exit_code == 1  # a node that cannot be checked is a failure, not "no drift"
    assert MARK in host_a.file(MANAGED).content_string  # check mode changed nothing

    report = fleet.rollout(settings, factory, actor="test", serial=1, canary=1, now=IN_WINDOW)
    outcome = {o.node: o.status for o in report.outcomes}
    assert outcome == {a.name: "converged", b.name: "failed", c.name: "untouched"}
    assert report.exit_code == 1
    assert MARK not in host_a.file(MANAGED).content_string  # the canary converged
    assert MARK in host_c.file(MANAGED).content_string  # the node after the broken one untouched

    junit = tmp_path / "rollout.xml"
    junit.write_text(report.junit())
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}  # noqa: S314 - our own file
    failure = cases[b.name].find("failure")
    assert failure is not None and failure.get("message", "").startswith(f"{b.name} failed")
    assert cases[c.name].find("skipped") is not None

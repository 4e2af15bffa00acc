"""The plans' IOPS caps on a real block device, on the session's throwaway node.

RULES.md, "Shared hosting limits": CPU, memory and IOPS are capped per plan. The node's
hosting root is a disk of its own (provisioner.devstack.hosts.disk: a loop-backed ext4
at /srv/hosting, as a real server has one); roles/hosting_account finds it by itself
(io_device "auto") and caps each account's slice (IOReadIOPSMax=/IOWriteIOPSMax=; on this
machine's cgroup v1, through hosting-iops). A direct-IO writer (and reader) running as
the account in its slice, the way cron runs the account's commands (hosting-run), is
held near the plan's cap; the same command as the same user outside the slice, on the
same disk, in the same test, runs far faster. The rates are dd's own measurements, and
the test compares them with the cap and with each other (ratios, not wall-clock bounds).
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts, Secrets
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG

AS_USER = "setpriv --reuid={0} --regid={0} --init-groups"
BLOCK = 4096


@pytest.fixture(scope="module")
def account(node: Any, node_host: Any) -> Iterator[AccountSpec]:
    accounts = HostingAccounts(ssh_key=Path(node.info.ssh_key), provider_url="https://www.provider.example/")
    tag = uuid.uuid4().hex[:8]
    spec = AccountSpec(f"io{tag}", (f"io{tag}.si",), CATALOG.hosting_plan("mega"))
    accounts.create(node.info.target(), spec, Secrets.generate(spec.mailboxes)).raise_for_status("e2e.iops")
    yield spec.validated()
    with contextlib.suppress(Exception):  # the node is thrown away anyway
        node_host.run("rm -f /srv/hosting/%s/iops.bin", spec.name)


def iops(output: str, count: int) -> float:
    """Operations per second from dd's summary ("..., 3.01 s, 2.0 MB/s")."""
    found = re.search(r"copied, ([0-9.e+-]+) s,", output)
    assert found, output
    return count / float(found.group(1))


def dd(node_host: Any, name: str, args: str, *, in_slice: bool) -> str:
    command = f"{AS_USER.format(name)} dd {args}"
    if in_slice:
        command = f"hosting-run {name} {command}"
    out = node_host.run(command)
    assert out.rc == 0, out.stderr
    return str(out.stdout + out.stderr)


def test_the_hosting_root_is_a_disk_and_the_slice_caps_it(node_host: Any, account: AccountSpec) -> None:
    source, majmin = node_host.check_output("findmnt -no SOURCE,MAJ:MIN /srv/hosting").split()
    assert source.startswith("/dev/loop"), source
    drop_in = node_host.file(
        f"/etc/systemd/system/hosting-{account.name}.slice.d/20-limits.conf").content_string
    cap = account.plan.iops
    assert f"IOWriteIOPSMax={source} {cap}" in drop_in and f"IOReadIOPSMax={source} {cap}" in drop_in
    # The caps are on the slice's blkio cgroup (systemd on cgroup v1 leaves them out).
    node_host.check_output("hosting-run %s true", account.name)
    state = json.loads(node_host.check_output(
        "python3 -c %s %s", "import json, sys\n"
        "d = '/sys/fs/cgroup/blkio/hosting.slice/hosting-%s.slice/' % sys.argv[1]\n"
        "print(json.dumps({f: open(d + f).read().split() for f in\n"
        "    ('blkio.throttle.write_iops_device', 'blkio.throttle.read_iops_device')}))\n", account.name))
    assert state == {"blkio.throttle.write_iops_device": [majmin, str(cap)],
                     "blkio.throttle.read_iops_device": [majmin, str(cap)]}


@pytest.mark.parametrize("direction", ["write", "read"])
def test_a_direct_io_writer_is_held_near_the_plans_iops_cap(node_host: Any, account: AccountSpec,
                                                            direction: str) -> None:
    cap = account.plan.iops
    count = cap * 3  # about three seconds at the cap
    target = f"/srv/hosting/{account.name}/iops.bin"
    if direction == "write":
        args = f"if=/dev/zero of={target} bs={BLOCK} count={count} oflag=direct conv=notrunc"
    else:
        dd(node_host, account.name, f"if=/dev/zero of={target} bs={BLOCK} count={count}", in_slice=False)
        node_host.check_output("sync")
        args = f"if={target} of=/dev/null bs={BLOCK} count={count} iflag=direct"
    capped = iops(dd(node_host, account.name, args, in_slice=True), count)
    free = iops(dd(node_host, account.name, args, in_slice=False), count)
    print(f"IOPS {direction}: cap {cap}, in the account's slice {capped:.0f}, outside it {free:.0f}")
    assert capped <= cap * 1.2, (capped, cap)  # held at the cap ...
    assert capped >= cap * 0.5, (capped, cap)  # ... near it, not starved
    assert free >= capped * 3, (free, capped)  # and far below what the disk does without it

"""Benchmark: one mailbox of the migration copy alone (issue 13, part ``mailbox1``).

Two throwaway hosts from the converged-node image: the old provider (one mailbox of
``--messages`` (1,000) messages in three folders, appended over IMAPS on that host) and
our node. The floor, measured in the same run between the same two hosts, is Dovecot's
own ``doveadm backup -R`` through imapc into a scratch mailbox; then ``node/mail.py`` as
the pipeline runs it (`NodeJobs.run_part`, SSH and the program's push included), its
re-run (everything already there: the listing's cost), and its verify. Prints one JSON
document and writes it to ``--out`` (default ``bench/results/migration_mail.json``).
Run from the repo root as root, under the e2e lock::

    flock /tmp/e2e.lock .venv/bin/python bench/migration_mail.py [--messages 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Host, timed, write_result  # noqa: E402
from migration import MAKE_MAIL  # noqa: E402

from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts, Secrets  # noqa: E402
from provisioner.adapters.migration_copy import NodeJobs  # noqa: E402
from provisioner.adapters.tls_targets.node import NodeAccess  # noqa: E402
from provisioner.devstack.hosts import NspawnHosts  # noqa: E402
from provisioner.devstack.hosts.disk import attach_hosting_disk  # noqa: E402
from provisioner.devstack.hosts.node import ensure_node_image  # noqa: E402
from provisioner.domain.catalog import DEFAULT_CATALOG  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "migration_mail.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    hosts = NspawnHosts()
    names = (f"bench-mm-old-{os.getpid()}"[:30], f"bench-mm-node-{os.getpid()}"[:30])
    result: dict[str, Any] = {"machine": platform.node(), "messages": args.messages}
    try:
        layer = ensure_node_image(hosts)
        old_info, node_info = hosts.up(names[0], layer=layer), hosts.up(names[1], layer=layer)
        for info in (old_info, node_info):
            attach_hosting_disk(info, size_mb=2048)
        old, node = Host(old_info), Host(node_info)
        old_spec = AccountSpec("benchmmold", ("benchmm.si",), DEFAULT_CATALOG.hosting_plan("giga15"))
        old_secret = Secrets.generate(old_spec.mailboxes)
        HostingAccounts(ssh_key=Path(old_info.ssh_key)).create(
            old_info.target(), old_spec, old_secret).raise_for_status("bench.old")
        user, password = "info@benchmm.si", old_secret.mailboxes["info"]
        result["generate_s"], _ = old.timed(
            f"printf '%s\\n' {shlex.quote(password)} | python3 -c {shlex.quote(MAKE_MAIL)} "
            f"{shlex.quote(user)} {args.messages}")
        result["bytes"] = int(old.sh("du -sb /srv/mail/benchmm.si/info/Maildir | cut -f1").split()[0])
        spec = AccountSpec("benchmmnew", ("benchmmnew.si",), DEFAULT_CATALOG.hosting_plan("giga15"),
                           mailboxes=("info", "floor"))
        HostingAccounts(ssh_key=Path(node_info.ssh_key)).create(
            node_info.target(), spec, Secrets.generate(spec.mailboxes)).raise_for_status("bench.node")
        imapc = {"imapc_host": old_info.address, "imapc_port": "993", "imapc_ssl": "imaps",
                 "imapc_user": user, "imapc_password": password, "ssl_client_require_valid_cert": "no",
                 "imapc_features": "rfc822.size fetch-headers", "mail_prefetch_count": "20"}
        options = " ".join(f"-o {k}={shlex.quote(v)}" for k, v in imapc.items())  # the floor only
        result["floor_s"], _ = node.timed(f"doveadm {options} backup -R -u floor@benchmmnew.si imapc:")
        access = NodeAccess(node_info.name, node_info.address, Path(node_info.ssh_key), throwaway=True)
        job = {"job": "benchmm", "part": "mailbox1", "mode": "copy",
               "account": {"user": "benchmmnew", "home": "/nonexistent", "docroot": "/nonexistent",
                           "database": "x", "mailbox": "info@benchmmnew.si"},
               "source": {"index": 1, "mail1_host": old_info.address, "mail1_port": 993, "mail1_user": user,
                          "mail1_password": password},
               "flags": {"allow_plain_ftp": False, "skip_cert_verify": True}, "source_host_key": "",
               "cap_bytes": 10**10, "deadline_s": 3600.0, "collation_map": {}, "max_message_bytes": 52428800}
        jobs = NodeJobs()
        result["copy_s"], first = timed(jobs.run_part, access, job)
        result["rerun_s"], again = timed(jobs.run_part, access, job)
        result["verify_s"], verified = timed(jobs.run_part, access, {**job, "mode": "verify"})
        jobs.cleanup(access, "benchmm")
        result["copy"] = {"state": first.state, "items": first.items, "bytes": first.bytes}
        result["rerun_items"] = again.items
        result["differences"] = verified.counts.get("differences")
        result["messages_s"] = first.items / result["copy_s"]
        result["floor_messages_s"] = args.messages / result["floor_s"]
        result["copy_over_floor"] = result["copy_s"] / result["floor_s"]
        result["rerun_over_floor"] = result["rerun_s"] / result["floor_s"]
        result["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    finally:
        for name in names:
            hosts.down(name)
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

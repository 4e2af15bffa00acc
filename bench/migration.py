"""Benchmark: a free migration from an old provider's host to our node (issue 13).

Two throwaway hosts from the converged-node image: the customer's old provider (an SSH
login with the site, a MariaDB database, two Dovecot mailboxes over IMAPS) and our node
(a new account with two mailboxes). About 1.5 GB by default: ``--files`` (20,000) small
files and ``--large`` (6) large ones, ``--mb`` (1,100) MB of files in all, a ``--db-mb``
(300) MB database, ``--messages`` (3,000) messages across the two mailboxes.

The floor, measured in the same run between the same two hosts, the node pulling:
``rsync -a`` over SSH for the files, ``ssh old mysqldump | mysql`` for the database,
``doveadm backup`` through imapc for each mailbox (into scratch places, removed after).
Then the migration as the pipeline runs it: the survey (`OldProvider.measure`, from the
controller), each part copied by its node program (`NodeJobs.run_part`), each part
verified. Reports MB/s, messages/s, each part's ratio to its floor, and the targets:
the whole migration (survey and verify included) within 1.3x the sum of the floors, the
survey under 10 % of the copy time. Prints one JSON document and writes it to ``--out``
(default ``bench/results/migration.json``). Run from the repo root as root, under the
e2e lock (it boots throwaway hosts)::

    .venv/bin/python bench/migration.py [--mb 1100 --files 20000 --db-mb 300 --messages 3000]
"""

from __future__ import annotations

import argparse
import platform
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Host, timed, write_result  # noqa: E402

from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts, Secrets  # noqa: E402
from provisioner.adapters.migration_copy import NodeJobs, PartOutcome  # noqa: E402
from provisioner.adapters.migration_source import OldProvider  # noqa: E402
from provisioner.adapters.tls_targets.node import NodeAccess  # noqa: E402
from provisioner.config import Settings  # noqa: E402
from provisioner.devstack.hosts import NspawnHosts  # noqa: E402
from provisioner.devstack.hosts.disk import attach_hosting_disk  # noqa: E402
from provisioner.devstack.hosts.node import ensure_node_image  # noqa: E402
from provisioner.domain.catalog import DEFAULT_CATALOG  # noqa: E402
from provisioner.domain.migration_survey import build_report  # noqa: E402
from provisioner.pipeline.capabilities.migration.copy import (  # noqa: E402
    NODE_ROOT,
    Destination,
    build_job,
    job_id,
    parts_of,
)
from provisioner.pipeline.capabilities.migration.intake import Source, validate  # noqa: E402
from provisioner.pipeline.capabilities.migration.survey import limits_from  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "migration.json"
OLD_USER = "benchold"
KEY = "/root/.ssh/bench_old"

MAKE_FILES = r"""
import os, sys
root, count, large, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
big = total // 2 // max(large, 1)
small = (total - big * large) // count
for i in range(count):
    d = os.path.join(root, "d%03d" % (i // 200))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d.bin" % i), "wb") as fh:
        fh.write(os.urandom(small))
os.makedirs(os.path.join(root, "media"), exist_ok=True)
for i in range(large):
    with open(os.path.join(root, "media", "video%d.bin" % i), "wb") as fh:
        for _ in range(big // (1 << 20)):
            fh.write(os.urandom(1 << 20))
with open(os.path.join(root, "index.php"), "w") as fh:
    fh.write("<?php echo '<title>Stara trgovina</title>'; ?>\n")
"""

# messages appended over IMAPS on the old host itself (fast), folders as a customer has them
MAKE_MAIL = r"""
import imaplib, os, ssl, sys, uuid
user, password, count = sys.argv[1], sys.stdin.readline().strip(), int(sys.argv[2])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
imap = imaplib.IMAP4_SSL("127.0.0.1", ssl_context=ctx)
imap.login(user, password)
folders = ["INBOX", "Sent", "Archive"]
for f in folders[1:]:
    imap.create(f)
for i in range(count):
    body = os.urandom(2000 + (i * 7919) % 30000).hex()[: 2000 + (i * 7919) % 30000]
    head = "From: a@example.org\r\nTo: %s\r\nSubject: message %d\r\nMessage-ID: <%s@example.org>\r\n"
    raw = (head % (user, i, uuid.uuid4().hex) + "\r\n" + body + "\r\n").encode()
    imap.append(folders[i % 3], "(\\Seen)" if i % 2 else None, None, raw)
imap.logout()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1100, help="MB of site files")
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--large", type=int, default=6, help="large files (half of --mb)")
    parser.add_argument("--db-mb", type=int, default=300)
    parser.add_argument("--messages", type=int, default=3000, help="messages across the two mailboxes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    hosts = NspawnHosts()
    names = ("bench-mig-old", "bench-mig-node")
    result: dict[str, Any] = {"machine": platform.node(), "mb": args.mb, "files": args.files,
                              "large": args.large, "db_mb": args.db_mb, "messages": args.messages}
    try:
        layer = ensure_node_image(hosts)
        old_info = hosts.up(names[0], layer=layer)
        node_info = hosts.up(names[1], layer=layer)
        disk_mb = 4 * (args.mb + 2 * args.db_mb) + 2048
        attach_hosting_disk(old_info, size_mb=disk_mb)
        attach_hosting_disk(node_info, size_mb=disk_mb)
        old, node = Host(old_info), Host(node_info)
        source, old_spec = _old_provider(old, old_info, args, result)
        spec = AccountSpec("benchnew", (old_spec.domains[0],), DEFAULT_CATALOG.hosting_plan("giga15"),
                           mailboxes=("info", "floor1", "floor2"))
        HostingAccounts(ssh_key=Path(node_info.ssh_key)).create(
            node_info.target(), spec, Secrets.generate(spec.mailboxes)).raise_for_status("bench.node")
        result["floor"] = _floors(old, node, old_info, source, old_spec)
        result["migration"] = _migration(node_info, source, old, spec, args)
        _summary(result, args)
    finally:
        for name in names:
            hosts.down(name)
    write_result(result, args.out)
    return 0


def _old_provider(old: Host, info: Any, args: argparse.Namespace,
                  result: dict[str, Any]) -> tuple[dict[str, Any], AccountSpec]:
    spec = AccountSpec("benchmig", ("benchmig.si",), DEFAULT_CATALOG.hosting_plan("giga15"),
                       mailboxes=("info", "ana"))
    secret = Secrets.generate(spec.mailboxes)
    HostingAccounts(ssh_key=Path(info.ssh_key)).create(info.target(), spec, secret).raise_for_status(
        "bench.old")
    # the old host's SSH login with the site; its key is what the customer gives us
    old.sh(f"useradd -m -s /bin/bash {OLD_USER} && install -d -m 700 -o {OLD_USER} /home/{OLD_USER}/.ssh "
           f"&& ssh-keygen -q -t ed25519 -N '' -f /root/bench_old && "
           f"install -m 600 -o {OLD_USER} /root/bench_old.pub /home/{OLD_USER}/.ssh/authorized_keys")
    key_pem = old.sh("cat /root/bench_old && rm -f /root/bench_old /root/bench_old.pub")
    result["generate_files_s"], _ = old.timed(
        f"python3 -c {shlex.quote(MAKE_FILES)} /home/{OLD_USER}/public_html {args.files} {args.large} "
        f"{args.mb * 1_000_000} && chown -R {OLD_USER}: /home/{OLD_USER}")
    rows = args.db_mb * 1000
    sql = ("CREATE TABLE blobs (id INT PRIMARY KEY, b VARBINARY(1024)) ENGINE=InnoDB; "  # noqa: S608
           f"INSERT INTO blobs SELECT seq, RANDOM_BYTES(1000) FROM seq_1_to_{rows}; "
           "CREATE TABLE posts (id INT PRIMARY KEY, title VARCHAR(200)) DEFAULT CHARSET=utf8mb4; "
           "INSERT INTO posts SELECT seq, CONCAT('naslov čšž ', seq) FROM seq_1_to_50000")
    result["generate_db_s"], _ = old.timed(f"mysql --database {spec.name} -e {shlex.quote(sql)}")
    started = time.monotonic()
    for i, box in enumerate(spec.mailboxes):
        count = args.messages // 2 + (args.messages % 2 if i == 0 else 0)
        old.sh(f"printf '%s\\n' {shlex.quote(secret.mailboxes[box])} | python3 -c {shlex.quote(MAKE_MAIL)} "
               f"{box}@{spec.domains[0]} {count}")
    result["generate_mail_s"] = time.monotonic() - started
    old.sh("sync")
    domain = spec.domains[0]
    # the intake form as the customer fills it in, validated as the page validates it
    form = {
        "files_protocol": "sftp", "files_host": info.address, "files_user": OLD_USER,
        "files_key": key_pem, "files_path": "public_html",
        "db_via": "ssh", "db_name": spec.name, "db_user": spec.name, "db_password": secret.database,
        "mail1_host": info.address, "mail1_user": f"info@{domain}",
        "mail1_password": secret.mailboxes["info"],
        "mail2_host": info.address, "mail2_user": f"ana@{domain}",
        "mail2_password": secret.mailboxes["ana"],
        "skip_cert_verify": "1",  # the throwaway host's self-signed IMAPS certificate
    }
    source = validate(form).values
    return source, spec


def _floors(old: Host, node: Host, old_info: Any, source: dict[str, Any], old_spec: AccountSpec
            ) -> dict[str, Any]:
    node.sh(f"install -d -m 700 /root/.ssh && umask 077 && cat > {KEY} <<'EOF'\n"
            f"{source['files_key'].strip()}\nEOF\n")
    ssh = (f"ssh -i {KEY} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes "
           f"{OLD_USER}@{old_info.address}")
    # the old login reads its database password from its own option file (the floor only)
    old.sh(f"umask 077 && printf '[client]\\nuser=%s\\npassword=%s\\n' {old_spec.name} "
           f"{shlex.quote(source['db_password'])} > /home/{OLD_USER}/.my.cnf && "
           f"chown {OLD_USER}: /home/{OLD_USER}/.my.cnf")
    floor: dict[str, Any] = {}
    floor["files_s"], _ = node.timed(
        f"rsync -a -e {shlex.quote(ssh.rsplit(' ', 1)[0])} {OLD_USER}@{old_info.address}:public_html/ "
        "/var/tmp/floor-files/")
    floor["database_s"], _ = node.timed(
        f"mysql -e 'CREATE DATABASE floordb' && {ssh} 'mysqldump --single-transaction --no-tablespaces "
        f"{old_spec.name}' | mysql floordb")
    floor["mail_s"] = 0.0
    for i in (1, 2):
        imapc = {"imapc_host": old_info.address, "imapc_port": "993", "imapc_ssl": "imaps",
                 "imapc_user": source[f"mail{i}_user"], "imapc_password": source[f"mail{i}_password"],
                 "ssl_client_require_valid_cert": "no", "imapc_features": "rfc822.size fetch-headers",
                 "mail_prefetch_count": "20"}
        options = " ".join(f"-o {k}={shlex.quote(v)}" for k, v in imapc.items())
        t, _ = node.timed(f"doveadm {options} backup -R -u floor{i}@{old_spec.domains[0]} imapc:")
        floor["mail_s"] += t
    node.sh(f"rm -rf /var/tmp/floor-files {KEY} && mysql -e 'DROP DATABASE floordb' && "
            f"doveadm expunge -u floor1@{old_spec.domains[0]} mailbox '*' all && "
            f"doveadm expunge -u floor2@{old_spec.domains[0]} mailbox '*' all")
    old.sh(f"rm -f /home/{OLD_USER}/.my.cnf")
    floor["total_s"] = floor["files_s"] + floor["database_s"] + floor["mail_s"]
    return floor


def _migration(node_info: Any, source: dict[str, Any], old: Host, spec: AccountSpec,
               args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    limits = limits_from(settings)
    survey_s, measures = timed(OldProvider().measure, source, allow_plain_ftp=False, skip_cert_verify=True,
                               limits=limits)
    report = build_report(measures, limits, survey_s).to_json()
    out: dict[str, Any] = {"survey_s": survey_s, "survey_fits": report["fits"],
                           "survey_total_bytes": report["total_bytes"],
                           "survey_projected_s": report["projected_seconds"], "parts": {}}
    # the jobs exactly as the migration.copy step builds them (copy.build_job)
    home = f"{NODE_ROOT}/{spec.name}"
    dest = Destination(node_info.target(), node_info.address, spec.name, home, f"{home}/public_html",
                       spec.name, spec.domains[0])
    sealed = Source(source, allow_plain_ftp=False, skip_cert_verify=True)
    access = NodeAccess(node_info.name, node_info.address, Path(node_info.ssh_key), throwaway=True)
    jobs = NodeJobs()
    service_id = 900_000 + secrets.randbelow(99_999)
    left = settings.migration_cap_bytes
    copy_s = verify_s = 0.0
    try:
        for part in parts_of(sealed):
            jobs_of = {mode: build_job(settings, service_id, part, mode, dest, sealed, report, left,
                                       settings.migration_cap_s) for mode in ("copy", "verify")}
            t_copy, copied = timed(jobs.run_part, access, jobs_of["copy"])
            t_verify, verified = timed(jobs.run_part, access, jobs_of["verify"])
            left -= copied.bytes
            copy_s += t_copy
            verify_s += t_verify
            out["parts"][part] = {"copy_s": t_copy, "verify_s": t_verify, **_shown(copied),
                                  "verify_state": verified.state,
                                  "differences": (verified.counts.get("differences") or [])[:10]}
    finally:
        out["cleanup"] = jobs.cleanup(access, job_id(service_id))
    out["copy_s"], out["verify_s"] = copy_s, verify_s
    out["total_s"] = survey_s + copy_s + verify_s
    return out


def _shown(outcome: PartOutcome) -> dict[str, Any]:
    return {"state": outcome.state, "bytes": outcome.bytes, "items": outcome.items, "error": outcome.error,
            "named": len(outcome.named)}


def _summary(result: dict[str, Any], args: argparse.Namespace) -> None:
    floor, mig = result["floor"], result["migration"]
    parts = mig["parts"]
    mail_s = sum(parts[p]["copy_s"] for p in ("mailbox1", "mailbox2"))
    result["rates"] = {
        "files_mb_s": parts["files"]["bytes"] / 1e6 / parts["files"]["copy_s"],
        "files_floor_mb_s": parts["files"]["bytes"] / 1e6 / floor["files_s"],
        "database_mb_s": parts["database"]["bytes"] / 1e6 / parts["database"]["copy_s"],
        "messages_s": args.messages / mail_s,
        "floor_messages_s": args.messages / floor["mail_s"],
    }
    result["ratios"] = {
        "files_over_floor": parts["files"]["copy_s"] / floor["files_s"],
        "database_over_floor": parts["database"]["copy_s"] / floor["database_s"],
        "mail_over_floor": mail_s / floor["mail_s"],
        "whole_over_floors": mig["total_s"] / floor["total_s"], "whole_over_floors_target": 1.3,
        "survey_over_copy": mig["survey_s"] / mig["copy_s"], "survey_over_copy_target": 0.10,
    }
    result["targets_met"] = {"whole": mig["total_s"] <= 1.3 * floor["total_s"],
                             "survey": mig["survey_s"] < 0.10 * mig["copy_s"],
                             "all_verified": all(not p["differences"] and p["state"] == "done"
                                                 for p in parts.values())}


if __name__ == "__main__":
    raise SystemExit(main())

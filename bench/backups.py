"""Benchmark: restic backups of one account to the backup host, beside ``tar | ssh`` (issue 16).

On two throwaway hosts (a node from the converged-node image, a backup host from the
base image, set up by ``playbooks/backup_host.yml`` and ``playbooks/hosting_node_backup.yml``):

1. one account with ``--files`` (20,000) files of random bytes, ``--mb`` (1,000) MB in
   all, a delivered-mail-sized maildir and a ``--db-mb`` (200) MB database;
2. the floor of a full copy: ``mysqldump --single-transaction`` to a file, then
   ``tar -c`` of the home, the maildir and the dump piped into ``ssh backup-host 'cat > …'``;
3. ``hosting-backup backup`` (dump + restic backup over SFTP), the first time and again
   unchanged (incremental);
4. restore: ``ssh backup-host cat … | tar -x`` into a scratch directory (the floor) beside
   ``hosting-backup drill`` (restic restore of the whole snapshot into a scratch
   directory, then compared with the snapshot's file list) and ``hosting-backup restore``
   (home and maildir swapped in, the database re-imported) beside the floor plus
   ``mysql`` importing the same dump.

Targets: first backup / floor <= 1.5; unchanged second / first < 0.10. Prints one JSON
document and writes it to ``--out`` (default ``bench/results/backups.json``). Run from the
repo root as root (under the e2e lock: it boots throwaway hosts)::

    .venv/bin/python bench/backups.py [--mb 1000 --files 20000 --db-mb 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Host, write_result  # noqa: E402

from provisioner.adapters.hosting import run_playbook  # noqa: E402
from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts, Secrets  # noqa: E402
from provisioner.devstack.hosts import NspawnHosts  # noqa: E402
from provisioner.devstack.hosts.disk import attach_hosting_disk  # noqa: E402
from provisioner.devstack.hosts.node import ensure_node_image  # noqa: E402
from provisioner.domain.catalog import DEFAULT_CATALOG  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "backups.json"
ACCOUNT = "benchbk"
FLOOR_KEY = "/root/.ssh/bench_floor"
SCRATCH = "/var/tmp/bench-restore"

MAKE_FILES = r"""
import os, sys
root, count, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size = total // count
for i in range(count):
    d = os.path.join(root, "d%03d" % (i // 200))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d.bin" % i), "wb") as fh:
        fh.write(os.urandom(size))
"""


# one restic start-up as the script makes it (ssh, key, config): the floor of any restic run
RESTIC_OPEN = r"""
import importlib.machinery, importlib.util, sys
loader = importlib.machinery.SourceFileLoader("hb", "/usr/local/sbin/hosting-backup")
hb = importlib.util.module_from_spec(importlib.util.spec_from_loader("hb", loader))
loader.exec_module(hb)
hb.Repo().run(*sys.argv[1:], "cat", "config")
"""

# the SSH part of that start-up: a connection to the backup host and its SFTP session, as restic opens it
SSH_OPEN = r"""
import importlib.machinery, importlib.util, shlex, subprocess
loader = importlib.machinery.SourceFileLoader("hb", "/usr/local/sbin/hosting-backup")
hb = importlib.util.module_from_spec(importlib.util.spec_from_loader("hb", loader))
loader.exec_module(hb)
command = [a for a in hb.Repo().argv() if a.startswith("sftp.command=")][0].split("=", 1)[1]
subprocess.run(shlex.split(command), input=b"", capture_output=True, check=False)
"""


def playbook(name: str, info: Any, extravars: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-backups-") as private:
        result = Path(private) / "result.json"
        key = "backup_host_result_file" if name == "backup_host.yml" else "hosting_backup_result_file"
        run = run_playbook(name, [info.target()], {key: str(result), **extravars},
                           ssh_key=Path(info.ssh_key), throwaway=True, timeout_s=1800)
        run.raise_for_status(f"bench.{name}")
        return json.loads(result.read_text()) if result.is_file() else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1000, help="MB of files in the home")
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--db-mb", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    hosts = NspawnHosts()
    disk_mb = 3 * args.mb + 1024
    names = ("bench-bk-node", "bench-bk-host")
    result: dict[str, Any] = {"machine": platform.node(), "mb": args.mb, "files": args.files,
                              "db_mb": args.db_mb}
    try:
        node_info = hosts.up(names[0], layer=ensure_node_image(hosts))
        attach_hosting_disk(node_info, size_mb=disk_mb)  # room for the data and a restore beside it
        bk_info = hosts.up(names[1])
        node, bk = Host(node_info), Host(bk_info)
        # enrol the node with the backup host (as in production), and give the floor a root login
        key = json.loads(node.sh("/usr/local/sbin/hosting-backup key"))["public_key"]
        host_key = playbook("backup_host.yml", bk_info, {
            "backup_host_nodes": [{"name": "bench", "authorized_keys": [key]}]})["host_key"]
        playbook("hosting_node_backup.yml", node_info, {
            "hosting_node_backup_repository": f"sftp:rn-bench@{bk_info.address}:/repo",
            "hosting_node_backup_password": secrets.token_urlsafe(32),
            "hosting_node_backup_known_hosts": host_key})
        node.sh(f"install -d -m 700 /root/.ssh && umask 077 && cat > {FLOOR_KEY} <<'EOF'\n"
                f"{Path(hosts.key_path).read_text().strip()}\nEOF\n")
        floor_ssh = (f"ssh -i {FLOOR_KEY} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                     f"-o BatchMode=yes root@{bk_info.address}")

        plan = DEFAULT_CATALOG.hosting_plan("giga15")
        spec = AccountSpec(ACCOUNT, ("benchbk.si",), plan, mailboxes=("info",))
        HostingAccounts(ssh_key=Path(node_info.ssh_key)).create(
            node_info.target(), spec, Secrets.generate(spec.mailboxes)).raise_for_status("bench.create")
        home = f"/srv/hosting/{ACCOUNT}"
        t, _ = node.timed(f"python3 -c {shlex.quote(MAKE_FILES)} {home}/public_html/data {args.files} "
                          f"{args.mb * 1_000_000} && chown -R {ACCOUNT}: {home}/public_html/data")
        result["generate_files_s"] = t
        rows = int(args.db_mb) * 1000  # 1,000 random bytes a row
        sql = ("CREATE TABLE blobs (id INT PRIMARY KEY, b VARBINARY(1024)) ENGINE=InnoDB; "  # noqa: S608
               f"INSERT INTO blobs SELECT seq, RANDOM_BYTES(1000) FROM seq_1_to_{rows}")
        t, _ = node.timed(f"mysql --database {ACCOUNT} -e {shlex.quote(sql)}")
        result["generate_db_s"] = t
        result["data"] = json.loads(node.sh(f"/usr/local/sbin/hosting-backup status {ACCOUNT}"))
        node.sh("sync")

        # the floor: a dump and tar | ssh of the same data to the same host
        dump = "/var/tmp/bench-floor.sql"
        t_floor, _ = node.timed(
            f"mysqldump --single-transaction --routines --triggers --events --add-drop-database "
            f"--databases {ACCOUNT} > {dump} && tar -cf - -C / srv/hosting/{ACCOUNT} srv/mail/benchbk.si "
            f"{dump.lstrip('/')} | {floor_ssh} 'cat > /var/tmp/floor.tar'")
        result["floor_tar_ssh_s"] = t_floor
        result["loadavg_at_floor"] = node.sh("cat /proc/loadavg").split()[:3]
        result["floor_bytes"] = int(bk.sh("stat -c %s /var/tmp/floor.tar").strip())

        t_first, out = node.timed(f"/usr/local/sbin/hosting-backup backup {ACCOUNT}")
        first = json.loads(out)
        t_second, out = node.timed(f"/usr/local/sbin/hosting-backup backup {ACCOUNT}")
        second = json.loads(out)
        result["restic_first_s"] = t_first
        result["restic_first_added_bytes"] = first.get("added_bytes")
        result["restic_second_s"] = t_second
        result["restic_second_added_bytes"] = second.get("added_bytes")
        result["repository_bytes"] = int(bk.sh("du -sb /srv/restic/rn-bench/repo").split()[0])
        # the parts of an unchanged second run: one restic start-up (ssh, key, config), and what
        # the run no longer does (a full dump: the fingerprint says unchanged; a second restic run)
        # (restic_open = ssh_open + the key's scrypt + config + its lock: lock minus no_lock is
        # restic's fixed 200 ms wait before it re-checks the locks)
        result["second_parts_s"] = {
            "bench_ssh_exec_true": node.timed("true")[0],  # every timed command includes this one
            "ssh_open": node.timed(f"python3 -c {shlex.quote(SSH_OPEN)}")[0],
            "restic_open_no_lock": node.timed(f"python3 -c {shlex.quote(RESTIC_OPEN)} --no-lock")[0],
            "restic_open": node.timed(f"python3 -c {shlex.quote(RESTIC_OPEN)}")[0],
            "mysqldump_skipped": node.timed(f"mysqldump --single-transaction --skip-dump-date --databases "
                                            f"{ACCOUNT} > /dev/null")[0],
            "restic_list": node.timed(f"/usr/local/sbin/hosting-backup list {ACCOUNT}")[0]}

        # restore: the floor into a scratch dir, restic into a scratch dir (drill), and in place
        t_floor_restore, _ = node.timed(f"rm -rf {SCRATCH} && mkdir -p {SCRATCH} && "
                                        f"{floor_ssh} 'cat /var/tmp/floor.tar' | tar -x -C {SCRATCH}")
        t_floor_import, _ = node.timed(f"mysql --batch < {SCRATCH}/{dump.lstrip('/')}")
        node.sh(f"rm -rf {SCRATCH} {dump}")
        t_drill, out = node.timed(f"/usr/local/sbin/hosting-backup drill {ACCOUNT}")
        result["restic_drill"] = {k: v for k, v in json.loads(out).items() if k != "mismatches"}
        t_restore, out = node.timed(f"/usr/local/sbin/hosting-backup restore {ACCOUNT} {second['id']}")
        result["restic_restore_verified_files"] = json.loads(out).get("verified_files")
        result["floor_restore_ssh_tar_x_s"] = t_floor_restore
        result["floor_restore_plus_import_s"] = t_floor_restore + t_floor_import
        result["restic_restore_scratch_s"] = t_drill
        result["restic_restore_in_place_s"] = t_restore

        result["ratios"] = {
            "first_over_floor": t_first / t_floor, "first_over_floor_target": 1.5,
            "second_over_first": t_second / t_first, "second_over_first_target": 0.10,
            "restore_scratch_over_floor": t_drill / t_floor_restore,
            "restore_in_place_over_floor_plus_import": t_restore / (t_floor_restore + t_floor_import),
        }
        result["targets_met"] = {"first": t_first <= 1.5 * t_floor, "second": t_second < 0.10 * t_first}
        # both at once need second < 0.15 x floor; the machine's load says how contended the run was
        result["both_targets_need_second_under_s"] = 0.15 * t_floor
        result["loadavg_at_end"] = node.sh("cat /proc/loadavg").split()[:3]
    finally:
        for name in names:
            hosts.down(name)

    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

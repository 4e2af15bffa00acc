"""The migration part "files" (issue 13, items 4-6) between two real throwaway hosts: the
session's `old_provider` plays the customer's old host, the session's `node` is ours.

On the old host this module makes two SSH logins of its own (unique names, one key):
``<fast>`` holds a site tree with many small files, a larger one, a dotfile, a symlink to
/etc and one climbing out of the tree, a symlink inside the tree, a name with a newline
and ``$(id)``, and a FIFO; ``<slow>`` holds a 1 MB file behind a forced command that runs
what the client asked for with its output throttled to 200 kB/s at the source (an
honest slow old provider: the throttle sits on the old host, not in our rsync); a third
login takes a password (sshd's ``Match User`` block, the same throttle as its
ForceCommand), so the copy through ``sshpass`` runs long enough to watch. On our
node one hosting account receives the files (its public_html, and two more directories
of its user inside its home for the capped and the budgeted copies). The copy runs
through `NodeJobs.run_part` exactly as the pipeline runs it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts, Secrets
from provisioner.adapters.migration_copy import NodeJobs, PartOutcome
from provisioner.adapters.migration_source import CredentialRefused
from provisioner.adapters.tls_targets.node import NodeAccess
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG
from tests.e2e.nodes import infra_host

HOSTILE = "bad\nname;$(id)"
SMALL = 300  # many small files
BIG = 2_000_000
SLOW_BIG = 1_000_000
RATE = 200_000  # bytes per second out of the slow login

FILL = r"""
import json, os, sys
root, big, small = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(os.path.join(root, "assets", "deep"), exist_ok=True)
for i in range(small):
    with open(os.path.join(root, "assets", "deep" if i % 2 else "", "f%04d.txt" % i), "wb") as fh:
        fh.write(os.urandom(i % 700 + 1))
with open(os.path.join(root, "index.php"), "wb") as fh:
    fh.write(b"<?php echo '<title>Stara trgovina</title>'; ?>\n")
with open(os.path.join(root, ".htaccess"), "wb") as fh:
    fh.write(b"RewriteEngine On\n")
with open(os.path.join(root, "bad\nname;$(id)"), "wb") as fh:
    fh.write(b"hostile\n")
if big:
    with open(os.path.join(root, "big.bin"), "wb") as fh:
        fh.write(os.urandom(big))
if small:
    os.symlink("/etc", os.path.join(root, "escape"))
    os.symlink("../../../etc/passwd", os.path.join(root, "assets", "up"))
    os.symlink("index.php", os.path.join(root, "inlink"))
    os.mkfifo(os.path.join(root, "pipe"))
"""

# prints {relative path: [type, sha256 or link target or "", uid]} of everything under argv[1]
LISTING = r"""
import hashlib, json, os, stat, sys
root = sys.argv[1]
out = {}
for d, dirs, files in os.walk(root):
    for n in dirs + files:
        p = os.path.join(d, n)
        rel = os.path.relpath(p, root)
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ["l", os.readlink(p), st.st_uid]
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ["d", "", st.st_uid]
        elif stat.S_ISREG(st.st_mode):
            out[rel] = ["f", hashlib.sha256(open(p, "rb").read()).hexdigest(), st.st_uid]
        else:
            out[rel] = ["s", "", st.st_uid]
print(json.dumps(out))
"""

SLOW_SHELL = r"""#!/usr/bin/python3
# a slow old provider: the client's command, its output throttled (forced command)
import os, subprocess, sys, time
rate = int(sys.argv[1])
proc = subprocess.Popen(["/bin/sh", "-c", os.environ.get("SSH_ORIGINAL_COMMAND", "")],
                        stdout=subprocess.PIPE)
out = sys.stdout.buffer
while True:
    chunk = proc.stdout.read1(4096)
    if not chunk:
        break
    out.write(chunk)
    out.flush()
    time.sleep(len(chunk) / rate)
sys.exit(proc.wait())
"""

OUTSIDE = ("find /etc /tmp /var/tmp /srv -xdev -not -path '/srv/hosting/%s*' "
           "-printf '%%p %%y %%s %%T@\\n' | sort")


@dataclass
class Setup:
    old_host: Any
    node_host: Any
    access: NodeAccess
    old_address: str
    fast: str
    slow: str
    key_pem: str
    host_key: str
    account: str
    home: str
    uid: int
    pw_login: str
    password: str

    def job(self, job_id: str, *, mode: str = "copy", login: str | None = None, docroot: str = "public_html",
            cap: int = 10**9, deadline: float = 300.0, **source: Any) -> dict[str, Any]:
        return {"job": job_id, "part": "files", "mode": mode,
                "account": {"user": self.account, "home": self.home, "docroot": f"{self.home}/{docroot}",
                            "database": self.account, "mailbox": ""},
                "source": {"files_protocol": "sftp", "files_host": self.old_address, "files_port": 22,
                           "files_user": login or self.fast, "files_key": self.key_pem, "files_path": "site",
                           **source},
                "flags": {"allow_plain_ftp": False, "skip_cert_verify": False},
                "source_host_key": self.host_key, "cap_bytes": cap, "deadline_s": deadline}

    def old_tree(self, login: str) -> dict[str, list[Any]]:
        return dict(json.loads(str(self.old_host.check_output("python3 -c %s %s", LISTING,
                                                               f"/home/{login}/site"))))

    def our_tree(self, docroot: str = "public_html") -> dict[str, list[Any]]:
        return dict(json.loads(str(self.node_host.check_output("python3 -c %s %s", LISTING,
                                                                f"{self.home}/{docroot}"))))


@pytest.fixture(scope="module")
def setup(old_provider: Any, node: Any, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    tag = uuid.uuid4().hex[:6]
    old_host = infra_host(old_provider, tmp_path_factory.mktemp("ssh-old"))
    key = Ed25519PrivateKey.generate()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    fast, slow, pw_login = f"of{tag}", f"os{tag}", f"op{tag}"
    slow_shell = f"/usr/local/bin/slow-{tag}"
    old_host.check_output("python3 -c %s %s %s", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
                          slow_shell, SLOW_SHELL)
    old_host.check_output("chmod 755 %s", slow_shell)
    for login, keyline, big, small in ((fast, public, BIG, SMALL),
                                       (slow, f'command="{slow_shell} {RATE}" {public}', SLOW_BIG, 0)):
        old_host.check_output("useradd -m -s /bin/bash %s", login)
        old_host.check_output("install -d -m 700 -o %s -g %s /home/%s/.ssh", login, login, login)
        old_host.check_output("printf '%%s\\n' %s > /home/%s/.ssh/authorized_keys", keyline, login)
        old_host.check_output("python3 -c %s %s %s %s", FILL, f"/home/{login}/site", str(big), str(small))
        old_host.check_output("chown -R %s:%s /home/%s && chmod 600 /home/%s/.ssh/authorized_keys",
                              login, login, login, login)
    # a password login (sshpass on our side), throttled by sshd's ForceCommand
    password = f"Pw-{uuid.uuid4().hex}"
    old_host.check_output("useradd -m -s /bin/bash %s", pw_login)
    old_host.check_output("python3 -c %s %s %s %s", FILL, f"/home/{pw_login}/site", str(SLOW_BIG), "0")
    old_host.check_output("chown -R %s:%s /home/%s", pw_login, pw_login, pw_login)
    old_host.check_output("printf '%%s\\n' %s | chpasswd", f"{pw_login}:{password}")
    old_host.check_output("python3 -c %s %s %s", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
                          f"/etc/ssh/sshd_config.d/60-{pw_login}.conf",
                          f"Match User {pw_login}\n  PasswordAuthentication yes\n"
                          f"  ForceCommand {slow_shell} {2 * RATE}\n")
    old_host.check_output("systemctl reload ssh")
    host_key = " ".join(str(old_host.check_output("cat /etc/ssh/ssh_host_ed25519_key.pub")).split()[:2])
    info = node.info
    spec = AccountSpec(f"mf{tag}", (f"mf{tag}.si",), CATALOG.hosting_plan("giga5"))
    HostingAccounts(ssh_key=Path(info.ssh_key), provider_url="https://www.provider.example/").create(
        info.target(), spec, Secrets.generate(spec.mailboxes)).raise_for_status("e2e.migration_copy_files")
    node_host = infra_host(info, tmp_path_factory.mktemp("ssh-ours"))
    home = str(node_host.check_output("getent passwd %s | cut -d: -f6", spec.name)).strip()
    uid = int(str(node_host.check_output("id -u %s", spec.name)).strip())
    for sub in ("capped", "budget", "pw"):
        node_host.check_output("runuser -u %s -- mkdir -p %s/%s", spec.name, home, sub)
    access = NodeAccess(info.name, info.address, Path(info.ssh_key), throwaway=True)
    return Setup(old_host, node_host, access, old_provider.address, fast, slow, key_pem, host_key, spec.name,
                 home, uid, pw_login, password)


@dataclass
class First:
    job_id: str
    outcome: PartOutcome
    outside_before: str
    outside_after: str


@pytest.fixture(scope="module")
def first(setup: Setup) -> Iterator[First]:
    """The first copy of the fast login's tree into public_html."""
    job_id = f"mf{uuid.uuid4().hex[:8]}"
    before = str(setup.node_host.check_output(OUTSIDE, setup.account))
    outcome = NodeJobs().run_part(setup.access, setup.job(job_id))
    after = str(setup.node_host.check_output(OUTSIDE, setup.account))
    yield First(job_id, outcome, before, after)
    NodeJobs().cleanup(setup.access, job_id)


def _regular(tree: dict[str, list[Any]]) -> dict[str, str]:
    return {name: entry[1] for name, entry in tree.items() if entry[0] == "f"}


def test_every_regular_file_arrives_byte_for_byte_owned_by_the_account(setup: Setup, first: First) -> None:
    assert first.outcome.state == "done", first.outcome
    old, ours = setup.old_tree(setup.fast), setup.our_tree()
    assert _regular(old) == {n: h for n, h in _regular(ours).items() if n != "index.html"}  # our placeholder
    assert len(_regular(old)) == SMALL + 4 and ours[HOSTILE][0] == "f" and ours[".htaccess"][0] == "f"
    assert {n for n, e in old.items() if e[0] == "d"} == {n for n, e in ours.items() if e[0] == "d"}
    assert {e[2] for e in ours.values()} == {setup.uid}  # every entry the account's user's own
    counts = first.outcome.counts
    assert counts["transferred"]["files"] == SMALL + 4
    assert counts["transferred"]["bytes"] == sum(
        int(s) for s in str(setup.old_host.check_output(
            "find /home/%s/site -type f -printf '%%s\\n'", setup.fast)).split())
    assert first.outcome.bytes >= BIG and counts["files"] == SMALL + 5


def test_symlinks_out_of_the_tree_and_the_fifo_are_named_not_copied(setup: Setup, first: First) -> None:
    ours = setup.our_tree()
    assert "escape" not in ours and "assets/up" not in ours and "pipe" not in ours
    assert ours["inlink"] == ["l", "index.php", setup.uid]  # a link inside the tree is kept
    named = {(n["kind"], n["name"]) for n in first.outcome.named}
    assert {("excluded", "escape"), ("excluded", "assets/up"), ("excluded", "pipe"),
            ("hostile", "bad\\nname;$(id)")} <= named
    escape = next(n for n in first.outcome.named if n["name"] == "escape")
    assert "/etc" in escape["reason"] and "outside" in escape["reason"]
    assert all("\n" not in n["name"] for n in first.outcome.named)


def test_nothing_outside_the_accounts_home_changed(setup: Setup, first: First) -> None:
    assert first.outside_before == first.outside_after
    assert str(setup.node_host.check_output("find %s -uid 0", setup.home)).strip() == ""
    # the hostile name was never run: no file named after what $(id) would print
    ran = setup.node_host.check_output("find / -xdev -name 'bad*uid=*' 2>/dev/null || true")
    assert str(ran).strip() == ""


def test_a_rerun_copies_nothing_and_verify_finds_no_difference(setup: Setup, first: First) -> None:
    jobs = NodeJobs()
    again = jobs.run_part(setup.access, setup.job(first.job_id))
    assert again.state == "done" and again.counts["transferred"]["files"] == 0
    assert again.bytes == first.outcome.bytes  # the part's bytes across runs, not brought twice
    verified = jobs.run_part(setup.access, setup.job(first.job_id, mode="verify"))
    assert verified.state == "done" and verified.counts["differences"] == []
    source = verified.counts["source"]
    assert (source["files"], source["dirs"]) == (SMALL + 4, 2)
    assert verified.counts["target"]["files"] == SMALL + 4 and verified.counts["sampled"] == 16


def test_a_file_changed_at_the_source_is_a_difference_and_arrives_on_the_delta_sync(
        setup: Setup, first: First) -> None:
    jobs = NodeJobs()
    old_file = f"/home/{setup.fast}/site/index.php"
    setup.old_host.check_output("printf %s > %s && touch -d '+1 min' %s",
                                "<?php echo '<title>Nova trgovina</title>'; ?>\\n", old_file, old_file)
    verified = jobs.run_part(setup.access, setup.job(first.job_id, mode="verify"))
    assert [d for d in verified.counts["differences"] if "index.php" in d], verified.counts
    delta = jobs.run_part(setup.access, setup.job(first.job_id))
    assert delta.state == "done" and delta.counts["transferred"]["files"] == 1
    assert _regular(setup.our_tree())["index.php"] == _regular(setup.old_tree(setup.fast))["index.php"]
    assert jobs.run_part(setup.access, setup.job(first.job_id, mode="verify")).counts["differences"] == []


def test_a_tiny_cap_stops_the_copy_and_keeps_what_arrived(setup: Setup) -> None:
    job_id = f"mf{uuid.uuid4().hex[:8]}"
    try:
        outcome = NodeJobs().run_part(setup.access, setup.job(job_id, login=setup.slow, docroot="capped",
                                                              cap=150_000))
    finally:
        NodeJobs().cleanup(setup.access, job_id)
    assert outcome.state == "cap_reached", outcome
    assert 150_000 <= outcome.bytes < SLOW_BIG
    arrived = str(setup.node_host.check_output("find %s/capped -type f -printf '%%s\\n'", setup.home)).split()
    assert sum(int(s) for s in arrived) == outcome.counts["bytes"] >= 150_000


def test_a_throttled_source_exhausts_the_budget_then_resumes_with_no_key_in_argv(setup: Setup) -> None:
    job_id = f"mf{uuid.uuid4().hex[:8]}"
    jobs = NodeJobs()
    try:
        stopped = jobs.run_part(setup.access, setup.job(job_id, login=setup.slow, docroot="budget",
                                                        deadline=1.5))
        assert stopped.state == "budget_exhausted", stopped
        assert stopped.bytes < SLOW_BIG
        # the resumed copy, with the node's process list read all the while
        dump = f"/run/ps-{job_id}.txt"
        loop = "while :; do ps -eo args; echo ----; sleep 0.05; done"
        pid = str(setup.node_host.check_output("nohup sh -c %s > %s 2>&1 & echo $!", loop, dump)).strip()
        try:
            resumed = jobs.run_part(setup.access, setup.job(job_id, login=setup.slow, docroot="budget"))
        finally:
            setup.node_host.run("kill %s", pid)
        seen = str(setup.node_host.check_output("cat %s", dump)).split("----")
        setup.node_host.run("rm -f %s", dump)
        assert resumed.state == "done", resumed
        ours = _regular(setup.our_tree("budget"))
        assert ours == _regular(setup.old_tree(setup.slow))
        assert any("rsync" in ps and setup.slow in ps for ps in seen)
        body = [line for line in setup.key_pem.splitlines() if "PRIVATE KEY" not in line]
        assert all(line not in ps for ps in seen for line in body)
    finally:
        removed = jobs.cleanup(setup.access, job_id)
    assert f"/run/hosting-migrate/{job_id}" in removed
    left = setup.node_host.run("ls -d /run/hosting-migrate/%s /var/lib/hosting/migrate/%s", job_id, job_id)
    assert left.rc != 0 and left.stdout.strip() == ""


def test_a_password_login_copies_and_the_password_never_shows_in_the_process_list(setup: Setup) -> None:
    job_id = f"mf{uuid.uuid4().hex[:8]}"
    jobs = NodeJobs()
    dump = f"/run/ps-{job_id}.txt"
    loop = "while :; do ps -eo args; echo ----; sleep 0.05; done"
    pid = str(setup.node_host.check_output("nohup sh -c %s > %s 2>&1 & echo $!", loop, dump)).strip()
    try:
        outcome = jobs.run_part(setup.access, setup.job(job_id, login=setup.pw_login, docroot="pw",
                                                        files_key="", files_password=setup.password))
    finally:
        setup.node_host.run("kill %s", pid)
        jobs.cleanup(setup.access, job_id)
    seen = str(setup.node_host.check_output("cat %s", dump)).split("----")
    setup.node_host.run("rm -f %s", dump)
    assert outcome.state == "done", outcome
    assert _regular(setup.our_tree("pw")) == _regular(setup.old_tree(setup.pw_login))
    assert any("sshpass" in ps for ps in seen)
    assert all(setup.password not in ps for ps in seen)


def test_a_changed_host_key_is_refused_and_a_wrong_key_names_the_files_login(setup: Setup) -> None:
    job_id = f"mf{uuid.uuid4().hex[:8]}"
    jobs = NodeJobs()
    other = Ed25519PrivateKey.generate()
    wrong_host_key = " ".join(other.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode().split()[:2])
    try:
        job = setup.job(job_id)
        job["source_host_key"] = wrong_host_key
        outcome = jobs.run_part(setup.access, job)
        assert outcome.state == "failed" and "SSH key" in (outcome.error or "")
        wrong = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        with pytest.raises(CredentialRefused) as refused:
            jobs.run_part(setup.access, setup.job(job_id, files_key=wrong))
        assert refused.value.credential == "files"
    finally:
        jobs.cleanup(setup.access, job_id)


def test_the_same_tree_over_ftps_arrives(setup: Setup, old_provider: Any) -> None:
    tag = uuid.uuid4().hex[:6]
    spec = AccountSpec(f"mq{tag}", (f"mq{tag}.si",), CATALOG.hosting_plan("giga5"))
    secret = Secrets.generate(spec.mailboxes)
    HostingAccounts(ssh_key=Path(old_provider.ssh_key), provider_url="https://www.provider.example/").create(
        old_provider.target(), spec, secret).raise_for_status("e2e.migration_copy_files.ftps")
    old_home = str(setup.old_host.check_output("getent passwd %s | cut -d: -f6", spec.name)).strip()
    site = f"{old_home}/public_html/ftpsite"
    setup.old_host.check_output("python3 -c %s %s %s %s", FILL, site, "300000", "40")
    # over FTP: no symlinks or FIFOs at the source (a chrooted server resolves them itself), and no
    # newline in a name (an FTP listing cannot carry one); shell characters travel
    setup.old_host.check_output("cd %s && rm -f pipe escape inlink assets/up %s && printf x > %s",
                                site, HOSTILE, "x;$(id) & y.txt")
    setup.old_host.check_output("chown -R %s:%s %s", spec.name, spec.name, site)
    setup.node_host.check_output("runuser -u %s -- mkdir -p %s/ftps", setup.account, setup.home)
    job_id = f"mf{uuid.uuid4().hex[:8]}"
    jobs = NodeJobs()
    job = setup.job(job_id, docroot="ftps", files_protocol="ftps", files_port=21, files_user=spec.name,
                    files_password=secret.account, files_path="public_html/ftpsite", files_key="")
    job["flags"] = {"allow_plain_ftp": False, "skip_cert_verify": True}  # the node's self-signed certificate
    old = dict(json.loads(str(setup.old_host.check_output("python3 -c %s %s", LISTING, site))))
    try:
        outcome = jobs.run_part(setup.access, job)
        assert outcome.state == "done", outcome
        ours = setup.our_tree("ftps")
        expected = _regular(old)
        assert {n: h for n, h in _regular(ours).items() if n in expected} == expected
        assert "x;$(id) & y.txt" in ours and ".htaccess" in ours
        assert {e[2] for e in ours.values()} == {setup.uid}
        again = jobs.run_part(setup.access, job)
        assert again.state == "done" and again.counts["transferred"]["files"] == 0
        verified = jobs.run_part(setup.access, dict(job, mode="verify"))
        assert verified.counts["source"]["files"] >= len(expected)
        assert verified.counts["differences"] == []
    finally:
        jobs.cleanup(setup.access, job_id)

"""The mailbox parts of the migration copy (issue 13, items 4-6) between two throwaway
hosts: the session's ``old_provider`` (its Dovecot over IMAPS holds two mailboxes of an
account of this module's own) and the session's ``node`` (our account with the mailboxes
they land in). `NodeJobs` runs ``node/mail.py`` on our node; what arrives is compared
over IMAPS on both sides, folder by folder: count, the set of Message-IDs, each
message's flags and internal date."""

from __future__ import annotations

import imaplib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts, Secrets
from provisioner.adapters.migration_copy import NodeJobs, PartOutcome
from provisioner.adapters.migration_source import CredentialRefused
from provisioner.adapters.tls_targets.node import NodeAccess
from provisioner.domain.catalog import DEFAULT_CATALOG as CATALOG
from provisioner.domain.migration_survey import encode_imap_utf7
from tests.e2e.nodes import infra_host
from tests.servers import self_signed_tls_context

LIMIT = 100_000  # the shrunken per-message limit (RULES: 50 MB)
FOLDER = "Računi 2024"
SUB = "Arhiv.Stari"  # a folder one level down (the old Dovecot's separator is ".")
BIG_SUBJECT = "Velik prilog"
WHEN = datetime(2024, 3, 5, 10, 30, tzinfo=UTC)

# mailbox -> (folder, subject, body, flags, days before WHEN)
OLD_MAIL: dict[str, list[tuple[str, str, bytes, str, int]]] = {
    "info": [
        ("INBOX", "Pozdrav", b"Hello", r"(\Seen)", 40),
        ("INBOX", BIG_SUBJECT, b"x" * (LIMIT + 5_000), r"(\Seen)", 30),
        ("INBOX", "Tretje", b"three", r"(\Flagged)", 20),
        (FOLDER, "Račun 1", b"one", r"(\Seen \Flagged)", 10),
        (FOLDER, "Račun 2", b"two", "", 5),
    ],
    "ana": [
        ("INBOX", "Za Ano", b"a", r"(\Seen)", 3),
        ("INBOX", "Še eno", b"b" * 1000, "", 2),
        (SUB, "Staro", b"old", r"(\Seen \Answered)", 400),
    ],
}


def _message(subject: str, body: bytes) -> bytes:
    return (f"From: Ana <ana@example.org>\r\nTo: info@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\n").encode() + body + b"\r\n"


def _imap(address: str, user: str, password: str) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL(address, ssl_context=self_signed_tls_context(), timeout=20)
    imap.login(user, password)
    return imap


def _append(imap: imaplib.IMAP4_SSL, folder: str, subject: str, body: bytes, flags: str,
            days: int) -> None:
    raw = f'"{encode_imap_utf7(folder)}"'
    if folder != "INBOX":
        imap.create(raw)
    when = (WHEN - timedelta(days=days)).strftime('"%d-%b-%Y %H:%M:%S +0000"')
    typ, data = imap.append(raw, flags or None, when, _message(subject, body))
    assert typ == "OK", data


Snapshot = dict[str, dict[str, tuple[frozenset[str], datetime]]]


def _snapshot(address: str, user: str, password: str) -> Snapshot:
    """Folder (raw name) -> Message-ID -> (flags, internal date), over IMAPS."""
    imap = _imap(address, user, password)
    out: Snapshot = {}
    try:
        typ, listing = imap.list()
        for line in listing:
            assert isinstance(line, bytes)
            flags, _, rest = line.partition(b") ")
            if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                continue
            name = rest.partition(b" ")[2].strip(b'"').decode()
            typ, _ = imap.select(f'"{name}"', readonly=True)
            assert typ == "OK"
            typ, data = imap.uid("FETCH", "1:*", "(FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            folder: dict[str, tuple[frozenset[str], datetime]] = {}
            for item in data:
                if not isinstance(item, tuple):
                    continue
                meta, header = item
                mid = header.decode().partition(":")[2].strip()
                flags = meta.split(b"FLAGS (", 1)[1].split(b")", 1)[0].decode().split()
                date = meta.split(b'INTERNALDATE "', 1)[1].split(b'"', 1)[0].decode()
                assert mid not in folder, f"{name}: {mid} twice"
                folder[mid] = (frozenset(f for f in flags if f != "\\Recent"),
                               datetime.strptime(date, "%d-%b-%Y %H:%M:%S %z"))
            out[name] = folder
    finally:
        imap.logout()
    return out


@dataclass
class Setup:
    old_address: str
    old_domain: str
    old_secret: Secrets
    ours: Any  # the node's HostInfo
    our_domain: str
    our_secret: Secrets
    access: NodeAccess
    node_host: Any
    old_host: Any

    def job(self, job_id: str, index: int, ours: str, *, mode: str = "copy", password: str | None = None,
            cap: int = 10**9, deadline: float = 120.0) -> dict[str, Any]:
        local = ("info", "ana")[index - 1]
        return {"job": job_id, "part": f"mailbox{index}", "mode": mode,
                "account": {"user": "x", "home": "/nonexistent", "docroot": "/nonexistent/public_html",
                            "database": "x", "mailbox": f"{ours}@{self.our_domain}"},
                "source": {"index": index, f"mail{index}_host": self.old_address, f"mail{index}_port": 993,
                           f"mail{index}_user": f"{local}@{self.old_domain}",
                           f"mail{index}_password": password or self.old_secret.mailboxes[local]},
                "flags": {"allow_plain_ftp": False, "skip_cert_verify": True},
                "source_host_key": "", "cap_bytes": cap, "deadline_s": deadline, "collation_map": {},
                "max_message_bytes": LIMIT}

    def old(self, local: str) -> Snapshot:
        return _snapshot(self.old_address, f"{local}@{self.old_domain}", self.old_secret.mailboxes[local])

    def here(self, local: str) -> Snapshot:
        return _snapshot(self.ours.address, f"{local}@{self.our_domain}", self.our_secret.mailboxes[local])


@pytest.fixture(scope="module")
def setup(old_provider: Any, node: Any, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    tag = uuid.uuid4().hex[:6]
    old_spec = AccountSpec(f"mo{tag}", (f"mo{tag}.si",), CATALOG.hosting_plan("giga5"),
                           mailboxes=("info", "ana"))
    old_secret = Secrets.generate(old_spec.mailboxes)
    HostingAccounts(ssh_key=Path(old_provider.ssh_key), provider_url="https://www.provider.example/").create(
        old_provider.target(), old_spec, old_secret).raise_for_status("e2e.migration_copy_mail.old")
    for local, messages in OLD_MAIL.items():
        imap = _imap(old_provider.address, f"{local}@{old_spec.domains[0]}", old_secret.mailboxes[local])
        try:
            for folder, subject, body, flags, days in messages:
                _append(imap, folder, subject, body, flags, days)
        finally:
            imap.logout()
    info = node.info
    our_spec = AccountSpec(f"mn{tag}", (f"mn{tag}.si",), CATALOG.hosting_plan("giga5"),
                           mailboxes=("info", "ana", "capped", "spare"))
    our_secret = Secrets.generate(our_spec.mailboxes)
    HostingAccounts(ssh_key=Path(info.ssh_key), provider_url="https://www.provider.example/").create(
        info.target(), our_spec, our_secret).raise_for_status("e2e.migration_copy_mail.ours")
    return Setup(old_provider.address, old_spec.domains[0], old_secret, info, our_spec.domains[0], our_secret,
                 NodeAccess(info.name, info.address, Path(info.ssh_key), throwaway=True),
                 infra_host(info, tmp_path_factory.mktemp("ssh-ours")),
                 infra_host(old_provider, tmp_path_factory.mktemp("ssh-old")))


def _without_big(snapshot: Snapshot, big_ids: set[str]) -> Snapshot:
    return {f: {m: v for m, v in msgs.items() if m not in big_ids} for f, msgs in snapshot.items()}


@dataclass
class First:
    outcomes: dict[str, PartOutcome]
    process_lists: list[str]
    job_id: str


@pytest.fixture(scope="module")
def first(setup: Setup) -> Iterator[First]:
    """Both mailboxes copied once, the node's process list read all the while (on the
    node, every 20 ms, into a file outside the job's directories)."""
    job_id = f"mm{uuid.uuid4().hex[:8]}"
    dump = f"/root/ps-{job_id}.txt"
    loop = "while :; do ps -eo args; echo ----; sleep 0.02; done"
    pid = str(setup.node_host.check_output("nohup sh -c %s < /dev/null > %s 2>&1 & echo $!",
                                           loop, dump)).strip()
    try:
        outcomes = {local: NodeJobs().run_part(setup.access, setup.job(job_id, i, local))
                    for i, local in ((1, "info"), (2, "ana"))}
    finally:
        setup.node_host.run("kill %s", pid)
    seen = str(setup.node_host.check_output("cat %s", dump)).split("----")
    setup.node_host.run("rm -f %s", dump)
    yield First(outcomes, seen, job_id)
    NodeJobs().cleanup(setup.access, job_id)


def _big_ids(setup: Setup) -> set[str]:
    old = setup.old("info")
    imap = _imap(setup.old_address, f"info@{setup.old_domain}", setup.old_secret.mailboxes["info"])
    try:
        imap.select("INBOX", readonly=True)
        typ, data = imap.uid("SEARCH", None, "LARGER", str(LIMIT))
        uids = data[0].split()
        assert len(uids) == 1
        typ, data = imap.uid("FETCH", uids[0].decode(), "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        mid = data[0][1].decode().partition(":")[2].strip()
    finally:
        imap.logout()
    assert mid in old["INBOX"]
    return {mid}


def test_both_mailboxes_arrive_with_folders_flags_and_internal_dates(setup: Setup, first: First) -> None:
    info, ana = first.outcomes["info"], first.outcomes["ana"]
    assert (info.state, info.error, info.items) == ("done", None, 4)
    assert (ana.state, ana.error, ana.items) == ("done", None, 3)
    assert info.counts["source"] == {"INBOX": 3, FOLDER: 2}
    assert info.counts["target"] == {"INBOX": 2, FOLDER: 2} and info.counts["over_limit"] == 1
    assert ana.counts["target"] == {"INBOX": 2, SUB: 1}
    big = _big_ids(setup)
    here = setup.here("info")
    assert encode_imap_utf7(FOLDER) in here  # the folder's name kept (modified UTF-7)
    assert here == _without_big(setup.old("info"), big)
    assert here["INBOX"] and all(len(v) for v in here.values())
    assert setup.here("ana") == setup.old("ana")
    # flags and dates really vary, so the equality above says something
    flags = {v[0] for f in here.values() for v in f.values()}
    assert {frozenset({"\\Seen", "\\Flagged"}), frozenset()} <= flags
    assert len({v[1] for f in here.values() for v in f.values()}) == 4
    assert info.bytes == sum(len(_message(s, b)) for _, s, b, _, _ in OLD_MAIL["info"] if s != BIG_SUBJECT)


def test_the_message_over_the_limit_is_named_by_folder_and_subject(first: First) -> None:
    named = [n for n in first.outcomes["info"].named if n["kind"] == "over_limit"]
    assert len(named) == 1
    assert named[0]["name"] == f"INBOX: {BIG_SUBJECT}"
    assert named[0]["bytes"] > LIMIT and "not copied" in named[0]["reason"]
    assert first.outcomes["ana"].named == []


def test_the_password_never_shows_in_the_process_list(setup: Setup, first: First) -> None:
    assert len(first.process_lists) >= 2
    # the watch did see the copy run: our program and Dovecot's imap it writes through
    assert any("bin/mail.py" in ps for ps in first.process_lists)
    assert any(f"imap -u info@{setup.our_domain}" in ps for ps in first.process_lists)
    for secret in setup.old_secret.mailboxes.values():
        assert all(secret not in ps for ps in first.process_lists)


def test_a_rerun_duplicates_nothing_and_brings_what_arrived_since(setup: Setup, first: First) -> None:
    again = NodeJobs().run_part(setup.access, setup.job(first.job_id, 1, "info"))
    assert (again.state, again.items, again.bytes) == ("done", 0, 0)
    assert again.counts["already_there"] == 4
    big = _big_ids(setup)
    assert setup.here("info") == _without_big(setup.old("info"), big)
    # the cut-over's delta: a message that arrived at the old provider since
    imap = _imap(setup.old_address, f"info@{setup.old_domain}", setup.old_secret.mailboxes["info"])
    try:
        _append(imap, FOLDER, "Račun 3 (nov)", b"new", r"(\Seen)", 0)
    finally:
        imap.logout()
    delta = NodeJobs().run_part(setup.access, setup.job(first.job_id, 1, "info"))
    assert (delta.state, delta.items) == ("done", 1)
    here = setup.here("info")
    assert len(here[encode_imap_utf7(FOLDER)]) == 3
    assert here == _without_big(setup.old("info"), big)


def test_verify_names_a_message_that_is_missing_here(setup: Setup, first: First) -> None:
    jobs = NodeJobs()
    jobs.run_part(setup.access, setup.job(first.job_id, 2, "ana"))
    clean = jobs.run_part(setup.access, setup.job(first.job_id, 2, "ana", mode="verify"))
    assert clean.state == "done" and clean.counts["differences"] == []
    assert clean.counts["source"] == clean.counts["target"] == {"INBOX": 2, SUB: 1}
    setup.node_host.check_output("doveadm expunge -u %s mailbox INBOX header Subject %s",
                                 f"ana@{setup.our_domain}", "Za Ano")
    verified = jobs.run_part(setup.access, setup.job(first.job_id, 2, "ana", mode="verify"))
    assert verified.counts["target"]["INBOX"] == 1
    assert verified.counts["differences"] == [
        "INBOX: 1 of 2 messages at the old provider are not here: 'Za Ano'"]
    # the next copy brings it back, and only it
    back = jobs.run_part(setup.access, setup.job(first.job_id, 2, "ana"))
    assert back.items == 1
    assert setup.here("ana") == setup.old("ana")


def test_a_wrong_password_is_refused_naming_mailbox1(setup: Setup) -> None:
    job_id = f"mw{uuid.uuid4().hex[:8]}"
    wrong = "Not-the-imap-password-1"
    try:
        with pytest.raises(CredentialRefused) as refused:
            NodeJobs().run_part(setup.access, setup.job(job_id, 1, "spare", password=wrong))
    finally:
        NodeJobs().cleanup(setup.access, job_id)
    assert refused.value.credential == "mailbox1"
    assert wrong not in str(refused.value)
    assert setup.here("spare") == {"INBOX": {}}


def test_a_tiny_cap_stops_with_what_arrived(setup: Setup) -> None:
    job_id = f"mc{uuid.uuid4().hex[:8]}"
    first_size = len(_message("Za Ano", b"a"))
    try:
        outcome = NodeJobs().run_part(setup.access, setup.job(job_id, 2, "capped", cap=first_size + 50))
    finally:
        NodeJobs().cleanup(setup.access, job_id)
    assert (outcome.state, outcome.items) == ("cap_reached", 1)
    assert 0 < outcome.bytes <= first_size + 50
    assert sum(len(f) for f in setup.here("capped").values()) == 1
    assert outcome.counts["target"]["INBOX"] == 1


def test_an_exhausted_budget_copies_nothing_and_says_so(setup: Setup) -> None:
    job_id = f"mb{uuid.uuid4().hex[:8]}"
    try:
        outcome = NodeJobs().run_part(setup.access, setup.job(job_id, 2, "spare", deadline=0.0))
    finally:
        NodeJobs().cleanup(setup.access, job_id)
    assert (outcome.state, outcome.items, outcome.bytes) == ("budget_exhausted", 0, 0)
    assert setup.here("spare") == {"INBOX": {}}


def test_no_file_of_the_job_is_left_after_the_cleanup(setup: Setup) -> None:
    job_id = f"mx{uuid.uuid4().hex[:8]}"
    jobs = NodeJobs()
    jobs.run_part(setup.access, setup.job(job_id, 2, "spare", mode="verify"))
    assert setup.node_host.file(f"/run/hosting-migrate/{job_id}/bin/mail.py").exists
    removed = jobs.cleanup(setup.access, job_id)
    assert f"/run/hosting-migrate/{job_id}" in removed
    assert not setup.node_host.file(f"/run/hosting-migrate/{job_id}").exists
    assert not setup.node_host.file(f"/var/lib/hosting/migrate/{job_id}").exists
    secret = setup.old_secret.mailboxes["ana"]
    found = setup.node_host.run("grep -rlF -- %s /run/hosting-migrate /var/lib/hosting/migrate /tmp", secret)
    assert found.stdout.strip() == ""


def test_a_folder_prefix_keeps_the_second_mailbox_apart_and_reruns_clean(setup: Setup, first: First) -> None:
    """mailbox2 into info@ (which already holds mailbox1's mail) under a top-level folder
    named after its old address: info@'s own folders are untouched, the second mailbox's
    folders arrive under the prefix as at the old provider, a re-run copies nothing and
    verify compares within the prefixed folders. Last in the module: it adds folders to info@."""
    job_id = f"mq{uuid.uuid4().hex[:8]}"
    address = f"ana@{setup.old_domain}"
    top = address.replace(".", "_")  # '.' is our hierarchy separator

    def job(mode: str = "copy") -> dict[str, Any]:
        return {**setup.job(job_id, 2, "info", mode=mode), "folder_prefix": address}

    before = setup.here("info")
    jobs = NodeJobs()
    try:
        copied = jobs.run_part(setup.access, job())
        again = jobs.run_part(setup.access, job())
        verified = jobs.run_part(setup.access, job("verify"))
    finally:
        jobs.cleanup(setup.access, job_id)
    labels = {f"{top}.INBOX": 2, f"{top}.{SUB}": 1}
    assert (copied.state, copied.items) == ("done", 3) and copied.counts["target"] == labels
    assert [n["kind"] for n in copied.named] == ["renamed"]
    assert f"under the folder '{top}'" in copied.named[0]["reason"] and copied.named[0]["name"] == address
    assert (again.state, again.items, again.counts["already_there"]) == ("done", 0, 3)
    assert verified.counts["differences"] == [] and verified.counts["target"] == labels
    here = setup.here("info")
    assert here.get(top, {}) == {}  # the prefix itself holds no mail
    mine = {k: v for k, v in here.items() if k != top and not k.startswith(f"{top}.")}
    assert mine == before and len(mine["INBOX"]) == 2  # info@'s INBOX: only mailbox1's messages
    theirs = {k.removeprefix(f"{top}."): v for k, v in here.items() if k.startswith(f"{top}.")}
    assert theirs == setup.old("ana")

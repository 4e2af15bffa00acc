"""The node program of the migration part "files" (provisioner/adapters/migration_copy/node/
files.py), loaded the way the node runs it: how it reads rsync's output and listings, the
safe-links rule, what verify calls a difference, the lftp script, and what it refuses
before any tool runs. The program against real rsync, lftp, sshd and pure-ftpd:
tests/e2e/test_migration_copy_files.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from provisioner.adapters import migration_copy
from provisioner.domain.migration_survey import is_hostile, shown_name
from tests.unit.adapters.node_code import load_file

FILES = load_file("migration_files_unit", migration_copy.NODE_PROGRAMS / "files.py")

# rsync -v --out-format='MIGF %i %l %n' of a pull (rsync 3.2.7 and 3.5.0 print the same)
COPY_OUT = (b"receiving incremental file list\n"
            b'ignoring unsafe symlink "escape" -> "/etc"\n'
            b'skipping non-regular file "pipe"\n'
            b"MIGF cd+++++++++ 4096 assets/\n"
            b"MIGF >f+++++++++ 2 .htaccess\n"
            b"MIGF >f+++++++++ 1,000 big.bin\n"
            b"MIGF >f.st...... 7 bad\\#012name;$(id)\n"
            b"MIGF >f+++++++++ 3 \\#304\\#215rka.txt\n"
            b"MIGF cL+++++++++ 9 inlink\n"
            b'ignoring unsafe symlink "assets/up" -> "../../etc/passwd"\n'
            b"MIGF .d..t...... 4096 ./\n"
            b"\nsent 369 bytes  received 217 bytes  1,172.00 bytes/sec\n")

LIST_OUT = (b"drwxr-xr-x           4096 2026/12/02 07:47:35 .\n"
            b"-rw-r--r--              2 2026/12/02 07:47:03 .htaccess\n"
            b"-rw-r--r--      3,145,728 2026/12/02 07:47:35 big.bin\n"
            b"-rw-r--r--              1 2026/12/02 07:47:03 bad\\#012name;$(id)\n"
            b"lrwxrwxrwx              4 2026/12/02 07:47:03 escape -> /etc\n"
            b"lrwxrwxrwx              9 2026/12/02 07:47:03 inlink -> index.php\n"
            b"prw-r--r--              0 2026/12/02 07:47:03 pipe\n"
            b"drwxr-xr-x           4096 2026/12/02 07:47:03 assets\n")


@pytest.mark.parametrize("raw", ["index.php", "bad\nname;$(id)", "-rf", "a b", "čšž.txt", "x`y`", "..",
                                 "tab\there", "back\\slash", "quote'", "ok-name_1.txt"])
def test_the_node_names_and_flags_a_name_as_the_survey_does(raw: str) -> None:
    assert FILES.shown(raw) == shown_name(raw)
    assert FILES.hostile(raw) == is_hostile(raw)


def test_rsync_escapes_are_undone_byte_for_byte() -> None:
    assert FILES.rsync_unescape(b"bad\\#012name;$(id)") == "bad\nname;$(id)"
    assert FILES.rsync_unescape(b"\\#304\\#215rka") == "črka"
    assert FILES.rsync_unescape(b"\\#377") == "\udcff"  # not UTF-8: kept, not guessed


def test_the_copy_output_counts_transfers_and_names_what_was_left_out() -> None:
    parsed = FILES.parse_rsync_copy(COPY_OUT.replace(b"1,000", b"1000"))
    assert (parsed["files"], parsed["dirs"], parsed["links"], parsed["bytes"]) == (4, 1, 1, 2 + 1000 + 7 + 3)
    assert [e["name"] for e in parsed["excluded"]] == ["escape", "pipe", "assets/up"]
    assert "/etc" in parsed["excluded"][0]["reason"] and "outside" in parsed["excluded"][0]["reason"]
    assert "bad\nname;$(id)" in parsed["names"] and "črka.txt" in parsed["names"]
    hostile = [n for n in parsed["names"] if FILES.hostile(n)]
    assert hostile == ["bad\nname;$(id)"]


def test_a_listing_gives_kinds_sizes_times_and_link_targets() -> None:
    entries = FILES.parse_rsync_list(LIST_OUT)
    assert "." not in entries
    assert entries["big.bin"] == ("-", 3_145_728, "2026/12/02 07:47:35", "")
    assert entries["bad\nname;$(id)"][:2] == ("-", 1)
    assert entries["escape"][0::3] == ("l", "/etc") and entries["inlink"][3] == "index.php"
    assert entries["pipe"][0] == "p" and entries["assets"][0] == "d"
    assert FILES.summary(entries) == {"files": 3, "dirs": 1, "bytes": 3_145_731, "symlinks": 2}


@pytest.mark.parametrize(("name", "target", "unsafe"), [
    ("escape", "/etc", True),
    ("inlink", "index.php", False),
    ("a/b/up", "../x", False),
    ("a/up", "../../etc/passwd", True),
    ("up", "..", True),
    ("a/self", "./../a/./f", False),
    ("empty", "", True),
])
def test_the_safe_links_rule(name: str, target: str, unsafe: bool) -> None:
    assert FILES.unsafe_link(name, target) is unsafe


def test_verify_names_each_difference_and_not_what_is_only_here() -> None:
    source = FILES.parse_rsync_list(LIST_OUT)
    here = dict(source)
    assert FILES.compare(source, here) == []
    here.pop("big.bin")
    here[".htaccess"] = ("-", 3, "2026/12/02 07:47:03", "")
    here["bad\nname;$(id)"] = ("-", 1, "2026/12/02 08:00:00", "")
    here.pop("inlink")
    here.pop("escape")  # a link out of the tree is not copied: not a difference
    here.pop("assets")
    here["index.html"] = ("-", 10, "2026/12/02 07:00:00", "")  # ours only
    assert FILES.compare(source, here) == [
        "size differs: .htaccess (source 2 bytes, here 3)",
        "directory missing here: assets",
        "modified differs: bad\\nname;$(id) (source 2026/12/02 07:47:03, here 2026/12/02 08:00:00)",
        "missing here: big.bin",
        "symlink missing here: inlink",
    ]
    assert "modified" not in " ".join(FILES.compare(source, here, mtimes=False))


def test_the_sample_takes_the_largest_and_a_seeded_pick() -> None:
    files = {f"f{i:03d}": i for i in range(100)}
    first = FILES.pick_sample(files, "m42")
    assert first[:4] == ["f099", "f098", "f097", "f096"] and len(first) == 16 == len(set(first))
    assert FILES.pick_sample(files, "m42") == first
    assert FILES.pick_sample(files, "m43") != first
    assert FILES.pick_sample({"a": 1}, "m42") == ["a"]


def test_sha256sum_z_output_keeps_names_raw() -> None:
    out = b"a" * 64 + b"  bad\nname;$(id)\0" + b"b" * 64 + b"  big.bin\0"
    assert FILES.parse_sha256sum_z(out) == {"bad\nname;$(id)": "a" * 64, "big.bin": "b" * 64}


def _job(**source: Any) -> dict[str, Any]:
    return {"job": "m42", "part": "files", "mode": "copy",
            "source": {"files_protocol": "ftps", "files_host": "old.example.si", "files_port": 21,
                       "files_user": "stari@example.si", "files_password": 'p"a\\ss; !x', "files_path": "www",
                       **source},
            "flags": {"allow_plain_ftp": False, "skip_cert_verify": False}}


def test_the_lftp_script_quotes_the_password_and_verifies_the_certificate() -> None:
    script = FILES.lftp_script(_job(), "/www", "/srv/hosting/acct/public_html")
    assert 'user "stari@example.si" "p\\"a\\\\ss; !x"' in script.splitlines()
    assert "set ssl:verify-certificate yes" in script and "set ftp:ssl-force yes" in script
    mirror = script.splitlines()[-1]
    assert mirror.startswith("mirror --continue --only-newer --parallel=4 --no-perms --no-symlinks")
    assert mirror.endswith('"/www" "/srv/hosting/acct/public_html"')
    skip = dict(_job(), flags={"allow_plain_ftp": False, "skip_cert_verify": True})
    assert "set ssl:verify-certificate no" in FILES.lftp_script(skip, "/www", "/d")
    plain = FILES.lftp_script(_job(files_protocol="ftp"), "/www", "/d")
    assert "set ftp:ssl-allow no" in plain and "ssl-force" not in plain
    with pytest.raises(ValueError, match="control character"):
        FILES.lftp_quote("two\nlines")


@pytest.mark.parametrize(("field", "value"), [
    ("files_host", "-oProxyCommand=sh"),
    ("files_host", "old host"),
    ("files_user", "-lroot"),
    ("files_user", "a b"),
    ("files_path", "www\nrm"),
    ("files_protocol", "scp"),
    ("files_port", "22; id"),
])
def test_bad_source_fields_are_refused_before_anything_runs(field: str, value: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        FILES.source_fields(_job(**{field: value}))
    assert stopped.value.code == 5
    event = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert event["event"] == "error" and event["kind"] == "invalid"
    assert 'p"a' not in json.dumps(event)


def test_a_path_starting_with_a_dash_is_made_relative() -> None:
    assert FILES.source_fields(_job(files_path="-x"))[4] == "./-x"
    assert FILES.source_fields(_job(files_path=""))[4] == "."


@pytest.mark.parametrize("docroot", ["/etc", "/srv/hosting/acct/../other/public_html", "public_html",
                                     "/srv/hosting/acct"])
def test_a_docroot_outside_the_home_is_refused(docroot: str, capsys: pytest.CaptureFixture[str]) -> None:
    job = dict(_job(), account={"user": "nobody", "home": "/srv/hosting/acct", "docroot": docroot})
    with pytest.raises(SystemExit):
        FILES.account_paths(job)
    assert json.loads(capsys.readouterr().out.strip())["kind"] == "invalid"


def test_the_walk_counts_regular_files_and_never_follows_a_link(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"x" * 10)
    (tmp_path / ".dot").write_bytes(b"y" * 5)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"z" * 1000)
    (tmp_path / "link").symlink_to(outside)
    os.mkfifo(tmp_path / "pipe")
    tree = FILES.Tree(str(tmp_path))
    assert tree.walk() == (15, 2, 1)
    (tmp_path / "d" / "b").write_bytes(b"w" * 100)
    assert tree.measure() == 15  # within the walk's own pause: the last figure
    tree.next_at = 0.0
    assert tree.measure() == 115


@pytest.mark.parametrize(("err", "kind", "credential"), [
    ("Permission denied (publickey,password).\r\nrsync: connection unexpectedly closed", "refused", "files"),
    ("Permission denied, please try again.", "refused", "files"),
    ("Host key verification failed.\r\nrsync: connection unexpectedly closed", "invalid", None),
    ('rsync: [sender] change_dir "/home/x/nope" failed: No such file or directory (2)', "invalid", None),
    ("bash: line 1: rsync: command not found", "invalid", None),
])
def test_an_ssh_failure_is_told_apart(err: str, kind: str, credential: str | None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        FILES.classify_ssh_failure(err)
    event = json.loads(capsys.readouterr().out.strip())
    assert (event["kind"], event["credential"]) == (kind, credential)


def test_a_dropped_connection_is_left_to_the_caller_and_per_file_errors_are_named() -> None:
    FILES.classify_ssh_failure("rsync: connection unexpectedly closed (0 bytes received so far) [Receiver]")
    err = ('rsync: [sender] send_files failed to open "/home/x/site/secret\\#012.txt": '
           "Permission denied (13)\n"
           "rsync error: some files/attrs were not transferred (code 23) at main.c(1865)\n")
    items = FILES.error_items(err)
    assert [i["name"] for i in items] == ["/home/x/site/secret\\n.txt"]

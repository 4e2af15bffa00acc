"""The migration part "files" on the node (issue 13, items 4-6): the old site's files
pulled from the old provider into the account's docroot, and verified.

Run by the controller as root (``python3 -I bin/files.py``, the job on stdin; the contract
is in ``common.py``). Standard library only.

* SFTP/SSH sources: ``rsync -rlt --safe-links --partial -s`` over ``ssh`` (the old host's
  key pinned, ``-F /dev/null``), **run as the account's user** (`run_watched(user=...)`):
  it cannot write anywhere the account could not; no owner, group, devices or specials;
  symlinks pointing out of the tree are not copied and each is named; names with a
  newline or shell characters travel inside rsync's protocol (``-s``) and arrive as they
  are, each named as hostile. Resumable: rsync's quick check skips what arrived, a file
  cut short is finished from its partial copy.
* FTP/FTPS sources: ``lftp mirror --continue --only-newer --parallel`` as the account's
  user, driven by a script file in the job's secrets (the password never in argv);
  FTPS by default, plain FTP only with ``allow_plain_ftp``, the certificate unverified
  only with ``skip_cert_verify``. A listing over ``ftplib`` first names what is not
  copied (symlinks, specials) and the hostile names.
* The caps: ``run_watched`` polls a walk of the docroot (bytes of regular files, the
  tool's temporary files included); the walk is repeated at most every twenty times its
  own duration (a walk of 20,000 files took 42 ms here: one every 0.84 s, 5 % of a
  core). What this part brought is the docroot's bytes now minus its bytes before the
  first run (kept in the checkpoint), so a re-run counts what earlier runs brought.
* verify: the source's listing over the same route (``rsync --list-only`` or an MLSD
  walk) against the docroot's; each regular file and directory of the source must be
  here with its size and modification time; sha256 of a sample (the largest files and a
  seeded random pick) on both sides (``sha256sum`` over SSH, a streamed RETR over FTP).
  Each difference is named.

The key and known-hosts files ssh needs are made readable by the account's user (ssh
runs as that user): they are the customer's own credentials for the customer's own old
host, and they stay in the job's ``secrets`` directory, wiped by the cleanup.
"""

from __future__ import annotations

import ftplib
import hashlib
import os
import posixpath
import pwd
import random
import re
import shlex
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PART = "files"
MARK = "MIGF "  # rsync's --out-format prefix: a transferred entry
RSYNC_TIMEOUT_S = 60
FTP_TIMEOUT_S = 20
SAMPLE_LARGEST, SAMPLE_RANDOM = 4, 12
WALK_PAUSE = 20  # the docroot walk's pause, in units of its own duration (5 % of a core)
MAX_NAMED = 200  # items named per kind (the counts hold the whole numbers)
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_HOSTILE = re.compile(r"[\x00-\x1f\x7f`$\\;|&<>*?'\"!\n]")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                   r"[A-Za-z0-9])?)*\.?|\[?[0-9A-Fa-f:.]+\]?)$")
_RSYNC_ESC = re.compile(rb"\\#([0-7]{3})")
_LIST = re.compile(r"^([-dlpscb])[rwxsStT-]{9}\S*\s+([\d,]+)\s+(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d)\s(.*)$")
_UNSAFE = re.compile(r'^ignoring unsafe symlink "(.*)" -> "(.*)"$')
_NONREG = re.compile(r'^skipping non-regular file "(.*)"$')


# -- pure helpers (tests/unit/adapters/test_migration_files.py) ------------------------------
def shown(name: str) -> str:
    """A name as the report shows it: control characters escaped (as the survey does)."""
    return "".join(ch if ch.isprintable() and ch != "\\" else ascii(ch)[1:-1] for ch in name)


def hostile(name: str) -> bool:
    """A name a shell, a path or a template must not see raw (the survey's rule)."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    if base in (".", "..") or base.startswith("-") or _HOSTILE.search(base):
        return True
    return any(0xDC80 <= ord(ch) <= 0xDCFF for ch in base)


def rsync_unescape(raw: bytes) -> str:
    """A name as rsync printed it (``\\#ooo`` for each byte it would not print) back to
    the name itself (undecodable bytes kept as surrogates)."""
    return _RSYNC_ESC.sub(lambda m: bytes([int(m.group(1), 8)]), raw).decode("utf-8", "surrogateescape")


def unsafe_link(name: str, target: str) -> bool:
    """rsync's ``--safe-links`` rule: absolute, or climbing above the tree's top."""
    if not target or target.startswith("/"):
        return True
    depth = name.count("/")
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def parse_rsync_copy(out: bytes) -> dict[str, Any]:
    """rsync's ``-v --out-format='MIGF %i %l %n'`` output: what was transferred, and what
    it would not copy (unsafe symlinks, non-regular files)."""
    files = dirs = links = size = 0
    excluded: list[dict[str, str]] = []
    names: list[str] = []
    for raw in out.split(b"\n"):
        line = raw.rstrip(b"\r")
        if line.startswith(MARK.encode()):
            fields = line[len(MARK):].split(b" ", 2)
            if len(fields) != 3:
                continue
            flags, length, name = fields[0].decode("ascii", "replace"), fields[1], rsync_unescape(fields[2])
            if flags[1:2] == "f" and flags[0] in "<>c":
                files += 1
                size += int(length or b"0")
                names.append(name)
            elif flags[1:2] == "d" and flags[2:3] == "+":
                dirs += 1
                names.append(name.rstrip("/"))
            elif flags[1:2] == "L" and flags[0] in "c>":
                links += 1
                names.append(name)
            continue
        text = rsync_unescape(line)
        m = _UNSAFE.match(text)
        if m:
            reason = f"a symlink to {shown(m.group(2))}, outside the site"
            excluded.append({"name": m.group(1), "reason": reason})
            continue
        m = _NONREG.match(text)
        if m:
            excluded.append({"name": m.group(1), "reason": "not a regular file (a FIFO, socket or device)"})
    return {"files": files, "dirs": dirs, "links": links, "bytes": size, "excluded": excluded, "names": names}


def parse_rsync_list(out: bytes) -> dict[str, tuple[str, int, str, str]]:
    """``rsync --list-only -r -l --no-h`` lines: name -> (kind, size, mtime, link target)."""
    entries: dict[str, tuple[str, int, str, str]] = {}
    for raw in out.split(b"\n"):
        m = _LIST.match(raw.rstrip(b"\r").decode("ascii", "surrogateescape"))
        if m is None:
            continue
        kind, size, when, rest = m.group(1), int(m.group(2).replace(",", "")), m.group(3), m.group(4)
        target = ""
        if kind == "l" and " -> " in rest:
            rest, target = rest.split(" -> ", 1)
            target = rsync_unescape(target.encode("ascii", "surrogateescape"))
        name = rsync_unescape(rest.encode("ascii", "surrogateescape"))
        if name != ".":
            entries[name] = (kind, size, when, target)
    return entries


def lftp_quote(value: str) -> str:
    """A value inside an lftp script (double quotes, backslash escapes); no line breaks."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError("a control character in an lftp value")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pick_sample(files: dict[str, int], seed: str) -> list[str]:
    """The files whose hashes are compared: the largest few and a seeded random pick."""
    by_size = sorted(files, key=lambda n: (-files[n], n))
    chosen = by_size[:SAMPLE_LARGEST]
    rest = sorted(by_size[SAMPLE_LARGEST:])
    chosen += random.Random(seed).sample(rest, min(SAMPLE_RANDOM, len(rest)))
    return chosen


def compare(source: dict[str, tuple[str, int, str, str]], target: dict[str, tuple[str, int, str, str]],
            *, mtimes: bool = True) -> list[str]:
    """What the source holds that is not here as it is there (regular files, directories,
    symlinks inside the tree); what is only here is not a difference."""
    out: list[str] = []
    for name in sorted(source):
        kind, size, when, link = source[name]
        mine = target.get(name)
        if kind == "-":
            if mine is None or mine[0] != "-":
                out.append(f"missing here: {shown(name)}")
            elif mine[1] != size:
                out.append(f"size differs: {shown(name)} (source {size} bytes, here {mine[1]})")
            elif mtimes and mine[2] != when:
                out.append(f"modified differs: {shown(name)} (source {when}, here {mine[2]})")
        elif kind == "d":
            if mine is None or mine[0] != "d":
                out.append(f"directory missing here: {shown(name)}")
        elif kind == "l" and link and not unsafe_link(name, link):
            if mine is None or mine[0] != "l":
                out.append(f"symlink missing here: {shown(name)}")
    return out


def summary(entries: dict[str, tuple[str, int, str, str]]) -> dict[str, int]:
    regular = [e for e in entries.values() if e[0] == "-"]
    return {"files": len(regular), "dirs": sum(1 for e in entries.values() if e[0] == "d"),
            "bytes": sum(e[1] for e in regular), "symlinks": sum(1 for e in entries.values() if e[0] == "l")}


# -- the docroot ----------------------------------------------------------------------------
class Tree:
    """Bytes, files and directories under the docroot (symlinks never followed). `measure`
    re-walks at most every `WALK_PAUSE` times the last walk's duration (and every 0.4 s)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.cached = (0, 0, 0)
        self.next_at = 0.0

    def walk(self) -> tuple[int, int, int]:
        started = time.monotonic()
        size = files = dirs = 0
        stack = [self.root]
        while stack:
            try:
                with os.scandir(stack.pop()) as it:
                    for entry in it:
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                dirs += 1
                                stack.append(entry.path)
                            elif entry.is_file(follow_symlinks=False):
                                files += 1
                                size += entry.stat(follow_symlinks=False).st_size
                        except OSError:
                            continue
            except OSError:
                continue
        took = time.monotonic() - started
        self.cached = (size, files, dirs)
        self.next_at = time.monotonic() + max(0.4, WALK_PAUSE * took)
        return self.cached

    def measure(self) -> int:
        if time.monotonic() >= self.next_at:
            self.walk()
        return self.cached[0]


def account_paths(job: dict[str, Any]) -> tuple[str, int, int, str]:
    """(user, uid, gid, docroot): the docroot must be a real directory of the account's
    user inside its home."""
    account = job.get("account") or {}
    user, home = str(account.get("user", "")), str(account.get("home", ""))
    docroot = str(account.get("docroot", ""))
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        common.fail("invalid", f"the account's user {shown(user)} does not exist on this node")
    if pw.pw_uid == 0:
        common.fail("invalid", "the account's user is root")
    home_n, docroot_n = os.path.normpath(home), os.path.normpath(docroot)
    inside = docroot_n.startswith(home_n.rstrip("/") + "/") and docroot_n == docroot.rstrip("/")
    if not home_n.startswith("/") or not inside:
        common.fail("invalid", "the docroot is not a path inside the account's home")
    try:
        st = os.lstat(docroot_n)
    except OSError:
        common.fail("invalid", f"the docroot {shown(docroot_n)} does not exist")
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != pw.pw_uid:
        common.fail("invalid", f"the docroot {shown(docroot_n)} is not a directory of {shown(user)}")
    return user, pw.pw_uid, pw.pw_gid, docroot_n


def source_fields(job: dict[str, Any]) -> tuple[str, str, int, str, str]:
    """(protocol, host, port, user, path), checked: nothing in them reaches a shell or an
    option parser (the path travels inside rsync's protocol, quoted for lftp)."""
    source = job.get("source") or {}
    protocol = str(source.get("files_protocol", ""))
    host, user = str(source.get("files_host", "")), str(source.get("files_user", ""))
    path = str(source.get("files_path") or ".")
    default_port = 22 if protocol == "sftp" else 21
    try:
        port = int(source.get("files_port") or default_port)
    except (TypeError, ValueError):
        common.fail("invalid", "the files port is not a number")
    if protocol not in ("sftp", "ftp", "ftps"):
        common.fail("invalid", f"unknown files protocol {shown(protocol)}")
    if not _HOST.match(host) or not 0 < port < 65536:
        common.fail("invalid", f"bad files host or port {shown(host)}:{port}")
    if not _USER.match(user):
        common.fail("invalid", f"bad files user {shown(user)}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        common.fail("invalid", "a control character in the files path")
    if path.startswith("-"):
        path = "./" + path
    return protocol, host.strip("[]"), port, user, path


# -- running things as the account's user ----------------------------------------------------
def as_user_env(job: dict[str, Any]) -> list[str]:
    """``env`` with a clean environment: no HOME of the customer's (no ~/.popt, ~/.lftprc,
    ~/.netrc, ~/.ssh/config read by our tools)."""
    return ["env", "-i", f"PATH={CLEAN_PATH}", "HOME=/nonexistent", "LANG=C.UTF-8", "LC_ALL=C.UTF-8"]


def user_secrets(job: dict[str, Any], uid: int, gid: int) -> Path:
    """The job's secrets directory, made passable for the account's user (0711, as the
    directories above it): it can open the files made its own there, list nothing."""
    directory = common.job_dir(job) / "secrets"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(common.RUN_ROOT, 0o711)  # noqa: S103 - traverse only
    os.chmod(common.job_dir(job), 0o711)  # noqa: S103 - traverse only; the files in it are 0600
    os.chmod(directory, 0o711)  # noqa: S103
    return directory


def user_ssh(job: dict[str, Any], uid: int, gid: int) -> tuple[list[str], int | None]:
    """`common.ssh_argv` for ssh run as the account's user: ``-F /dev/null``, the user
    given with ``-l``, its key and known_hosts files the user's own. Returns (argv without
    a destination, fd for sshpass or None)."""
    source = dict(job["source"])
    user = str(source["files_user"])
    directory = user_secrets(job, uid, gid)
    argv, fd = common.ssh_argv(job, source)
    argv = argv[:-1]  # the destination: rsync names the host itself, ssh gets -l
    at = argv.index("ssh")
    argv[at + 1:at + 1] = ["-F", "/dev/null", "-l", user]
    for name in ("known_hosts", "ssh_key"):
        path = directory / name
        if path.exists():
            os.chown(path, uid, gid)
    for arg in argv:
        if not arg or any(ch.isspace() or ch in "'\"\\" for ch in arg):
            common.fail("invalid", "an ssh argument rsync could not pass on")
    return argv, fd


def rsync_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def classify_ssh_failure(err: str) -> None:
    """End the program for a refused login, a changed host key or a missing path; an
    error that is none of these returns (the caller reports it as unreachable)."""
    if "Host key verification failed" in err or "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
        common.fail("invalid", "the old host's SSH key is not the one the survey recorded (pinned): "
                               "refusing to connect")
    if any(s in err for s in ("Permission denied (", "Permission denied, please", "Too many authentication")):
        common.fail("refused", "the old provider refused the files login", credential="files")
    if "change_dir" in err and "No such file or directory" in err:
        common.fail("invalid", "the files path does not exist at the old provider")
    if "command not found" in err or "rsync: not found" in err:
        common.fail("invalid", "the old host has no rsync for an SSH copy: use its FTP/FTPS access")


def tail_lines(err: str, n: int = 3) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return shown(" | ".join(lines[-n:]))[:500]


def error_items(err: str) -> list[dict[str, str]]:
    """rsync's per-file errors (unreadable at the source, vanished) named."""
    out = []
    for line in err.splitlines():
        if line.startswith("rsync:") and '"' in line and ("failed" in line or "vanished" in line):
            name = rsync_unescape(line.split('"', 2)[1].encode("utf-8", "surrogateescape"))
            out.append({"name": shown(name), "reason": shown(line)[:300]})
    return out


# -- SSH: copy and verify --------------------------------------------------------------------
def _out_file(job: dict[str, Any], name: str) -> Any:
    return open(common.job_dir(job) / name, "w+b")  # noqa: SIM115 - closed by the caller


def _baseline(checkpoint: common.Checkpoint, tree: Tree) -> int:
    state = checkpoint.load()
    if "baseline_bytes" not in state:
        state["baseline_bytes"] = tree.walk()[0]
        checkpoint.save(state)
    return int(state["baseline_bytes"])


def _finish(state: str, tree: Tree, baseline: int, budget: common.Budget, transferred: dict[str, int],
            error: str | None = None) -> None:
    size, files, dirs = tree.walk()
    brought = max(0, size - baseline)
    if state == "done" and brought > budget.cap_bytes:
        state = "cap_reached"
    common.emit("result", part=PART, state=state, bytes=brought, items=files,
                counts={"files": files, "dirs": dirs, "bytes": size, "transferred": transferred}, error=error)


def _name_items(parsed_excluded: list[dict[str, str]], names: list[str]) -> None:
    for item in parsed_excluded[:MAX_NAMED]:
        common.emit("item", part=PART, kind="excluded", name=shown(item["name"]), reason=item["reason"])
    for name in [n for n in names if hostile(n)][:MAX_NAMED]:
        common.emit("item", part=PART, kind="hostile", name=shown(name),
                    reason="copied under its own name, which a shell or a path must not see raw")


def copy_ssh(job: dict[str, Any]) -> None:
    user, uid, gid, docroot = account_paths(job)
    _, host, _, _, path = source_fields(job)
    budget, progress, checkpoint = common.Budget(job), common.Progress(PART), common.Checkpoint(job)
    tree = Tree(docroot)
    baseline = _baseline(checkpoint, tree)
    if budget.over_bytes(max(0, tree.cached[0] - baseline)) or budget.expired():
        state = "cap_reached" if budget.over_bytes(max(0, tree.cached[0] - baseline)) else "budget_exhausted"
        _finish(state, tree, baseline, budget, {"files": 0, "bytes": 0})
        return
    ssh, fd = user_ssh(job, uid, gid)
    argv = [*as_user_env(job), "rsync", "-rlt", "--safe-links", "--partial", "-s", "-v", "--no-h",
            f"--timeout={RSYNC_TIMEOUT_S}", "--chmod=u+rwX", f"--out-format={MARK}%i %l %n",
            "-e", " ".join(ssh), f"{rsync_host(host)}:{path.rstrip('/') + '/'}", docroot + "/"]
    with _out_file(job, "files-rsync.out") as out:
        state, code, err = common.run_watched(
            argv, budget=budget, measure=lambda: max(0, tree.measure() - baseline), progress=progress,
            pass_fds=(fd,) if fd is not None else (), stdout=out, user=user)
        out.seek(0)
        parsed = parse_rsync_copy(out.read())
    _name_items(parsed["excluded"], parsed["names"])
    for item in error_items(err)[:MAX_NAMED]:
        common.emit("item", part=PART, kind="error", **item)
    transferred = {"files": parsed["files"], "bytes": parsed["bytes"], "dirs": parsed["dirs"],
                   "links": parsed["links"]}
    if state == "done" and code not in (0, 23, 24):
        classify_ssh_failure(err)
        common.fail("unreachable", f"rsync from the old provider stopped (exit {code}): {tail_lines(err)}")
    error = f"some files could not be read at the old provider (rsync exit {code})" if code == 23 else None
    _finish(state, tree, baseline, budget, transferred, error)


def _list_ssh(job: dict[str, Any], user: str, uid: int, gid: int, host: str, path: str,
              budget: common.Budget) -> bytes:
    ssh, fd = user_ssh(job, uid, gid)
    argv = [*as_user_env(job), "rsync", "--list-only", "-r", "-l", "--no-h", "-s",
            f"--timeout={RSYNC_TIMEOUT_S}", "-e", " ".join(ssh),
            f"{rsync_host(host)}:{path.rstrip('/') + '/'}"]
    with _out_file(job, "files-list-source.out") as out:
        state, code, err = common.run_watched(argv, budget=budget, measure=lambda: 0,
                                              progress=common.Progress(PART), pass_fds=(fd,) if fd else (),
                                              stdout=out, user=user)
        out.seek(0)
        listing = out.read()
    if state != "done":
        _verify_stopped(state)
    if code not in (0, 23, 24):
        classify_ssh_failure(err)
        common.fail("unreachable", f"listing the old provider's files failed (exit {code}): "
                                   f"{tail_lines(err)}")
    return listing


def _list_here(job: dict[str, Any], user: str, docroot: str, budget: common.Budget) -> bytes:
    argv = [*as_user_env(job), "rsync", "--list-only", "-r", "-l", "--no-h", docroot + "/"]
    with _out_file(job, "files-list-here.out") as out:
        state, code, err = common.run_watched(argv, budget=budget, measure=lambda: 0,
                                              progress=common.Progress(PART), stdout=out, user=user)
        out.seek(0)
        listing = out.read()
    if state != "done":
        _verify_stopped(state)
    if code not in (0, 23, 24):
        common.fail("invalid", f"listing the docroot failed (exit {code}): {tail_lines(err)}")
    return listing


def _verify_stopped(state: str) -> None:
    common.emit("result", part=PART, state=state, bytes=0, items=0, counts={}, error="verify did not finish")
    sys.exit(0)


def sha256_here(docroot: str, names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            fd = os.open(os.path.join(docroot, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                continue
            digest = hashlib.sha256()
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
            out[name] = digest.hexdigest()
    return out


def parse_sha256sum_z(out: bytes) -> dict[str, str]:
    """``sha256sum -z`` output: ``<hex>  <name>\\0`` (names raw, not escaped)."""
    hashes = {}
    for record in out.split(b"\0"):
        if len(record) > 66 and record[64:66] == b"  ":
            hashes[record[66:].decode("utf-8", "surrogateescape")] = record[:64].decode("ascii", "replace")
    return hashes


def _sha256_ssh(job: dict[str, Any], user: str, uid: int, gid: int, host: str, path: str, names: list[str],
                budget: common.Budget) -> dict[str, str]:
    if not names:
        return {}
    ssh, fd = user_ssh(job, uid, gid)
    remote = f"cd -- {shlex.quote(path)} && xargs -0 sha256sum -z --"
    list_path = common.job_dir(job) / "files-sample.in"
    list_path.write_bytes(b"\0".join(n.encode("utf-8", "surrogateescape") for n in names) + b"\0")
    with open(list_path, "rb") as names_in, _out_file(job, "files-sample.out") as out:
        state, code, err = common.run_watched(
            [*as_user_env(job), *ssh, host, remote], budget=budget, measure=lambda: 0,
            progress=common.Progress(PART), pass_fds=(fd,) if fd else (), stdin=names_in, stdout=out,
            user=user)
        out.seek(0)
        data = out.read()
    if state != "done":
        _verify_stopped(state)
    if code != 0:
        classify_ssh_failure(err)
    return parse_sha256sum_z(data)


def _hash_differences(theirs: dict[str, str], mine: dict[str, str], names: list[str]) -> list[str]:
    out = []
    for name in names:
        if name not in theirs:
            out.append(f"not hashed at the old provider: {shown(name)}")
        elif theirs[name] != mine.get(name):
            out.append(f"content differs: {shown(name)} (sha256)")
    return out


def verify_ssh(job: dict[str, Any]) -> None:
    user, uid, gid, docroot = account_paths(job)
    _, host, _, _, path = source_fields(job)
    budget = common.Budget(job)
    budget.cap_bytes = 1 << 62  # verify brings nothing
    source = parse_rsync_list(_list_ssh(job, user, uid, gid, host, path, budget))
    here = parse_rsync_list(_list_here(job, user, docroot, budget))
    differences = compare(source, here)
    same = {n: e[1] for n, e in source.items() if e[0] == "-" and here.get(n, ("",))[0] == "-"
            and here[n][1] == e[1]}
    sample = pick_sample(same, str(job["job"]))
    differences += _hash_differences(_sha256_ssh(job, user, uid, gid, host, path, sample, budget),
                                     sha256_here(docroot, sample), sample)
    _verified(source, here, differences, len(sample))


def _verified(source: dict[str, tuple[str, int, str, str]], here: dict[str, tuple[str, int, str, str]],
              differences: list[str], sampled: int) -> None:
    matched = {n: e for n, e in here.items() if n in source}
    target = summary(matched)
    target["extra"] = len(here) - len(matched)
    common.emit("result", part=PART, state="done", bytes=0, items=len(differences),
                counts={"source": summary(source), "target": target, "sampled": sampled,
                        "differences": differences[:MAX_NAMED]}, error=None)


# -- FTP / FTPS -------------------------------------------------------------------------------
def ftp_connect(job: dict[str, Any]) -> ftplib.FTP:
    protocol, host, port, user, _ = source_fields(job)
    flags = job.get("flags") or {}
    password = str((job.get("source") or {}).get("files_password") or "")
    ftp: ftplib.FTP
    if protocol == "ftp":
        if not flags.get("allow_plain_ftp"):
            common.fail("invalid", "plain FTP without the intake's allow_plain_ftp flag")
        ftp = ftplib.FTP(timeout=FTP_TIMEOUT_S)  # noqa: S321 - only with the intake's flag
    else:
        context = ssl.create_default_context()
        if flags.get("skip_cert_verify"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        ftp = ftplib.FTP_TLS(context=context, timeout=FTP_TIMEOUT_S)  # noqa: S321 - FTPS
    try:
        ftp.connect(host, port)
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.auth()
        ftp.login(user, password)
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
    except ftplib.error_perm as exc:
        ftp.close()
        if str(exc)[:3] in ("530", "331", "332"):
            common.fail("refused", "the old provider refused the files login", credential="files")
        common.fail("invalid", f"the FTP server said {shown(str(exc).replace(password, '***'))[:200]}")
    except ssl.SSLCertVerificationError:
        ftp.close()
        common.fail("invalid", "the FTPS certificate did not verify (the intake's skip_cert_verify flag "
                               "allows it)")
    except (ftplib.Error, OSError, EOFError) as exc:
        ftp.close()
        common.fail("unreachable", f"the FTP server did not answer: {type(exc).__name__}")
    return ftp


def ftp_listing(ftp: ftplib.FTP, path: str) -> tuple[str, dict[str, tuple[str, int, str, str]], list[str]]:
    """(root, name -> (kind, size, modify, target), special names) over MLSD."""
    root = posixpath.normpath(posixpath.join(ftp.pwd(), path))
    entries: dict[str, tuple[str, int, str, str]] = {}
    specials: list[str] = []
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            listed = list(ftp.mlsd(directory))
        except (ftplib.error_perm, UnicodeDecodeError):
            specials.append(directory[len(root):].lstrip("/") or ".")
            continue
        for name, facts in listed:
            kind = facts.get("type", "").lower()
            if kind in ("cdir", "pdir") or name in (".", "..") or "/" in name:
                continue
            full = posixpath.join(directory, name)
            rel = full[len(root):].lstrip("/")
            if kind == "dir":
                entries[rel] = ("d", 0, "", "")
                stack.append(full)
            elif kind == "file":
                entries[rel] = ("-", int(facts.get("size", "0") or 0), facts.get("modify", ""), "")
            elif "link" in kind:
                entries[rel] = ("l", 0, "", kind.split(":", 1)[1] if ":" in kind else "")
            else:
                specials.append(rel)
    return root, entries, specials


def lftp_script(job: dict[str, Any], remote: str, local: str, *, parallel: int = 4) -> str:
    protocol, host, port, user, _ = source_fields(job)
    flags = job.get("flags") or {}
    password = str((job.get("source") or {}).get("files_password") or "")
    lines = ["set cmd:fail-exit yes", "set cmd:interactive no", f"set net:timeout {FTP_TIMEOUT_S}",
             "set net:max-retries 3", "set net:reconnect-interval-base 5", "set xfer:clobber yes",
             "set ftp:list-options -a"]
    if protocol == "ftp":
        lines += ["set ftp:ssl-allow no"]
    else:
        lines += ["set ftp:ssl-allow yes", "set ftp:ssl-force yes", "set ftp:ssl-protect-data yes",
                  "set ftp:ssl-protect-list yes",
                  f"set ssl:verify-certificate {'no' if flags.get('skip_cert_verify') else 'yes'}"]
    lines += [f"open -p {port} {lftp_quote(host)}", f"user {lftp_quote(user)} {lftp_quote(password)}",
              f"mirror --continue --only-newer --parallel={parallel} --no-perms --no-symlinks --verbose=1 "
              f"{lftp_quote(remote)} {lftp_quote(local)}"]
    return "\n".join(lines) + "\n"


def copy_ftp(job: dict[str, Any]) -> None:
    user, uid, gid, docroot = account_paths(job)
    _, _, _, _, path = source_fields(job)
    budget, progress, checkpoint = common.Budget(job), common.Progress(PART), common.Checkpoint(job)
    tree = Tree(docroot)
    baseline = _baseline(checkpoint, tree)
    if budget.over_bytes(max(0, tree.cached[0] - baseline)) or budget.expired():
        state = "cap_reached" if budget.over_bytes(max(0, tree.cached[0] - baseline)) else "budget_exhausted"
        _finish(state, tree, baseline, budget, {"files": 0, "bytes": 0})
        return
    ftp = ftp_connect(job)
    try:
        root, entries, specials = ftp_listing(ftp, path)
    except (ftplib.Error, OSError, EOFError) as exc:
        common.fail("unreachable", f"listing the FTP server failed: {type(exc).__name__}")
    finally:
        try:
            ftp.quit()
        except (ftplib.Error, OSError, EOFError):
            ftp.close()
    excluded = [{"name": n, "reason": f"a symlink to {shown(e[3]) or 'somewhere'}, not copied over FTP"}
                for n, e in sorted(entries.items()) if e[0] == "l"]
    excluded += [{"name": n, "reason": "not a regular file or unreadable"} for n in specials]
    directory = user_secrets(job, uid, gid)
    script = common.secret_file(job, "lftp", lftp_script(job, root, docroot))
    os.chown(script, uid, gid)
    argv = [*as_user_env(job), "lftp", "--norc", "-f", str(directory / "lftp")]
    with _out_file(job, "files-lftp.out") as out:
        state, code, err = common.run_watched(
            argv, budget=budget, measure=lambda: max(0, tree.measure() - baseline), progress=progress,
            stdout=out, user=user)
        out.seek(0)
        log = out.read()
    transferred = log.count(b"Transferring file")
    _name_items(excluded, [n for n, e in entries.items() if e[0] in "-d"])
    if state == "done" and code != 0:
        if "Login failed" in err or "530" in err:
            common.fail("refused", "the old provider refused the files login", credential="files")
        if "Certificate verification" in err:
            common.fail("invalid", "the FTPS certificate did not verify")
        common.fail("unreachable", f"lftp mirror stopped (exit {code}): {tail_lines(err)}")
    _finish(state, tree, baseline, budget, {"files": transferred})


def verify_ftp(job: dict[str, Any]) -> None:
    user, uid, gid, docroot = account_paths(job)
    _, _, _, _, path = source_fields(job)
    ftp = ftp_connect(job)
    try:
        root, source, _ = ftp_listing(ftp, path)
        here = parse_rsync_list(_list_here(job, user, docroot, _endless(job)))
        differences = compare(source, here, mtimes=False)
        same = {n: e[1] for n, e in source.items() if e[0] == "-" and here.get(n, ("",))[0] == "-"
                and here[n][1] == e[1]}
        sample = pick_sample(same, str(job["job"]))
        theirs = {}
        for name in sample:
            digest = hashlib.sha256()
            ftp.retrbinary(f"RETR {posixpath.join(root, name)}", digest.update)
            theirs[name] = digest.hexdigest()
    except (ftplib.Error, OSError, EOFError) as exc:
        common.fail("unreachable", f"the FTP server stopped answering: {type(exc).__name__}")
    finally:
        try:
            ftp.quit()
        except (ftplib.Error, OSError, EOFError):
            ftp.close()
    differences += _hash_differences(theirs, sha256_here(docroot, sample), sample)
    _verified(source, here, differences, len(sample))


def _endless(job: dict[str, Any]) -> common.Budget:
    budget = common.Budget(job)
    budget.cap_bytes = 1 << 62
    return budget


def main() -> None:
    job = common.read_job()
    protocol = source_fields(job)[0]
    mode = job.get("mode")
    if mode not in ("copy", "verify"):
        common.fail("invalid", "unknown mode")
    try:
        if protocol == "sftp":
            (copy_ssh if mode == "copy" else verify_ssh)(job)
        else:
            (copy_ftp if mode == "copy" else verify_ftp)(job)
    except subprocess.SubprocessError as exc:
        common.fail("unreachable", f"a tool failed to run: {type(exc).__name__}")


if __name__ == "__main__":
    main()

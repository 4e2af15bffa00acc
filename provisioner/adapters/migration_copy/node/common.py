"""Shared by the migration part programs (`files.py`, `database.py`, `mail.py`) that the
controller pushes to a hosting node and runs there as root (issue 13, items 4-6).

Python 3 standard library only: these files run on the node, not in the controller's
environment, and import nothing of the provisioner. The contract with the controller
(`provisioner.adapters.migration_copy.NodeJobs`):

* a program is started as ``python3 -I /run/hosting-migrate/<job>/bin/<program>.py`` in
  the job's directory; its argv never holds anything from the customer;
* the job is one JSON object on stdin (`read_job`): ``job``, ``part``, ``mode`` ("copy" or
  "verify"), ``account``, ``source`` (that part's fields of the migration source, secrets
  included), ``flags``, ``cap_bytes`` and ``deadline_s`` (what is left of the caps for
  this part), and part-specific keys;
* it reports as JSON lines on stdout (`emit`): ``progress`` (throttled), ``item`` (each
  thing named in the report: excluded, over the limit, refused), then exactly one
  ``result`` (state ``done``, ``cap_reached``, ``budget_exhausted``, ``failed``) or one
  ``error`` (`fail`: ``refused`` naming the credential, ``unreachable``, ``invalid``);
* secrets reach the tools it runs through files in the job's ``secrets`` directory
  (0600, on tmpfs, removed by the controller's cleanup) or through a pipe
  (``sshpass -d``), never through argv or the environment;
* checkpoints live in ``/var/lib/hosting/migrate/<job>/`` (`Checkpoint`) so that a re-run
  after a dropped connection or a killed worker resumes instead of starting again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

RUN_ROOT = Path("/run/hosting-migrate")
STATE_ROOT = Path("/var/lib/hosting/migrate")
EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_INVALID = 3, 4, 5
PROGRESS_EVERY_S = 1.0


def read_job() -> dict[str, Any]:
    job = json.loads(sys.stdin.read())
    if not isinstance(job, dict) or not str(job.get("job", "")).replace("-", "").isalnum():
        fail("invalid", "the job is not an object with a job id")
    return job


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def fail(kind: str, message: str, *, credential: str | None = None) -> NoReturn:
    """End the program with an ``error`` event (never a secret in ``message``)."""
    emit("error", kind=kind, message=message, credential=credential)
    code = {"refused": EXIT_REFUSED, "unreachable": EXIT_UNREACHABLE}.get(kind, EXIT_INVALID)
    sys.exit(code)


def job_dir(job: dict[str, Any]) -> Path:
    return RUN_ROOT / str(job["job"])


def secret_file(job: dict[str, Any], name: str, content: str | bytes) -> Path:
    """A file only root can read, in the job's tmpfs directory (wiped by the cleanup)."""
    directory = job_dir(job) / "secrets"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content.encode() if isinstance(content, str) else content)
    return path


class Checkpoint:
    """A part's resumable state: ``/var/lib/hosting/migrate/<job>/<part>.json``."""

    def __init__(self, job: dict[str, Any]) -> None:
        directory = STATE_ROOT / str(job["job"])
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = directory / f"{job['part']}.json"

    def load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def save(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)


class Budget:
    """What is left of the caps for this part: bytes, and seconds from the start."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.cap_bytes = int(job["cap_bytes"])
        self.deadline = time.monotonic() + float(job["deadline_s"])

    def over_bytes(self, done: int) -> bool:
        return done >= self.cap_bytes

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def left_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


class Progress:
    """``progress`` events, at most one a second (and the last one always)."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.last = 0.0

    def __call__(self, done_bytes: int, items: int = 0, *, force: bool = False, **extra: Any) -> None:
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            emit("progress", part=self.part, bytes=done_bytes, items=items, **extra)


def known_hosts_file(job: dict[str, Any], host: str, port: int) -> Path:
    """The old provider's SSH host key pinned (``source_host_key`` from the survey:
    ``<type> <base64>``): OpenSSH then refuses any other key."""
    key = str(job.get("source_host_key") or "")
    if len(key.split()) != 2:
        fail("invalid", "the old provider's SSH host key was not recorded by the survey")
    name = host if port == 22 else f"[{host}]:{port}"
    return secret_file(job, "known_hosts", f"{name} {key}\n")


def ssh_argv(job: dict[str, Any], source: dict[str, Any]) -> tuple[list[str], int | None]:
    """``ssh`` to the old provider as the source's SFTP/SSH user, host key pinned, and
    how to give it the secret: a key file (0600 in the job's secrets), or the password
    through ``sshpass -d FD`` from a pipe already written and closed (pass that fd to the
    child: `run_watched`'s ``pass_fds``). Returns (argv ending with the destination, fd or None)."""
    host, port, user = str(source["files_host"]), int(source["files_port"]), str(source["files_user"])
    options = ["-o", "BatchMode=no", "-o", "StrictHostKeyChecking=yes",
               "-o", f"UserKnownHostsFile={known_hosts_file(job, host, port)}",
               "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20",
               "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3",
               "-o", "LogLevel=ERROR", "-p", str(port)]
    if source.get("files_key"):
        key = secret_file(job, "ssh_key", str(source["files_key"]).rstrip("\n") + "\n")
        argv = ["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "PasswordAuthentication=no", *options]
        return [*argv, f"{user}@{host}"], None
    read_fd, write_fd = os.pipe()
    os.write(write_fd, str(source["files_password"]).encode() + b"\n")
    os.close(write_fd)
    argv = ["sshpass", f"-d{read_fd}", "ssh", "-o", "PubkeyAuthentication=no",
            "-o", "NumberOfPasswordPrompts=1", *options]
    return [*argv, f"{user}@{host}"], read_fd


def run_watched(argv: Sequence[str], *, budget: Budget, measure: Callable[[], int],
                progress: Progress, pass_fds: Sequence[int] = (), stdin: Any = subprocess.DEVNULL,
                stdout: Any = subprocess.DEVNULL, user: str | None = None,
                poll_s: float = 0.5) -> tuple[str, int, str]:
    """Run ``argv`` (as ``user`` through ``runuser`` when given) in its own process
    group, polling ``measure()`` (bytes landed so far) and stopping the whole group when
    the byte cap or the time budget is reached. Returns (state, exit code, stderr tail):
    state ``done``, ``cap_reached`` or ``budget_exhausted``."""
    full = ["runuser", "-u", user, "--", *argv] if user else list(argv)
    err_path = RUN_ROOT / f".stderr-{os.getpid()}"
    with open(err_path, "w+b") as err:
        proc = subprocess.Popen(full, stdin=stdin, stdout=stdout, stderr=err, pass_fds=tuple(pass_fds),
                                start_new_session=True)
        state = "done"
        while True:
            try:
                code = proc.wait(timeout=poll_s)
                break
            except subprocess.TimeoutExpired:
                pass
            done = measure()
            progress(done)
            if budget.over_bytes(done):
                state = "cap_reached"
            elif budget.expired():
                state = "budget_exhausted"
            else:
                continue
            _stop_group(proc)
            code = proc.wait()
            break
        err.seek(0)
        tail = err.read()[-4000:].decode(errors="replace")
    err_path.unlink(missing_ok=True)
    for fd in pass_fds:
        os.close(fd)
    return state, code, tail


def _stop_group(proc: subprocess.Popen[Any]) -> None:
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue

"""How the VPS driver reaches a VPS host: run an argv, write and read a file.

Two implementations: ``LocalRunner`` (this machine is the VPS host: the tests, a
single-box install) and ``SshRunner`` (paramiko, a remote VPS host). Commands are argv
lists, never shell strings built from input; SSH needs one string on the wire, so the
argv is quoted with ``shlex.join`` (every element is validated before it gets here, and
quoting makes each a single word for the remote shell). Secrets travel on stdin, which
is never logged or put into an error.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from provisioner.adapters.ssh import paramiko_module
from provisioner.errors import ConfigurationError, StepFailed, TransientError

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    def check(self) -> Completed:
        if self.rc != 0:
            raise StepFailed("vps.host", f"{shlex.join(self.argv)} exited {self.rc}: "
                             f"{self.stderr.strip()[-500:]}")
        return self


class CommandRunner(Protocol):
    """A VPS host as the driver sees it."""

    name: str

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 120.0,
            check: bool = True) -> Completed: ...

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None: ...

    def read_file(self, path: str) -> bytes | None: ...


def _argv(argv: Sequence[str]) -> tuple[str, ...]:
    out = tuple(argv)
    if not out or any(not isinstance(a, str) or "\0" in a for a in out):
        raise StepFailed("vps.host", f"bad argv {out!r}")
    return out


class LocalRunner:
    """This machine as the VPS host."""

    name = "localhost"

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 120.0,
            check: bool = True) -> Completed:
        args = _argv(argv)
        try:
            proc = subprocess.run(args, input=stdin if stdin is not None else b"",
                                  capture_output=True, timeout=timeout,
                                  env={"PATH": PATH, "LC_ALL": "C"}, check=False)
        except subprocess.TimeoutExpired:
            raise TransientError(f"vps host localhost: {args[0]} timed out after {timeout}s") from None
        except OSError as exc:
            raise ConfigurationError(f"vps host localhost: cannot run {args[0]}: {exc}") from None
        done = Completed(args, proc.returncode, proc.stdout.decode(errors="replace"),
                         proc.stderr.decode(errors="replace"))
        return done.check() if check else done

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        p = Path(path)
        tmp = p.with_name(f".{p.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        tmp.replace(p)

    def read_file(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None


class SshRunner:
    """A remote VPS host over SSH (paramiko), with its host key checked against
    ``known_hosts`` unless the host record says it is a throwaway host."""

    def __init__(self, name: str, address: str, *, user: str = "root", port: int = 22,
                 key_path: Path | None = None, known_hosts: Path | None = None,
                 throwaway: bool = False, timeout_s: float = 15.0) -> None:
        self.name, self.address, self.user, self.port = name, address, user, port
        self.key_path, self.known_hosts, self.throwaway = key_path, known_hosts, throwaway
        self.timeout_s = timeout_s
        self._client: Any = None

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        paramiko = paramiko_module()
        client = paramiko.SSHClient()
        if self.throwaway:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            if self.known_hosts is not None:
                client.load_host_keys(str(self.known_hosts))
            else:
                client.load_system_host_keys()
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(self.address, port=self.port, username=self.user,
                           key_filename=str(self.key_path) if self.key_path else None,
                           timeout=self.timeout_s, allow_agent=False, look_for_keys=False)
        except paramiko.SSHException as exc:
            client.close()
            raise ConfigurationError(f"vps host {self.name}: SSH refused: {exc}") from None
        except OSError as exc:
            client.close()
            raise TransientError(f"vps host {self.name}: cannot connect: {exc}") from None
        self._client = client
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 120.0,
            check: bool = True) -> Completed:
        args = _argv(argv)
        client = self._connect()
        try:
            chan_in, chan_out, chan_err = client.exec_command(
                shlex.join(args), timeout=timeout, environment={"LC_ALL": "C"})
            if stdin:
                chan_in.write(stdin)
            chan_in.channel.shutdown_write()
            out, err = chan_out.read(), chan_err.read()
            rc = chan_out.channel.recv_exit_status()
        except (OSError, EOFError) as exc:
            self.close()
            raise TransientError(f"vps host {self.name}: {args[0]}: {exc}") from None
        done = Completed(args, rc, out.decode(errors="replace"), err.decode(errors="replace"))
        return done.check() if check else done

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        sftp = self._connect().open_sftp()
        try:
            tmp = f"{path}.tmp"
            with sftp.open(tmp, "wb") as fh:
                fh.write(data)
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, path)
        finally:
            sftp.close()

    def read_file(self, path: str) -> bytes | None:
        sftp = self._connect().open_sftp()
        try:
            with sftp.open(path, "rb") as fh:
                return bytes(fh.read())
        except FileNotFoundError:
            return None
        finally:
            sftp.close()

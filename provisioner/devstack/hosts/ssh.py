"""SSH to throwaway hosts: one ed25519 key per hosts dir, waiting with a deadline."""

from __future__ import annotations

import logging
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from provisioner.devstack.hosts.images import run
from provisioner.errors import ConfigurationError, InvalidInput, TransientError


def _paramiko() -> Any:
    """Import paramiko on first use (the CLI should not pay for it on every start)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its TripleDES/Blowfish use
        import paramiko
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    return paramiko


class UnknownHostKey:
    """paramiko's missing-host-key policy for real nodes: refuse, as a configuration
    error (not retried): ops must add the node's key to known_hosts."""

    def __init__(self, where: str) -> None:
        self.where = where

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise ConfigurationError(f"{self.where}: host key of {hostname} is not in known_hosts")


@contextmanager
def node_client(address: str, *, where: str, port: int = 22, user: str = "root",
                key_path: Path | None = None, timeout_s: float = 30.0, throwaway: bool = False,
                known_hosts: Path | None = None) -> Iterator[Any]:
    """A paramiko client connected to a node, closed on exit. The host key is checked
    against known_hosts unless ``throwaway`` (throwaway test hosts only). Connection
    errors become ours: a refused key or an unknown or wrong host key is a
    ConfigurationError (not retried), anything else a TransientError."""
    paramiko = _paramiko()
    client = paramiko.SSHClient()
    try:
        if throwaway:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 (throwaway)
        else:
            client.load_system_host_keys(str(known_hosts) if known_hosts else None)
            client.set_missing_host_key_policy(UnknownHostKey(where))
        try:
            client.connect(address, port=port, username=user,
                           key_filename=str(key_path) if key_path else None,
                           timeout=timeout_s, banner_timeout=timeout_s, auth_timeout=timeout_s,
                           allow_agent=False, look_for_keys=key_path is None)
        except paramiko.AuthenticationException as exc:
            raise ConfigurationError(f"{where}: SSH key {key_path} refused: {exc}") from exc
        except paramiko.BadHostKeyException as exc:
            raise ConfigurationError(f"{where}: wrong SSH host key: {exc}") from exc
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransientError(f"{where}: SSH failed: {exc}") from exc
        yield client
    finally:
        client.close()


def ensure_keypair(path: Path) -> Path:
    """Create ``path`` (private) and ``path.pub`` once; return the private key path."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        tmp = path.with_name(path.name + ".tmp")
        for p in (tmp, tmp.with_name(tmp.name + ".pub")):
            p.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "provisioner-throwaway",
             "-f", str(tmp)])
        tmp.with_name(tmp.name + ".pub").replace(path.with_suffix(".pub"))
        tmp.replace(path)
    return path


def ssh_exec(name: str, address: str, key_path: Path, command: str, *,
             timeout_s: float = 10.0) -> tuple[int, str]:
    """Run one command as root; return (exit status, output). Errors name the host."""
    paramiko = _paramiko()
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 (throwaway)
    try:
        client.connect(address, username="root", key_filename=str(key_path),
                       timeout=timeout_s, banner_timeout=timeout_s, auth_timeout=timeout_s,
                       allow_agent=False, look_for_keys=False)
        _, stdout, _ = client.exec_command(command, timeout=timeout_s)  # noqa: S601
        out = stdout.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), out
    except paramiko.AuthenticationException as exc:
        raise InvalidInput(f"host {name} ({address}): SSH key {key_path} refused: {exc}") from exc
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise TransientError(f"host {name} ({address}): SSH failed: {exc}") from exc
    finally:
        client.close()


def wait_for_ssh(name: str, address: str, key_path: Path, *, timeout_s: float = 30.0,
                 alive: Callable[[], bool] | None = None) -> float:
    """Wait until root can run a command over SSH; return the seconds it took.

    Never hangs: every attempt has a short timeout and the whole wait a deadline.
    A refused key is reported at once (waiting will not fix it).
    """
    started = time.monotonic()
    deadline = started + timeout_s
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransientError(
                f"host {name} ({address}): no SSH answer within {timeout_s:.0f}s ({last})")
        if alive is not None and not alive():
            raise TransientError(f"host {name} ({address}): the host is not running")
        try:
            with socket.create_connection((address, 22), timeout=min(1.0, left)) as sock:
                sock.settimeout(min(2.0, left))
                banner = sock.recv(64)
            if not banner.startswith(b"SSH-"):
                last = f"unexpected banner {banner[:20]!r}"
                time.sleep(0.05)
                continue
        except OSError as exc:
            last = str(exc) or exc.__class__.__name__
            time.sleep(0.05)
            continue
        try:
            status, _ = ssh_exec(name, address, key_path, "true",
                                 timeout_s=max(1.0, min(5.0, deadline - time.monotonic())))
        except TransientError as exc:
            last = str(exc)
            time.sleep(0.1)
            continue
        if status == 0:
            return time.monotonic() - started
        last = f"'true' exited {status}"

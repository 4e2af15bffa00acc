"""SSH to throwaway hosts: one ed25519 key per hosts dir, waiting with a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from provisioner.adapters.ssh import paramiko_module as _paramiko
from provisioner.devstack.hosts.images import file_lock, run
from provisioner.errors import InvalidInput, TransientError


def ensure_keypair(path: Path) -> Path:
    """Create ``path`` (private) and ``path.pub`` once; return the private key path. Safe to
    call from several threads or processes at once (hosts booted in parallel)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    with file_lock(path.with_name(path.name + ".lock")):
        if path.exists():
            return path
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

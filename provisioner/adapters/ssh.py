"""SSH to nodes (paramiko), for the adapters that talk to a node directly (the
certificate target, the usage report).

Host keys are checked against known_hosts (the file the setting ``node_known_hosts``
names, else the system's and this user's) for every node; only a node whose record
says it is a throwaway host (``hosting_nodes.throwaway``, set by the devstack and the
tests, never inferred) skips the check. An unknown or a changed host key is a
ConfigurationError naming the node and the SHA256 fingerprint of the key it presents,
so ops can compare it out of band before they add it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from provisioner.errors import ConfigurationError, TransientError


def paramiko_module() -> Any:
    """Import paramiko on first use, quietly (its TripleDES/Blowfish deprecations; the
    CLI should not pay for it on every start)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import paramiko
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    return paramiko


def fingerprint(key: Any) -> str:
    """OpenSSH's form: ``SHA256:<base64 of the key blob's SHA-256, unpadded>``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _source(known_hosts: Path | None) -> str:
    return str(known_hosts) if known_hosts else "the system's and this user's known_hosts"


def unknown_host_key(where: str, key_name: str, key_fingerprint: str,
                     known_hosts: Path | None) -> ConfigurationError:
    source = _source(known_hosts)
    return ConfigurationError(
        f"{where}: its {key_name} host key {key_fingerprint} is not in {source}; check the "
        "fingerprint on the node's console (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then "
        "add it (ssh-keyscan) to the node_known_hosts file")


def changed_host_key(where: str, key_name: str, key_fingerprint: str,
                     known_hosts: Path | None) -> ConfigurationError:
    return ConfigurationError(
        f"{where}: its {key_name} host key {key_fingerprint} does not match the one in "
        f"{_source(known_hosts)}: the node was rebuilt, or someone is in between; check the "
        "fingerprint on the node's console (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) before "
        "replacing the entry")


class UnknownHostKey:
    """paramiko's missing-host-key policy for real nodes: refuse, as a configuration
    error (not retried) naming the node and the key's fingerprint."""

    def __init__(self, where: str, known_hosts: Path | None) -> None:
        self.where = where
        self.known_hosts = known_hosts

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise unknown_host_key(self.where, key.get_name(), fingerprint(key), self.known_hosts)


@contextmanager
def node_client(address: str, *, where: str, port: int = 22, user: str = "root",
                key_path: Path | None = None, timeout_s: float = 30.0, throwaway: bool = False,
                known_hosts: Path | None = None) -> Iterator[Any]:
    """A paramiko client connected to a node, closed on exit. The host key is checked
    against known_hosts unless ``throwaway`` (throwaway test hosts only). Connection
    errors become ours: a refused key or an unknown or wrong host key is a
    ConfigurationError (not retried), anything else a TransientError."""
    paramiko = paramiko_module()
    client = paramiko.SSHClient()
    try:
        if throwaway:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 (throwaway)
        else:
            if known_hosts is not None:
                if not known_hosts.is_file():
                    raise ConfigurationError(f"{where}: node_known_hosts {known_hosts} does not exist")
                client.load_host_keys(str(known_hosts))
            else:
                client.load_system_host_keys()
            client.set_missing_host_key_policy(UnknownHostKey(where, known_hosts))
        try:
            client.connect(address, port=port, username=user,
                           key_filename=str(key_path) if key_path else None,
                           timeout=timeout_s, banner_timeout=timeout_s, auth_timeout=timeout_s,
                           allow_agent=False, look_for_keys=key_path is None)
        except paramiko.AuthenticationException as exc:
            raise ConfigurationError(f"{where}: SSH key {key_path} refused: {exc}") from exc
        except paramiko.BadHostKeyException as exc:
            raise changed_host_key(where, exc.key.get_name(), fingerprint(exc.key), known_hosts) from exc
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransientError(f"{where}: SSH failed: {exc}") from exc
        yield client
    finally:
        client.close()


def host_key_fingerprint(address: str, port: int = 22, timeout_s: float = 10.0) -> tuple[str, str]:
    """The (key type, SHA256 fingerprint) a node's sshd presents, read without logging
    in (for the error that names an unknown key)."""
    paramiko = paramiko_module()
    try:
        transport = paramiko.Transport((address, port))
    except (OSError, paramiko.SSHException) as exc:
        raise TransientError(f"{address}:{port}: SSH failed: {exc}") from exc
    try:
        transport.banner_timeout = timeout_s
        transport.start_client(timeout=timeout_s)
        key = transport.get_remote_server_key()
        return key.get_name(), fingerprint(key)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise TransientError(f"{address}:{port}: SSH failed: {exc}") from exc
    finally:
        transport.close()

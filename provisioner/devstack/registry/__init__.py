"""The sandbox EPP registry: a TLS server speaking RFC 5730-5734 with persistent state
(SQLite in its data dir), per-TLD expiry, quarantine and transfer rules, poll messages
and fault switches. It is the registry of the demo and of the tests.

    with run_sandbox(data_dir) as sb:     # a thread in this process
        client = EppClient(sb.config())
        sb.faults.set(drop_after={"domain:create": 1})
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from provisioner.adapters.registry.client import RegistryConfig
from provisioner.devstack.registry.certs import ensure_certificates
from provisioner.devstack.registry.faults import Faults
from provisioner.devstack.registry.server import SandboxServer

#: The registrar accounts every sandbox has: ours and a competitor (for transfers).
DEFAULT_LOGIN = "provisioner"
DEFAULT_PASSWORD = "sandbox-pw-1"  # noqa: S105 - the sandbox's own test account
OTHER_LOGIN = "otherreg"
OTHER_PASSWORD = "other-pw-1"  # noqa: S105 - the sandbox's own test account
DEFAULT_PORT = 7700


@dataclass
class Sandbox:
    host: str
    port: int
    ca_file: Path
    login: str
    password: str
    data_dir: Path
    server: SandboxServer

    @property
    def faults(self) -> Faults:
        return self.server.faults

    def config(self, login: str | None = None, password: str | None = None,
               **over: Any) -> RegistryConfig:
        values: dict[str, Any] = dict(
            host=self.host, port=self.port, login=login or self.login,
            password=password or self.password, ca_file=str(self.ca_file), timeout_s=10.0,
        )
        values.update(over)
        return RegistryConfig(**values)

    def charges(self, name: str | None = None, op: str | None = None) -> list[dict[str, Any]]:
        """The registrar bill: every billable event (create, renew, autoRenew, restore,
        transfer, refund), oldest first."""
        sql, args = "SELECT * FROM charges WHERE 1 = 1", list[str]()
        if name is not None:
            sql, args = sql + " AND name = ?", [*args, name]
        if op is not None:
            sql, args = sql + " AND op = ?", [*args, op]
        store = self.server.store
        with store.lock:
            return store.all(sql + " ORDER BY id", *args)

    def at(self, day: date) -> None:
        """Move the registry's clock so that today is ``day`` (time of day unchanged)."""
        self.faults.set(clock_offset_days=(day - datetime.now(UTC).date()).days)

    def other_config(self, **over: Any) -> RegistryConfig:
        """The competitor registrar (owns domains we transfer in)."""
        return self.config(OTHER_LOGIN, OTHER_PASSWORD, **over)

    def settings_overrides(self) -> dict[str, Any]:
        """Settings fields pointing the product at this sandbox."""
        return {"registry_host": self.host, "registry_port": self.port,
                "registry_login": self.login, "registry_password": self.password,
                "registry_ca_file": str(self.ca_file)}


def make_server(data_dir: Path, host: str = "127.0.0.1", port: int = 0,
                accounts: dict[str, str] | None = None) -> tuple[SandboxServer, Path]:
    data_dir = Path(data_dir)
    ca_file, cert_file, key_file = ensure_certificates(data_dir / "tls", host)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    accounts = accounts or {DEFAULT_LOGIN: DEFAULT_PASSWORD, OTHER_LOGIN: OTHER_PASSWORD}
    return SandboxServer((host, port), data_dir, ctx, accounts), ca_file


@contextmanager
def run_sandbox(data_dir: Path, host: str = "127.0.0.1", port: int = 0,
                login: str = DEFAULT_LOGIN, password: str = DEFAULT_PASSWORD) -> Iterator[Sandbox]:
    """Start the sandbox registry in a thread; ``port=0`` picks a free port. The state
    (``registry.sqlite``), the TLS files (``tls/``) and ``faults.json`` live in
    ``data_dir`` and survive a restart."""
    server, ca_file = make_server(Path(data_dir), host, port,
                                  {login: password, OTHER_LOGIN: OTHER_PASSWORD})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="epp-sandbox", daemon=True)
    thread.start()
    try:
        yield Sandbox(host, server.server_address[1], ca_file, login, password, Path(data_dir),
                      server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


__all__ = ["DEFAULT_LOGIN", "DEFAULT_PASSWORD", "DEFAULT_PORT", "OTHER_LOGIN", "OTHER_PASSWORD",
           "Sandbox", "make_server", "run_sandbox"]

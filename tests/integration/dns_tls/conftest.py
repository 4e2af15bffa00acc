"""Session fixtures for the DNS/TLS tests: Knot, a loopback nginx and Pebble, each
started here on free loopback ports with its own directories and stopped afterwards.
The servers themselves are the product's own context managers
(`provisioner.devstack.dns_tls`, `provisioner.adapters.tls_targets.local_nginx`)."""

from __future__ import annotations

import itertools
import shutil
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.adapters.acme import AcmeClient, generate_key_pem
from provisioner.adapters.dns import DnsServer, KnotcZoneCreator
from provisioner.devstack.dns_tls import KnotServer, PebbleServer
from provisioner.devstack.dns_tls import knot_server as _knot
from provisioner.devstack.dns_tls import pebble_server as _pebble
from provisioner.devstack.local_nginx import LocalNginx, LocalNginxTarget, local_nginx
from provisioner.domain.dns_records import HostedZone, hosting_zone_records

_missing = [b for b in ("knotd", "knotc", "pebble", "nginx") if shutil.which(b) is None
            and not Path(f"/usr/sbin/{b}").exists()]
if _missing:  # pragma: no cover - `make setup` runs scripts/install-deps-dns-tls.sh
    raise RuntimeError(f"missing {', '.join(_missing)}: run scripts/install-deps-dns-tls.sh")

_zones = itertools.count(1)


@pytest.fixture(scope="session")
def knot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with _knot(tmp_path_factory.mktemp("knot")) as server:
        yield server


@pytest.fixture(scope="session")
def nginx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNginx]:
    with local_nginx(tmp_path_factory.mktemp("nginx")) as server:
        yield server


@pytest.fixture(scope="session")
def pebble_server(tmp_path_factory: pytest.TempPathFactory, knot_server: KnotServer,
                  nginx_server: LocalNginx) -> Iterator[PebbleServer]:
    with _pebble(tmp_path_factory.mktemp("pebble"), knot_server.port, nginx_server.http_port,
                 nginx_server.https_port) as server:
        yield server


@pytest.fixture(scope="session")
def dns_server(knot_server: KnotServer) -> DnsServer:
    return DnsServer(knot_server.host, knot_server.port, knot_server.tsig_key_name, knot_server.tsig_secret,
                     knot_server.tsig_algorithm, KnotcZoneCreator(knot_server.socket))


@pytest.fixture(scope="session")
def cert_target(nginx_server: LocalNginx) -> LocalNginxTarget:
    return LocalNginxTarget(nginx_server)


@pytest.fixture(scope="session")
def acme(pebble_server: PebbleServer) -> AcmeClient:
    return AcmeClient(pebble_server.directory, generate_key_pem(), ca_file=str(pebble_server.ca_file),
                      deadline_s=30)


def new_zone(dns: DnsServer, ipv4: str = "127.0.0.1") -> str:
    """A fresh hosted zone whose site and www point at `ipv4`."""
    zone = f"site{next(_zones)}.test"
    dns.ensure_zone(zone, hosting_zone_records(HostedZone(
        zone, ("ns1.provider.example",), "hostmaster@provider.example", (ipv4,))))
    return zone


@pytest.fixture
def zone(dns_server: DnsServer) -> str:
    return new_zone(dns_server)


def https_get(nginx: LocalNginx, name: str, root_file: Path) -> tuple[int, str, ssl.SSLSocket | None]:
    """GET / over HTTPS for `name` from the loopback nginx, trusting only `root_file`
    (hostname checked). Returns (status, body, None)."""
    ctx = ssl.create_default_context(cafile=str(root_file))
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    with socket.create_connection((nginx.host, nginx.https_port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace"), None

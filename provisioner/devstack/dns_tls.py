"""Knot and Pebble on loopback: the embedded defaults for DNS and the CA.

Plain context managers (no pytest), used by the tests, the benchmark and the demo::

    with local_dns_and_ca(data_dir) as env:      # knot + nginx + pebble
        settings = settings.with_overrides(**env.settings)
        ...

* `knot_server(dir)`: knotd on 127.0.0.1 with a free port, its own config database,
  rundir and storage, a generated TSIG key allowed to update every zone, and a
  control socket for ``knotc`` (zone creation).
* `pebble_server(dir, dns_port, http_port, tls_port)`: Pebble with a generated
  listener certificate, ``PEBBLE_VA_NOSLEEP=1``, ``PEBBLE_WFE_NONCEREJECT=0``, resolving
  through our Knot (``-dnsserver``) and validating HTTP-01 on `http_port`. Its root
  (regenerated at every start) is fetched from the management port.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner.devstack.local_nginx import LocalNginx, local_nginx
from provisioner.devstack.net import free_port, port_open, wait_for
from provisioner.errors import ConfigurationError

TSIG_KEY_NAME = "provisioner-update"
TSIG_ALGORITHM = "hmac-sha256"


def _wait(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes],
          log: Path) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise ConfigurationError(f"{what} exited: {log.read_text(errors='replace')[-2000:]}")
        return predicate()

    try:
        wait_for(ready, timeout, what, interval=0.02)
    except TimeoutError:
        tail = log.read_text(errors="replace")[-2000:]
        raise ConfigurationError(f"timed out waiting for {what}: {tail}") from None


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# -- Knot ---------------------------------------------------------------------------
@dataclass(frozen=True)
class KnotServer:
    host: str
    port: int
    socket: str
    tsig_key_name: str
    tsig_secret: str
    tsig_algorithm: str
    base: Path

    def knotc(self, *args: str) -> str:
        proc = subprocess.run(["knotc", "-s", self.socket, *args], capture_output=True, text=True, timeout=30)
        return (proc.stdout + proc.stderr).strip()


_KNOT_CONF = """\
server:
    rundir: "{base}/run"
    listen: {host}@{port}
    background-workers: 1
    tcp-workers: 2
    udp-workers: 1
control:
    listen: "{base}/run/knot.sock"
key:
  - id: {key_name}
    algorithm: {algorithm}
    secret: {secret}
acl:
  - id: update
    key: {key_name}
    action: update
template:
  - id: default
    storage: "{base}/zones"
    acl: update
    zonefile-sync: -1
    zonefile-load: none
    journal-content: all
    semantic-checks: off
database:
    storage: "{base}/db"
log:
  - target: "{base}/knotd.log"
    any: info
"""


@contextmanager
def knot_server(base: Path | None = None, host: str = "127.0.0.1", port: int = 0) -> Iterator[KnotServer]:
    if shutil.which("knotd") is None:
        raise ConfigurationError("knotd not found: run scripts/install-deps-dns-tls.sh")
    own = base is None
    base = Path(tempfile.mkdtemp(prefix="prov-knot-")) if base is None else base
    for sub in ("run", "zones", "db"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    conf = base / "knot.conf"
    conf.write_text(_KNOT_CONF.format(base=base, host=host, port=port, key_name=TSIG_KEY_NAME,
                                      algorithm=TSIG_ALGORITHM, secret=secret))
    conf.chmod(0o600)
    confdb = base / "confdb"
    shutil.rmtree(confdb, ignore_errors=True)
    # A configuration database (not the text file), so zones added with knotc conf-set persist.
    imp = subprocess.run(["knotc", "-C", str(confdb), "conf-import", str(conf)], capture_output=True,
                         text=True, timeout=30)
    if imp.returncode != 0:
        raise ConfigurationError(f"knotc conf-import failed: {imp.stdout}{imp.stderr}")
    log = base / "knotd.out"
    with open(log, "ab") as out:
        proc = subprocess.Popen(["knotd", "-C", str(confdb)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = KnotServer(host, port, str(base / "run" / "knot.sock"), TSIG_KEY_NAME, secret,
                        TSIG_ALGORITHM, base)
    try:
        _wait(lambda: port_open(host, port) and Path(server.socket).exists(), 20, "knotd", proc, log)
        _wait(lambda: server.knotc("status") == "Running", 20, "knotd control socket", proc, log)
        yield server
    finally:
        _stop(proc)
        if own:
            shutil.rmtree(base, ignore_errors=True)


# -- Pebble ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PebbleServer:
    directory: str
    management: str
    ca_file: Path  # trusts Pebble's listener certificate (for the ACME client)
    root_pem: bytes  # the root Pebble signs with (for HTTPS clients of the sites)
    root_file: Path
    eab: dict[str, str] = field(default_factory=dict)
    port: int = 0


def make_listener_cert(directory: Path, names: tuple[str, ...] = ("localhost",),
                       ips: tuple[str, ...] = ("127.0.0.1",)) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for it; returns (ca, cert, key) paths."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "provisioner local listener CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       key_cert_sign=True, crl_sign=True, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path = directory / "listener-ca.pem", directory / "listener.pem"
    key_path = directory / "listener.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


@contextmanager
def pebble_server(base: Path | None, dns_port: int, http_port: int, tls_port: int,
                  eab_required: bool = False, env: dict[str, str] | None = None) -> Iterator[PebbleServer]:
    binary = shutil.which("pebble")
    if binary is None:
        raise ConfigurationError("pebble not found: run scripts/install-deps-dns-tls.sh")
    own = base is None
    base = Path(tempfile.mkdtemp(prefix="prov-pebble-")) if base is None else base
    base.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = make_listener_cert(base)
    port, mgmt = free_port(), free_port()
    eab = {"kid-1": base64.urlsafe_b64encode(secrets.token_bytes(48)).decode().rstrip("=")}
    config: dict[str, Any] = {
        "listenAddress": f"127.0.0.1:{port}",
        "managementListenAddress": f"127.0.0.1:{mgmt}",
        "certificate": str(cert_path),
        "privateKey": str(key_path),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": eab_required,
    }
    if eab_required:
        config["externalAccountMACKeys"] = eab
    (base / "pebble.json").write_text(json.dumps({"pebble": config}, indent=2))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
    environ.update({"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"})
    environ.update(env or {})
    log = base / "pebble.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([binary, "-config", str(base / "pebble.json"), "-dnsserver",
                                 f"127.0.0.1:{dns_port}"], stdout=out, stderr=subprocess.STDOUT,
                                env=environ, cwd=base, start_new_session=True)
    try:
        _wait(lambda: port_open("127.0.0.1", port) and port_open("127.0.0.1", mgmt), 30, "pebble", proc, log)
        root = httpx.get(f"https://127.0.0.1:{mgmt}/roots/0", verify=_ssl_context(ca_path), timeout=10)
        root.raise_for_status()
        root_file = base / "pebble-root.pem"
        root_file.write_bytes(root.content)
        yield PebbleServer(f"https://127.0.0.1:{port}/dir", f"https://127.0.0.1:{mgmt}", ca_path,
                           root.content, root_file, eab if eab_required else {}, port)
    finally:
        _stop(proc)
        if own:
            shutil.rmtree(base, ignore_errors=True)


def _ssl_context(ca_file: Path) -> Any:
    import ssl

    return ssl.create_default_context(cafile=str(ca_file))


# -- all three, for the demo ----------------------------------------------------------------
@dataclass
class LocalDnsAndCa:
    knot: KnotServer
    nginx: LocalNginx
    pebble: PebbleServer
    settings: dict[str, Any]


@contextmanager
def local_dns_and_ca(data_dir: Path, nameservers: str = "ns1.provider.example",
                     validation_ports: tuple[int, int] | None = None) -> Iterator[LocalDnsAndCa]:
    """Knot, a loopback nginx (the target of stand-alone certificates) and Pebble under
    `data_dir`; yields them and the Settings overrides that point the product at them.

    Pebble validates HTTP-01 (and TLS-ALPN-01) on `validation_ports` (http, https) of
    the address our Knot gives for the name: (80, 443) when the sites are on hosting
    nodes, by default the loopback nginx's ports."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        knot = stack.enter_context(knot_server(data_dir / "knot"))
        nginx = stack.enter_context(local_nginx(data_dir / "nginx"))
        http_port, tls_port = validation_ports or (nginx.http_port, nginx.https_port)
        pebble = stack.enter_context(pebble_server(data_dir / "pebble", knot.port, http_port, tls_port))
        settings: dict[str, Any] = {
            "dns_server": knot.host,
            "dns_port": knot.port,
            "dns_knotc_socket": knot.socket,
            "tsig_key_name": knot.tsig_key_name,
            "tsig_secret": knot.tsig_secret,
            "tsig_algorithm": knot.tsig_algorithm,
            "dns_nameservers": nameservers,
            "dns_site_ipv4": "127.0.0.1",
            "acme_directory": pebble.directory,
            "acme_ca_file": str(pebble.ca_file),
        }
        yield LocalDnsAndCa(knot, nginx, pebble, settings)


def https_check(env: LocalDnsAndCa, name: str, path: str = "/") -> dict[str, Any]:
    """GET https://<name><path> from the loopback nginx, trusting only Pebble's root and
    checking the host name. Raises ssl.SSLError when the chain does not verify."""
    return https_fetch(env.nginx.host, env.nginx.https_port, name, env.pebble.root_file, path)


def https_fetch(address: str, port: int, name: str, root_file: Path, path: str = "/") -> dict[str, Any]:
    """GET https://<name><path> from `address`:`port` with an SSL context that trusts only
    `root_file` and checks the host name (what `make demo` ends with, against the node).
    Raises ssl.SSLError when the chain does not verify."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(root_file))
    with socket.create_connection((address, port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            peer = tls.getpeercert() or {}
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    sans: Any = peer.get("subjectAltName", ())
    names = [entry[1] for entry in sans if entry[0] == "DNS"]
    return {"url": f"https://{name}{path}", "status": int(head.split()[1]), "names": names,
            "not_after": peer.get("notAfter"), "body": body.decode(errors="replace")}

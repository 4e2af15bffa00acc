"""HTTPS for a hosting account on a throwaway node: a paid hosting order through the
pipeline (``dns.zone -> hosting.account -> tls.issue -> notify.credentials``) with Knot
and Pebble started here. Pebble resolves the site through our Knot (the zone points at
the node) and validates HTTP-01 on the node's port 80, through the account's vhost.

An HTTPS client that trusts only Pebble's root then gets the site and www; running
``tls.issue`` again does nothing; a deploy that fails (a key that does not match, nginx
refusing the configuration, the new certificate not served) leaves the previous one
served; a wildcard goes through DNS-01 and covers www."""

from __future__ import annotations

import socket
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from provisioner.adapters.tls_targets import CertificateInfo
from provisioner.adapters.tls_targets.node import CERT_ROOT, TLS_CONF_ROOT, NodeNginxTarget
from provisioner.adapters.dns import DnsServer
from provisioner.devstack.dns_tls import KnotServer, PebbleServer, knot_server, pebble_server
from provisioner.adapters.hosting.accounts import HostingAccounts
from provisioner.config import Settings
from provisioner.errors import ConfigurationError, InvalidInput, TransientError
from provisioner.pipeline import capabilities
from provisioner.pipeline.usecases import ops
from provisioner.pipeline.usecases.payments import record_manual_payment
from provisioner.pipeline.engine.runner import HANDLERS, Runner, StepContext
from provisioner.bootstrap import dns_tls_adapters
from provisioner.store.db import dispose_all, session_factory, transaction, upgrade
from provisioner.store.hosting import HostingAccount, add_node
from provisioner.store.models import Step
from provisioner.store.tls import TlsCertificate, decrypt, fernet_for

SITE = "tls-shop.test"
CUSTOMER = {"name": "Ana Novak", "address": "Slovenska cesta 1", "postal_code": "1000",
            "city": "Ljubljana", "country": "SI", "email": "ana@example.si", "phone": "+386.41123456",
            "lang": "en"}


@dataclass
class Outbox:
    sent: list[str] = field(default_factory=list)

    def send(self, *, to: str, rendered: Any, message_id: str, headers: Any = None) -> None:
        self.sent.append(rendered.subject)


class NoCa:
    def issue(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the CA must not be asked")


@dataclass
class World:
    settings: Settings
    runner: Runner
    queue: list[str]
    dns: DnsServer
    pebble: PebbleServer
    node: Any
    order_id: int = 0
    service_id: int = 0
    account: str = ""

    def drain(self) -> list[str]:
        seen = []
        while self.queue:
            key = self.queue.pop(0)
            outcome = self.runner.run_step(key)
            assert outcome.status in ("done", "skipped"), outcome
            seen.append(key)
        return seen

    def target(self, **kwargs: Any) -> NodeNginxTarget:
        target = self.runner.adapters["cert_target"](self.service_id)  # type: ignore[operator]
        assert isinstance(target, NodeNginxTarget)
        for name, value in kwargs.items():
            setattr(target, name, value)
        return target

    def run_tls_issue(self, params: dict[str, Any], adapters: dict[str, object] | None = None) -> Any:
        key = f"service:{self.service_id}/tls.issue#{uuid.uuid4().hex[:8]}"
        ctx = StepContext(self.settings, self.runner.factory, key, uuid.uuid4().hex,
                          {**self.runner.adapters, **(adapters or {})})
        step = Step(key=key, kind="tls.issue", params=params, deps=[], state="running", attempts=1)
        return HANDLERS["tls.issue"](ctx, step)


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with knot_server(tmp_path_factory.mktemp("knot")) as server:
        yield server


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory, knot: KnotServer) -> Iterator[PebbleServer]:
    # HTTP-01 on port 80 of whatever our Knot says the name is: the node.
    with pebble_server(tmp_path_factory.mktemp("pebble"), knot.port, 80, 443) as server:
        yield server


@pytest.fixture(scope="module")
def world(node: Any, knot: KnotServer, pebble: PebbleServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("tls-node")
    url = f"sqlite:///{work / 'p.sqlite'}"
    upgrade(url)
    settings = Settings(
        data_dir=work, database_url=url, public_base_url="https://panel.provider.example",
        dns_server=knot.host, dns_port=knot.port, dns_knotc_socket=knot.socket,
        tsig_key_name=knot.tsig_key_name, tsig_secret=knot.tsig_secret, tsig_algorithm=knot.tsig_algorithm,
        dns_nameservers="ns1.provider.example", acme_directory=pebble.directory,
        acme_ca_file=str(pebble.ca_file), acme_deadline_s=60, step_backoff_s=0.0,
        extra={"hosting_ssh_key": node.info.ssh_key, "hosting_throwaway": True})
    factory = session_factory(url)
    with transaction(factory) as s:
        add_node(s, node.info.name, node.info.address, capacity_accounts=50, capacity_disk_mb=500_000)
    queue: list[str] = []
    adapters: dict[str, object] = {
        **dns_tls_adapters(settings, factory),
        "hosting": HostingAccounts(ssh_key=Path(node.info.ssh_key), throwaway=True),
        "mailer": Outbox(),
    }
    runner = Runner(settings, factory, queue.append, adapters)
    dns = adapters["dns"]()  # type: ignore[operator]
    yield World(settings, runner, queue, dns, pebble, node.info)
    dispose_all()


@pytest.fixture(scope="module")
def paid(world: World) -> World:
    capabilities.configure("hosting,dns,tls")  # the conftest puts "all kinds, no extras" back
    factory = world.runner.factory
    customer = ops.add_customer(factory, CUSTOMER, "test")
    order = ops.create_order(factory, customer["id"], [f"hosting:giga5:{SITE}"], None, "fcb", "test")
    number = order["proforma"]["number"]
    gross = ops.show_proforma(factory, number)["gross"]
    record_manual_payment(factory, proforma_number=number, reference=None, amount=Decimal(str(gross)),
                          currency="EUR", method="cash", txn=f"cash-{number}", actor="test")
    world.runner.dispatch(order["order"])
    world.drain()
    world.order_id = int(order["order"])
    with transaction(factory) as s:
        account = s.execute(select(HostingAccount)).scalar_one()
        world.service_id, world.account = account.service_id, account.username
    return world


def https_get(address: str, name: str, root_file: Path) -> tuple[int, str, dict[str, Any]]:
    """GET https://<name>/ from `address`:443, trusting only `root_file` (host name checked)."""
    ctx = ssl.create_default_context(cafile=str(root_file))
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    with socket.create_connection((address, 443), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            peer = tls.getpeercert() or {}
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace"), peer


def self_signed(names: list[str]) -> tuple[bytes, bytes]:
    """A key and a certificate for `names` that no client trusts (deploy does not care)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


def test_the_plan_is_zone_account_certificate_credentials(paid: World) -> None:
    with transaction(paid.runner.factory) as s:
        rows = s.execute(select(Step).where(Step.order_id == paid.order_id)).scalars()
        steps = {st.kind: (list(st.deps), st.state, dict(st.result or {})) for st in rows}
    prefix = f"service:{paid.service_id}"
    assert steps["dns.zone"][0] == []
    assert steps["hosting.account"][0] == [f"{prefix}/dns.zone"]
    assert steps["tls.issue"][0] == [f"{prefix}/dns.zone", f"{prefix}/hosting.account"]
    assert set(steps["notify.credentials"][0]) == {f"{prefix}/hosting.account", f"{prefix}/tls.issue"}
    assert all(state == "done" for _, state, _ in steps.values()), steps
    assert steps["dns.zone"][2]["node_address"] == paid.node.address
    issued = steps["tls.issue"][2]
    assert issued["reason"] == "issued"
    assert issued["challenges"] == {SITE: "http-01", f"www.{SITE}": "http-01"}


@pytest.mark.parametrize("name", [SITE, f"www.{SITE}"])
def test_the_zone_points_at_the_node(paid: World, name: str) -> None:
    assert paid.dns.lookup(name, "A") == {paid.node.address}


@pytest.mark.parametrize("name", [SITE, f"www.{SITE}"])
def test_https_verifies_against_pebbles_root_only(paid: World, name: str) -> None:
    status, body, peer = https_get(paid.node.address, name, paid.pebble.root_file)
    assert status == 200 and SITE in body
    sans = {value for kind, value in peer.get("subjectAltName", ()) if kind == "DNS"}
    assert sans == {SITE, f"www.{SITE}"}
    # The system's trust store does not know Pebble: the chain is Pebble's, not a default.
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection((paid.node.address, 443), timeout=10) as sock:
            ssl.create_default_context().wrap_socket(sock, server_hostname=name).close()


def test_the_key_is_0600_root_on_the_node_and_encrypted_in_the_store(paid: World, node_host: Any) -> None:
    key = node_host.file(f"{CERT_ROOT}/{paid.account}/current/privkey.pem")
    assert key.exists and key.user == "root" and key.mode == 0o600
    assert node_host.file(f"{CERT_ROOT}/{paid.account}").mode == 0o700
    conf = node_host.file(f"{TLS_CONF_ROOT}/{paid.account}/ssl.conf").content_string
    assert "listen 443 ssl;" in conf and "listen [::]:443 ssl;" in conf
    with transaction(paid.runner.factory) as s:
        row = s.execute(select(TlsCertificate).where(TlsCertificate.primary_name == SITE)).scalar_one()
        assert b"PRIVATE KEY" not in row.key_encrypted
        stored = decrypt(fernet_for(paid.settings), row.key_encrypted)
    assert key.content == stored
    # The challenge answers came from a root-owned directory, not the customer's docroot.
    acme = node_host.file(f"/var/lib/hosting-tls/{paid.account}/acme/.well-known/acme-challenge")
    assert acme.is_directory and acme.user == "root" and acme.listdir() == []


def test_running_tls_issue_again_does_nothing(paid: World) -> None:
    target = paid.target()
    before = target.served_certificate(SITE)
    with transaction(paid.runner.factory) as s:
        step = s.execute(select(Step).where(Step.order_id == paid.order_id, Step.kind == "tls.issue")
                         ).scalar_one()
        step.state = "queued"  # as if the broker delivered it again
        key, params = step.key, dict(step.params)
    outcome = paid.runner.run_step(key)
    assert outcome.status == "done" and outcome.detail == "unchanged"
    again = paid.run_tls_issue(params, {"acme": lambda: NoCa()})
    assert not again.changed and again.details["reason"] == "valid certificate"
    assert target.served_certificate(SITE).serial == before.serial


class NotServed(NodeNginxTarget):
    """A node that keeps presenting the old certificate after the reload."""

    def served_certificate(self, name: str) -> CertificateInfo:
        info = super().served_certificate(name)
        return CertificateInfo(info.names, info.serial ^ 1, info.not_before, info.not_after, "")


@pytest.mark.parametrize("failure", ["key does not match", "nginx -t refuses", "new one not served"])
def test_a_failed_deploy_keeps_the_previous_certificate(paid: World, node_host: Any, failure: str) -> None:
    target = paid.target()
    before = target.current_certificate(SITE)
    assert before is not None
    versions = node_host.file(f"{CERT_ROOT}/{paid.account}").listdir()
    key, chain = self_signed([SITE, f"www.{SITE}"])
    broken = f"{TLS_CONF_ROOT}/{paid.account}/zz-broken.conf"
    try:
        if failure == "key does not match":
            other_key, _ = self_signed([SITE])
            with pytest.raises(InvalidInput, match="does not belong"):
                target.deploy(SITE, other_key, chain)
        elif failure == "nginx -t refuses":
            node_host.run_expect([0], f"echo 'no_such_directive on;' > {broken}")
            with pytest.raises(ConfigurationError, match="nginx -t"):
                target.deploy(SITE, key, chain)
        else:
            slow = NotServed(target.access, target.account, target.domains, serve_timeout_s=0.5)
            with pytest.raises(TransientError, match="did not start serving"):
                slow.deploy(SITE, key, chain)
    finally:
        node_host.run_expect([0], f"rm -f {broken}")
    after = target.current_certificate(SITE)
    assert after is not None and after.serial == before.serial
    assert target.served_certificate(SITE).serial == before.serial
    assert https_get(paid.node.address, f"www.{SITE}", paid.pebble.root_file)[0] == 200
    assert sorted(node_host.file(f"{CERT_ROOT}/{paid.account}").listdir()) == sorted(versions)


@pytest.mark.parametrize("bad", ["../etc.test", "other.test", "x.tls-shop.test", "tls-shop.test;reboot"])
def test_names_the_vhost_does_not_serve_are_refused(paid: World, bad: str) -> None:
    key, chain = self_signed([SITE])
    with pytest.raises(InvalidInput):
        paid.target().deploy(bad, key, chain)


def test_a_wildcard_goes_through_dns01_and_covers_www(paid: World) -> None:
    before = paid.target().served_certificate(SITE)
    result = paid.run_tls_issue({"service_id": paid.service_id, "names": [f"*.{SITE}", SITE],
                                 "challenge": "auto"})
    assert result.changed and result.details["reason"] == "issued"
    assert result.details["challenges"] == {f"*.{SITE}": "dns-01", SITE: "dns-01"}
    for name in (SITE, f"www.{SITE}"):
        status, body, peer = https_get(paid.node.address, name, paid.pebble.root_file)
        assert status == 200 and SITE in body
        sans = {value for kind, value in peer.get("subjectAltName", ()) if kind == "DNS"}
        assert sans == {f"*.{SITE}", SITE}
    assert paid.target().served_certificate(SITE).serial != before.serial
    # The site's own certificate (site + www) is covered by the wildcard: nothing to do.
    again = paid.run_tls_issue({"service_id": paid.service_id, "names": [SITE, f"www.{SITE}"],
                                "challenge": "http-01"}, {"acme": lambda: NoCa()})
    assert not again.changed


"""HTTPS for a hosting account on a throwaway node: a paid hosting order through the
pipeline (``dns.zone -> hosting.account -> tls.issue -> notify.credentials``) with Knot
and Pebble started here. Pebble resolves the site through our Knot (the zone points at
the node) and validates HTTP-01 on the node's port 80, through the account's vhost.

An HTTPS client that trusts only Pebble's root then gets the site and www; running
``tls.issue`` again does nothing; a deploy that fails (a key that does not match, nginx
refusing the configuration, the new certificate not served) leaves the previous one
served; a wildcard goes through DNS-01 and covers www."""

from __future__ import annotations

import dataclasses
import socket
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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

from provisioner.adapters.dns import DnsServer
from provisioner.adapters.tls_targets import CertificateInfo
from provisioner.adapters.tls_targets.node import CERT_ROOT, TLS_CONF_ROOT, NodeNginxTarget
from provisioner.devstack.dns_tls import KnotServer, PebbleServer, knot_server, pebble_server
from provisioner.errors import ConfigurationError, InvalidInput, TransientError
from provisioner.pipeline.capabilities.dns_tls import certificate_target
from provisioner.pipeline.engine.runner import StepContext, StepResult
from provisioner.pipeline.usecases import ops
from provisioner.store.db import dispose_all, transaction, upgrade
from provisioner.store.hosting import HostingAccount, add_node
from provisioner.store.models import Step
from provisioner.store.tls import TlsCertificate, decrypt, fernet_for
from tests.helpers import MemoryMailer, World, customer, make_settings, wire

SITE = "tls-shop.test"


class NoCa:
    def issue(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the CA must not be asked")


@dataclass
class TlsWorld(World):
    """The product wired to Knot, Pebble and the session's node, and the paid order's
    hosting service once `paid` has run."""

    pebble: PebbleServer | None = None
    node: Any = None
    order_id: int = 0
    service_id: int = 0
    account: str = ""

    @property
    def dns(self) -> DnsServer:
        dns = self.app.adapters.dns
        assert isinstance(dns, DnsServer)
        return dns

    @property
    def root_file(self) -> Path:
        assert self.pebble is not None
        return Path(self.pebble.root_file)

    def run_all(self) -> list[str]:
        ran = self.drain()
        with transaction(self.factory) as s:
            bad = {st.key: (st.state, st.last_error) for st in s.execute(
                select(Step).where(Step.order_id == self.order_id)).scalars() if st.state == "failed"}
        assert not bad, bad
        return ran

    def context(self, **adapters: Any) -> StepContext:
        """A step's context as the runner builds it, with some adapters replaced."""
        return StepContext(self.app.settings, self.factory, f"service:{self.service_id}/tls.issue#test",
                           uuid.uuid4().hex, dataclasses.replace(self.app.adapters, **adapters),
                           self.runner.now)

    def target(self) -> NodeNginxTarget:
        """The certificate target the pipeline picks for the service: its account's vhost."""
        target = certificate_target(self.context(), self.service_id)
        assert isinstance(target, NodeNginxTarget)
        return target

    def run_tls_issue(self, params: dict[str, Any], **adapters: Any) -> StepResult:
        key = f"service:{self.service_id}/tls.issue#{uuid.uuid4().hex[:8]}"
        step = Step(key=key, kind="tls.issue", params=params, deps=[], state="running", attempts=1)
        return self.runner.handlers["tls.issue"](self.context(**adapters), step)


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
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsWorld]:
    work = tmp_path_factory.mktemp("tls-node")
    url = f"sqlite:///{work / 'p.sqlite'}"
    upgrade(url)
    # Everything from settings, as an installation has it: Knot (RFC 2136 + knotc),
    # Pebble as the ACME CA, the node's SSH key; a hosting line gets its zone and
    # certificate ("dns", "tls").
    settings = make_settings(
        work, url, 1, public_base_url="https://panel.provider.example", line_kinds="hosting,dns,tls",
        dns_server=knot.host, dns_port=knot.port, dns_knotc_socket=knot.socket,
        tsig_key_name=knot.tsig_key_name, tsig_secret=knot.tsig_secret, tsig_algorithm=knot.tsig_algorithm,
        dns_nameservers="ns1.provider.example", acme_directory=pebble.directory,
        acme_ca_file=str(pebble.ca_file), acme_deadline_s=60, step_backoff_s=0.0,
        node_ssh_key=str(node.info.ssh_key))
    app, queue = wire(settings, mailer=MemoryMailer())
    with transaction(app.factory) as s:  # the node's record says it is a throwaway host
        add_node(s, node.info.name, node.info.address, capacity_accounts=50, capacity_disk_mb=500_000,
                 throwaway=True)
    yield TlsWorld(app, queue, pebble=pebble, node=node.info)
    dispose_all()


@pytest.fixture(scope="module")
def paid(world: TlsWorld) -> TlsWorld:
    order = world.order([f"hosting:giga5:{SITE}"], who=customer("en"))
    world.order_id = int(order["order"])
    number = order["proforma"]["number"]
    gross = ops.show_proforma(world.factory, number)["gross"]
    world.pay(number, Decimal(str(gross)), f"cash-{number}", method="cash")
    world.runner.dispatch(world.order_id)
    world.run_all()
    with transaction(world.factory) as s:
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


def test_the_plan_is_zone_account_certificate_credentials(paid: TlsWorld) -> None:
    with transaction(paid.factory) as s:
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
def test_the_zone_points_at_the_node(paid: TlsWorld, name: str) -> None:
    assert paid.dns.lookup(name, "A") == {paid.node.address}


@pytest.mark.parametrize("name", [SITE, f"www.{SITE}"])
def test_https_verifies_against_pebbles_root_only(paid: TlsWorld, name: str) -> None:
    status, body, peer = https_get(paid.node.address, name, paid.root_file)
    assert status == 200 and SITE in body
    sans = {value for kind, value in peer.get("subjectAltName", ()) if kind == "DNS"}
    assert sans == {SITE, f"www.{SITE}"}
    # The system's trust store does not know Pebble: the chain is Pebble's, not a default.
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection((paid.node.address, 443), timeout=10) as sock:
            ssl.create_default_context().wrap_socket(sock, server_hostname=name).close()


def test_the_key_is_0600_root_on_the_node_and_encrypted_in_the_store(paid: TlsWorld, node_host: Any) -> None:
    key = node_host.file(f"{CERT_ROOT}/{paid.account}/current/privkey.pem")
    assert key.exists and key.user == "root" and key.mode == 0o600
    assert node_host.file(f"{CERT_ROOT}/{paid.account}").mode == 0o700
    conf = node_host.file(f"{TLS_CONF_ROOT}/{paid.account}/ssl.conf").content_string
    assert "listen 443 ssl;" in conf and "listen [::]:443 ssl;" in conf
    with transaction(paid.factory) as s:
        row = s.execute(select(TlsCertificate).where(TlsCertificate.primary_name == SITE)).scalar_one()
        assert b"PRIVATE KEY" not in row.key_encrypted
        stored = decrypt(fernet_for(paid.app.settings), row.key_encrypted)
    assert key.content == stored
    # The challenge answers came from a root-owned directory, not the customer's docroot.
    acme = node_host.file(f"/var/lib/hosting-tls/{paid.account}/acme/.well-known/acme-challenge")
    assert acme.is_directory and acme.user == "root" and acme.listdir() == []


def test_running_tls_issue_again_does_nothing(paid: TlsWorld) -> None:
    target = paid.target()
    before = target.served_certificate(SITE)
    with transaction(paid.factory) as s:
        step = s.execute(select(Step).where(Step.order_id == paid.order_id, Step.kind == "tls.issue")
                         ).scalar_one()
        step.state = "queued"  # as if the broker delivered it again
        key, params = step.key, dict(step.params)
    outcome = paid.runner.run_step(key)
    assert outcome.status == "done" and outcome.detail == "unchanged"
    again = paid.run_tls_issue(params, acme=NoCa())
    assert not again.changed and again.details["reason"] == "valid certificate"
    assert target.served_certificate(SITE).serial == before.serial


class NotServed(NodeNginxTarget):
    """A node that keeps presenting the old certificate after the reload."""

    def served_certificate(self, name: str) -> CertificateInfo:
        info = super().served_certificate(name)
        return CertificateInfo(info.names, info.serial ^ 1, info.not_before, info.not_after, "")


@pytest.mark.parametrize("failure", ["key does not match", "nginx -t refuses", "new one not served"])
def test_a_failed_deploy_keeps_the_previous_certificate(paid: TlsWorld, node_host: Any, failure: str) -> None:
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
    assert https_get(paid.node.address, f"www.{SITE}", paid.root_file)[0] == 200
    assert sorted(node_host.file(f"{CERT_ROOT}/{paid.account}").listdir()) == sorted(versions)


@pytest.mark.parametrize("bad", ["../etc.test", "other.test", "x.tls-shop.test", "tls-shop.test;reboot"])
def test_names_the_vhost_does_not_serve_are_refused(paid: TlsWorld, bad: str) -> None:
    key, chain = self_signed([SITE])
    with pytest.raises(InvalidInput):
        paid.target().deploy(bad, key, chain)


def test_a_wildcard_goes_through_dns01_and_covers_www(paid: TlsWorld) -> None:
    before = paid.target().served_certificate(SITE)
    result = paid.run_tls_issue({"service_id": paid.service_id, "names": [f"*.{SITE}", SITE],
                                 "challenge": "auto"})
    assert result.changed and result.details["reason"] == "issued"
    assert result.details["challenges"] == {f"*.{SITE}": "dns-01", SITE: "dns-01"}
    for name in (SITE, f"www.{SITE}"):
        status, body, peer = https_get(paid.node.address, name, paid.root_file)
        assert status == 200 and SITE in body
        sans = {value for kind, value in peer.get("subjectAltName", ()) if kind == "DNS"}
        assert sans == {f"*.{SITE}", SITE}
    assert paid.target().served_certificate(SITE).serial != before.serial
    # The site's own certificate (site + www) is covered by the wildcard: nothing to do.
    again = paid.run_tls_issue({"service_id": paid.service_id, "names": [SITE, f"www.{SITE}"],
                                "challenge": "http-01"}, acme=NoCa())
    assert not again.changed


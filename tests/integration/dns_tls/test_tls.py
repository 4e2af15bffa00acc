"""Certificates from a real Pebble, validated through our Knot and a loopback nginx,
served by that nginx and checked by an HTTPS client that trusts only Pebble's root."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from provisioner.adapters.acme import (
    AcmeClient,
    ChallengeRefused,
    Dns01Solver,
    Http01Solver,
    IssuedCertificate,
    generate_key_pem,
    solver_chooser,
)
from provisioner.adapters.dns import DnsServer
from provisioner.devstack.dns_tls import KnotServer, PebbleServer
from provisioner.devstack.dns_tls import pebble_server as start_pebble
from provisioner.devstack.local_nginx import LocalNginx, LocalNginxTarget
from provisioner.devstack.net import free_port
from provisioner.errors import ConfigurationError, InvalidInput, TransientError
from tests.integration.dns_tls.conftest import https_get, new_zone


def _issue(acme: AcmeClient, names: list[str], target: LocalNginxTarget, dns: DnsServer,
           challenge: str) -> IssuedCertificate:
    return acme.issue(names, solver_chooser(Http01Solver(target), Dns01Solver(dns),
                                            lambda n: dns.zone_for(n) is not None, challenge))


def _site(target: LocalNginxTarget, zone: str) -> None:
    target.add_site(zone, [f"www.{zone}"], content=f"welcome to {zone}\n")


@pytest.mark.parametrize("challenge", ["http-01", "dns-01"])
def test_site_and_www_are_served_with_a_chain_pebble_root_verifies(
        acme: AcmeClient, cert_target: LocalNginxTarget, dns_server: DnsServer, nginx_server: LocalNginx,
        pebble_server: PebbleServer, zone: str, challenge: str) -> None:
    _site(cert_target, zone)
    issued = _issue(acme, [zone, f"www.{zone}"], cert_target, dns_server, challenge)
    assert set(issued.challenges.values()) == {challenge}
    info = cert_target.deploy(zone, issued.key_pem, issued.chain_pem)
    assert set(info.names) == {zone, f"www.{zone}"}
    for name in (zone, f"www.{zone}"):
        status, body, _ = https_get(nginx_server, name, pebble_server.root_file)
        assert status == 200 and body == f"welcome to {zone}\n"
    assert cert_target.current_certificate(zone) == info
    assert dns_server.lookup(f"_acme-challenge.{zone}", "TXT") == set()  # cleaned up


def test_wildcard_through_dns01(acme: AcmeClient, cert_target: LocalNginxTarget, dns_server: DnsServer,
                                nginx_server: LocalNginx, pebble_server: PebbleServer, zone: str) -> None:
    name = f"*.{zone}"
    cert_target.add_site(name, [zone], content="wildcard\n")
    issued = _issue(acme, [name, zone], cert_target, dns_server, "auto")
    assert issued.challenges == {name: "dns-01", zone: "dns-01"}
    cert_target.deploy(name, issued.key_pem, issued.chain_pem)
    for host in (f"anything.{zone}", f"www.{zone}"):
        status, body, _ = https_get(nginx_server, host, pebble_server.root_file)
        assert status == 200 and body == "wildcard\n"


def test_wildcard_for_a_zone_we_do_not_host_is_refused_before_ordering(
        acme: AcmeClient, cert_target: LocalNginxTarget, dns_server: DnsServer) -> None:
    with pytest.raises(InvalidInput, match="wildcard"):
        _issue(acme, ["*.not-ours.example"], cert_target, dns_server, "auto")


def test_names_whose_dns_we_do_not_host_use_http01(cert_target: LocalNginxTarget,
                                                   dns_server: DnsServer) -> None:
    choose = solver_chooser(Http01Solver(cert_target), Dns01Solver(dns_server),
                            lambda n: dns_server.zone_for(n) is not None)
    assert choose("www.not-ours.example").kind == "http-01"


# -- failures: clear errors, previous certificate still served ---------------------------------
@pytest.fixture
def served_site(acme: AcmeClient, cert_target: LocalNginxTarget, dns_server: DnsServer,
                zone: str) -> tuple[str, int]:
    """A site with a deployed certificate; returns (zone, serial)."""
    _site(cert_target, zone)
    issued = _issue(acme, [zone, f"www.{zone}"], cert_target, dns_server, "http-01")
    return zone, cert_target.deploy(zone, issued.key_pem, issued.chain_pem).serial


def _still_served(target: LocalNginxTarget, nginx: LocalNginx, pebble: PebbleServer, zone: str,
                  serial: int) -> None:
    assert target.current_certificate(zone).serial == serial  # type: ignore[union-attr]
    assert target.served_certificate(zone).serial == serial
    assert https_get(nginx, f"www.{zone}", pebble.root_file)[0] == 200


class WrongTxt:
    """Publishes a TXT record with the wrong value."""

    kind = "dns-01"

    def __init__(self, dns: DnsServer) -> None:
        self.dns = dns

    def publish(self, name: str, challb: Any, account_key: Any) -> Any:
        record = f"_acme-challenge.{name.removeprefix('*.')}"
        zone = self.dns.set_txt(record, "not-the-key-authorization")
        return lambda: self.dns.delete_txt(record, "not-the-key-authorization", zone=zone)


def test_wrong_txt_record_is_a_clear_refusal(acme: AcmeClient, cert_target: LocalNginxTarget,
                                             dns_server: DnsServer, nginx_server: LocalNginx,
                                             pebble_server: PebbleServer,
                                             served_site: tuple[str, int]) -> None:
    zone, serial = served_site
    with pytest.raises(ChallengeRefused) as err:
        acme.issue([zone], lambda n: WrongTxt(dns_server))
    assert isinstance(err.value, InvalidInput)  # not retried
    assert err.value.failures[0][:2] == (zone, "dns-01")
    assert zone in str(err.value) and "dns-01" in str(err.value)
    _still_served(cert_target, nginx_server, pebble_server, zone, serial)


def test_site_down_is_a_clear_refusal(acme: AcmeClient, cert_target: LocalNginxTarget, dns_server: DnsServer,
                                      nginx_server: LocalNginx, pebble_server: PebbleServer,
                                      served_site: tuple[str, int]) -> None:
    zone, serial = served_site
    down = new_zone(dns_server, ipv4="127.0.0.2")  # nothing listens there
    with pytest.raises(ChallengeRefused) as err:
        _issue(acme, [zone, down], cert_target, dns_server, "http-01")
    failed = {name for name, _, _ in err.value.failures}
    assert failed == {down}
    assert "connection" in str(err.value).lower()
    _still_served(cert_target, nginx_server, pebble_server, zone, serial)


def test_pebble_unreachable_is_transient(cert_target: LocalNginxTarget, dns_server: DnsServer,
                                         pebble_server: PebbleServer) -> None:
    gone = AcmeClient(f"https://127.0.0.1:{free_port()}/dir", generate_key_pem(),
                      ca_file=str(pebble_server.ca_file), timeout_s=2)
    with pytest.raises(TransientError, match="unreachable"):
        _issue(gone, ["a.test"], cert_target, dns_server, "http-01")


def test_key_not_matching_the_chain_is_not_deployed(
        cert_target: LocalNginxTarget, nginx_server: LocalNginx, pebble_server: PebbleServer,
        served_site: tuple[str, int], tmp_path: Any) -> None:
    zone, serial = served_site
    chain = (nginx_server.prefix / "certs" / zone / "current" / "fullchain.pem").read_bytes()
    with pytest.raises(InvalidInput, match="does not belong"):
        cert_target.deploy(zone, generate_key_pem(), chain)
    _still_served(cert_target, nginx_server, pebble_server, zone, serial)


def test_nginx_refusing_the_new_files_keeps_the_previous_certificate(
        cert_target: LocalNginxTarget, nginx_server: LocalNginx, pebble_server: PebbleServer,
        served_site: tuple[str, int], acme: AcmeClient, dns_server: DnsServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    zone, serial = served_site
    issued = _issue(acme, [zone, f"www.{zone}"], cert_target, dns_server, "http-01")
    monkeypatch.setattr(nginx_server, "test_config", lambda: "emulated: ssl_certificate refused")
    with pytest.raises(ConfigurationError, match="nginx -t refused"):
        cert_target.deploy(zone, issued.key_pem, issued.chain_pem)
    monkeypatch.undo()
    _still_served(cert_target, nginx_server, pebble_server, zone, serial)


# -- a CA answering rateLimited ---------------------------------------------------------------
@pytest.fixture
def rate_limited_ca() -> Iterator[str]:
    """A minimal ACME server: directory, nonces, accounts; every new order is rate-limited."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any] | None, ctype: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            raw = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Replay-Nonce", secrets.token_urlsafe(16))
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(raw)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def do_HEAD(self) -> None:  # noqa: N802
            self._send(200, None)

        def do_GET(self) -> None:  # noqa: N802
            base = f"http://127.0.0.1:{self.server.server_address[1]}"  # type: ignore[index]
            self._send(200, {"newNonce": f"{base}/nonce", "newAccount": f"{base}/acct",
                             "newOrder": f"{base}/order", "revokeCert": f"{base}/revoke",
                             "keyChange": f"{base}/key"})

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            base = f"http://127.0.0.1:{self.server.server_address[1]}"  # type: ignore[index]
            if self.path == "/acct":
                self._send(201, {"status": "valid"}, headers={"Location": f"{base}/acct/1"})
            else:
                self._send(429, {"type": "urn:ietf:params:acme:error:rateLimited",
                                 "detail": "too many new orders recently"}, "application/problem+json",
                           {"Retry-After": "3600"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dir"
    finally:
        server.shutdown()
        server.server_close()


def test_rate_limited_is_transient(rate_limited_ca: str, cert_target: LocalNginxTarget,
                                   dns_server: DnsServer, nginx_server: LocalNginx,
                                   pebble_server: PebbleServer, served_site: tuple[str, int]) -> None:
    zone, serial = served_site
    limited = AcmeClient(rate_limited_ca, generate_key_pem())
    with pytest.raises(TransientError, match="rateLimited"):
        _issue(limited, [zone], cert_target, dns_server, "http-01")
    _still_served(cert_target, nginx_server, pebble_server, zone, serial)


# -- a second Pebble: EAB required and a third of the nonces rejected -----------------------
@pytest.fixture(scope="module")
def strict_pebble(tmp_path_factory: pytest.TempPathFactory, knot_server: KnotServer,
                  nginx_server: LocalNginx) -> Iterator[PebbleServer]:
    with start_pebble(tmp_path_factory.mktemp("pebble-eab"), knot_server.port, nginx_server.http_port,
                      nginx_server.https_port, eab_required=True,
                      env={"PEBBLE_WFE_NONCEREJECT": "30"}) as server:
        yield server


def test_eab_is_required_and_missing(strict_pebble: PebbleServer) -> None:
    client = AcmeClient(strict_pebble.directory, generate_key_pem(), ca_file=str(strict_pebble.ca_file))
    with pytest.raises(ConfigurationError, match="External Account Binding"):
        client.register()


def test_eab_account_issues_through_bad_nonces(strict_pebble: PebbleServer, cert_target: LocalNginxTarget,
                                               dns_server: DnsServer, zone: str) -> None:
    kid, hmac = next(iter(strict_pebble.eab.items()))
    client = AcmeClient(strict_pebble.directory, generate_key_pem(), ca_file=str(strict_pebble.ca_file),
                        eab_kid=kid, eab_hmac=hmac, nonce_retries=10, deadline_s=30)
    assert client.register().startswith("https://127.0.0.1")
    for _ in range(3):
        issued = _issue(client, [zone, f"www.{zone}"], cert_target, dns_server, "dns-01")
        assert issued.chain_pem.startswith(b"-----BEGIN CERTIFICATE-----")

"""Where certificates go: the web server that serves the site.

`CertificateTarget` is the interface the ACME flow and the `tls.issue` step use:

* ``publish_challenge(token, content)`` / ``remove_challenge(token)``: the HTTP-01 file
  under ``/.well-known/acme-challenge/`` of the site's vhost;
* ``deploy(name, key_pem, chain_pem)``: atomic. New files are written beside the old
  ones, the ``current`` link is swapped, ``nginx -t`` checks the result, nginx reloads
  and we wait until the new certificate is served. On any failure the link goes back
  and nginx keeps (or goes back to) serving the previous certificate;
* ``current_certificate(name)``: what is deployed (None when nothing is).

`tls_targets.node.NodeNginxTarget` is the target for a hosting account's vhost on its
node, over SSH. The devstack's `LocalNginxTarget` (a loopback nginx with its own prefix,
for tests and benchmarks) implements the same four methods.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from provisioner.errors import InvalidInput

log = logging.getLogger("provisioner.tls")

_TOKEN_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
ACME_TOKEN_CHARS = _TOKEN_OK  # an ACME token is base64url: these characters only


@dataclass(frozen=True)
class CertificateInfo:
    names: tuple[str, ...]
    serial: int
    not_before: datetime
    not_after: datetime
    fingerprint: str

    def days_left(self, now: datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400


class CertificateTarget(Protocol):
    def publish_challenge(self, token: str, content: str) -> None: ...

    def remove_challenge(self, token: str) -> None: ...

    def deploy(self, name: str, key_pem: bytes, chain_pem: bytes) -> CertificateInfo: ...

    def current_certificate(self, name: str) -> CertificateInfo | None: ...


def certificate_info(chain_pem: bytes) -> CertificateInfo:
    """Names, serial and validity of the first (leaf) certificate of a PEM chain."""
    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except (ValueError, IndexError) as exc:
        raise InvalidInput(f"not a PEM certificate chain: {exc}") from exc
    return _info(leaf)


def _info(leaf: x509.Certificate) -> CertificateInfo:
    try:
        san = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        names = tuple(san.get_values_for_type(x509.DNSName))  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        names = ()
    from cryptography.hazmat.primitives import hashes

    return CertificateInfo(names, leaf.serial_number, leaf.not_valid_before_utc, leaf.not_valid_after_utc,
                           leaf.fingerprint(hashes.SHA256()).hex())


def check_key_matches(key_pem: bytes, chain_pem: bytes) -> None:
    """Refuse a key that does not belong to the chain's leaf (a half-deployed pair)."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except (ValueError, IndexError, TypeError) as exc:
        raise InvalidInput(f"unreadable key or certificate: {exc}") from exc
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, fmt)
            != leaf.public_key().public_bytes(serialization.Encoding.DER, fmt)):
        raise InvalidInput("the private key does not belong to the certificate")


def served_certificate(host: str, port: int, server_name: str, timeout: float = 5.0) -> CertificateInfo:
    """The certificate a TLS server presents for `server_name` (no verification)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return _info(x509.load_der_x509_certificate(der))

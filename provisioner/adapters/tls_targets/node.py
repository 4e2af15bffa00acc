"""Certificates for a hosting account's vhost on its node, over SSH.

`NodeNginxTarget` is the `CertificateTarget` (see `cert_target`) of one account on one
hosting node. The account's vhost (role ``hosting_account``) includes
``/etc/nginx/hosting-tls/<account>/*.conf``; we write two drop-ins there:

* ``acme.conf``: ``location ^~ /.well-known/acme-challenge/`` served from
  ``/var/lib/hosting-tls/<account>/acme`` (root-owned, not the customer's docroot), so
  HTTP-01 answers come from us whatever the customer puts in ``public_html``;
* ``ssl.conf``: ``listen 443 ssl`` (IPv4 and IPv6) and the certificate paths, which point
  through the ``current`` link in ``/etc/ssl/hosting/<account>/`` (mode 0700).

A deploy is atomic: the key (0600 root) and chain go into a new version directory,
the ``current`` link is swapped by a rename, ``nginx -t`` checks the result, nginx
reloads, and we connect to the node's port 443 until it serves the new serial for
every name. Any failure puts the previous link and drop-in back (and reloads), so nginx
keeps serving the previous certificate; the new version directory is removed.

Files move over SFTP; the only commands are the fixed ``nginx -t -q`` and ``systemctl
reload nginx``: no customer data ever reaches a shell. Account and domain names are
validated before they become part of a path. Private keys are never logged.
"""

from __future__ import annotations

import errno
import logging
import ssl
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from provisioner.adapters.hosting.accounts import validate_account_name
from provisioner.adapters.ssh import node_client, paramiko_module
from provisioner.adapters.tls_targets import (
    ACME_TOKEN_CHARS,
    CertificateInfo,
    certificate_info,
    check_key_matches,
    served_certificate,
)
from provisioner.domain.names import normalize_domain
from provisioner.errors import ConfigurationError, InvalidInput, TransientError

log = logging.getLogger("provisioner.tls")

TLS_CONF_ROOT = "/etc/nginx/hosting-tls"  # the vhost includes <root>/<account>/*.conf
CERT_ROOT = "/etc/ssl/hosting"
ACME_ROOT = "/var/lib/hosting-tls"
_NGINX_TEST = "nginx -t -q"
_NGINX_RELOAD = "systemctl reload nginx"
_KEYAUTH_OK = ACME_TOKEN_CHARS | {"."}

_ACME_CONF = """\
# Managed by provisioner (certificate deploy): ACME HTTP-01 answers for {account}.
location ^~ /.well-known/acme-challenge/ {{
    root {acme_root};
    default_type text/plain;
    try_files $uri =404;
}}
"""

_SSL_CONF = """\
# Managed by provisioner (certificate deploy): HTTPS for {account}.
listen 443 ssl;
listen [::]:443 ssl;
ssl_certificate {cert_dir}/current/fullchain.pem;
ssl_certificate_key {cert_dir}/current/privkey.pem;
"""


@dataclass(frozen=True)
class NodeAccess:
    """How to reach a node as root over SSH. `throwaway` turns host-key checking off
    (throwaway hosts only); otherwise the system's known_hosts must know the node."""

    name: str
    address: str
    key_path: Path | None
    user: str = "root"
    port: int = 22
    throwaway: bool = False
    timeout_s: float = 15.0
    known_hosts: Path | None = None


class _Remote:
    """One SSH connection: SFTP for files, fixed commands for nginx."""

    def __init__(self, access: NodeAccess, client: Any, sftp: Any) -> None:
        self.access = access
        self.client = client
        self.sftp = sftp

    def run(self, command: str) -> tuple[int, str]:
        assert command in (_NGINX_TEST, _NGINX_RELOAD)  # fixed strings only, never customer data
        _, stdout, stderr = self.client.exec_command(command, timeout=60)  # noqa: S601
        out = stdout.read().decode(errors="replace") + stderr.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), out.strip()

    def read(self, path: str) -> bytes | None:
        try:
            with self.sftp.open(path, "rb") as fh:
                return bytes(fh.read())
        except OSError as exc:
            if _missing(exc):
                return None
            raise

    def write(self, path: str, data: bytes, mode: int) -> None:
        """Write `data` to `path` atomically (a temporary name, then rename), with `mode`
        set before the first byte is written."""
        tmp = f"{path}.provisioner-tmp"
        with self.sftp.open(tmp, "wb") as fh:
            fh.chmod(mode)
            fh.write(data)
        self.sftp.posix_rename(tmp, path)

    def ensure_dir(self, path: str, mode: int) -> None:
        try:
            st = self.sftp.stat(path)
        except OSError as exc:
            if not _missing(exc):
                raise
            self.sftp.mkdir(path, mode)
            st = self.sftp.stat(path)
        if not stat.S_ISDIR(st.st_mode or 0):
            raise ConfigurationError(f"node {self.access.name}: {path} exists and is not a directory")
        if (st.st_mode or 0) & 0o777 != mode:
            self.sftp.chmod(path, mode)

    def readlink(self, path: str) -> str | None:
        try:
            return str(self.sftp.readlink(path))
        except OSError as exc:
            if _missing(exc) or getattr(exc, "errno", None) == errno.EINVAL:
                return None
            raise

    def swap_link(self, path: str, target: str) -> None:
        """Point the link `path` at `target` with one rename (readers never see no link)."""
        staged = f"{path}.new"
        self.remove(staged)
        self.sftp.symlink(target, staged)
        self.sftp.posix_rename(staged, path)

    def remove(self, path: str) -> None:
        try:
            self.sftp.remove(path)
        except OSError as exc:
            if not _missing(exc):
                raise

    def remove_tree(self, path: str) -> None:
        try:
            entries = self.sftp.listdir_attr(path)
        except OSError as exc:
            if _missing(exc):
                return
            raise
        for entry in entries:
            child = f"{path}/{entry.filename}"
            if stat.S_ISDIR(entry.st_mode or 0):
                self.remove_tree(child)
            else:
                self.remove(child)
        self.sftp.rmdir(path)

    def listdir(self, path: str) -> list[Any]:
        try:
            return list(self.sftp.listdir_attr(path))
        except OSError as exc:
            if _missing(exc):
                return []
            raise


def _missing(exc: OSError) -> bool:
    return isinstance(exc, FileNotFoundError) or getattr(exc, "errno", None) == errno.ENOENT


def _site_name(name: str) -> str:
    """A host name (``*.`` allowed in front) in canonical form, or InvalidInput."""
    if not isinstance(name, str):
        raise InvalidInput(f"bad site name {name!r}")
    raw = name.strip().lower().rstrip(".")
    wildcard = raw.startswith("*.")
    clean = normalize_domain(raw[2:] if wildcard else raw)
    return f"*.{clean}" if wildcard else clean


class NodeNginxTarget:
    """A CertificateTarget for the vhost of `account` (serving `domains` and their www)
    on the node reached through `access`."""

    def __init__(self, access: NodeAccess, account: str, domains: Sequence[str], *,
                 https_port: int = 443, http_port: int = 80, serve_timeout_s: float = 20.0) -> None:
        self.access = access
        self.account = validate_account_name(account)
        self.domains = tuple(normalize_domain(d) for d in domains)
        if not self.domains:
            raise InvalidInput(f"account {account}: no domains to certify")
        self.https_port = https_port
        self.http_port = http_port
        self.serve_timeout_s = serve_timeout_s
        self.conf_dir = f"{TLS_CONF_ROOT}/{self.account}"
        self.cert_dir = f"{CERT_ROOT}/{self.account}"
        self.acme_root = f"{ACME_ROOT}/{self.account}/acme"
        self.challenge_dir = f"{self.acme_root}/.well-known/acme-challenge"

    # -- connection -----------------------------------------------------------------------
    @contextmanager
    def _remote(self) -> Iterator[_Remote]:
        paramiko = paramiko_module()
        a = self.access
        where = f"node {a.name} ({a.address})"
        with node_client(a.address, where=where, port=a.port, user=a.user, key_path=a.key_path,
                         timeout_s=a.timeout_s, throwaway=a.throwaway,
                         known_hosts=a.known_hosts) as client:
            try:
                sftp = client.open_sftp()
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise TransientError(f"{where}: SFTP failed: {exc}") from exc
            try:
                yield _Remote(a, client, sftp)
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise TransientError(f"{where}: {type(exc).__name__}: {exc}") from exc
            finally:
                sftp.close()

    # -- validation --------------------------------------------------------------------------
    def _own(self, name: str) -> str:
        """`name`, validated, when this account's vhost serves it (one of its domains, its
        ``www.``, or the domain's wildcard); else InvalidInput."""
        site = _site_name(name)
        if not any(site in (d, f"www.{d}", f"*.{d}") for d in self.domains):
            raise InvalidInput(f"{name!r} is not served by account {self.account} "
                               f"({', '.join(self.domains)})")
        return site

    # -- drop-ins -----------------------------------------------------------------------------
    def _acme_conf(self) -> bytes:
        return _ACME_CONF.format(account=self.account, acme_root=self.acme_root).encode()

    def _ssl_conf(self) -> bytes:
        return _SSL_CONF.format(account=self.account, cert_dir=self.cert_dir).encode()

    def _ensure_dirs(self, r: _Remote) -> None:
        for path, mode in ((TLS_CONF_ROOT, 0o755), (self.conf_dir, 0o755), (CERT_ROOT, 0o700),
                           (self.cert_dir, 0o700), (ACME_ROOT, 0o755), (f"{ACME_ROOT}/{self.account}", 0o755),
                           (self.acme_root, 0o755), (f"{self.acme_root}/.well-known", 0o755),
                           (self.challenge_dir, 0o755)):
            r.ensure_dir(path, mode)

    def _check_and_reload(self, r: _Remote) -> str | None:
        """None when nginx accepted the configuration and reloaded, else the complaint."""
        status, out = r.run(_NGINX_TEST)
        if status != 0:
            return f"nginx -t: {out or f'exit {status}'}"
        status, out = r.run(_NGINX_RELOAD)
        if status != 0:
            return f"nginx reload: {out or f'exit {status}'}"
        return None

    def _ensure_acme_conf(self, r: _Remote) -> None:
        path = f"{self.conf_dir}/acme.conf"
        want = self._acme_conf()
        if r.read(path) == want:
            return
        old = r.read(path)
        r.write(path, want, 0o644)
        problem = self._check_and_reload(r)
        if problem:
            if old is None:
                r.remove(path)
            else:
                r.write(path, old, 0o644)
            self._check_and_reload(r)
            raise ConfigurationError(f"node {self.access.name}: the ACME drop-in for {self.account} "
                                     f"was refused: {problem}")

    # -- CertificateTarget ---------------------------------------------------------------
    def publish_challenge(self, token: str, content: str) -> None:
        if not token or not set(token) <= ACME_TOKEN_CHARS:
            raise InvalidInput(f"bad ACME token {token!r}")
        if not content or not set(content) <= _KEYAUTH_OK:
            raise InvalidInput("bad ACME key authorization")
        with self._remote() as r:
            self._ensure_dirs(r)
            self._ensure_acme_conf(r)
            r.write(f"{self.challenge_dir}/{token}", content.encode(), 0o644)
        self._wait_challenge_served(token, content)

    def _wait_challenge_served(self, token: str, content: str) -> None:
        """Fetch the answer as the CA will (port 80, the site's Host) before the CA is told."""
        url = f"http://{self._url_host()}:{self.http_port}/.well-known/acme-challenge/{token}"
        deadline = time.monotonic() + self.serve_timeout_s
        seen = "nothing"
        while True:
            try:
                answer = httpx.get(url, headers={"Host": self.domains[0]}, timeout=5)
                if answer.status_code == 200 and answer.text == content:
                    return
                seen = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                seen = str(exc) or type(exc).__name__
            if time.monotonic() > deadline:
                raise TransientError(f"node {self.access.name} does not serve the ACME challenge for "
                                     f"{self.domains[0]} ({seen})")
            time.sleep(0.05)

    def _url_host(self) -> str:
        return f"[{self.access.address}]" if ":" in self.access.address else self.access.address

    def remove_challenge(self, token: str) -> None:
        if not token or not set(token) <= ACME_TOKEN_CHARS:
            return
        with self._remote() as r:
            r.remove(f"{self.challenge_dir}/{token}")

    def current_certificate(self, name: str) -> CertificateInfo | None:
        self._own(name)
        with self._remote() as r:
            if r.read(f"{self.conf_dir}/ssl.conf") != self._ssl_conf():
                return None  # not switched on in the vhost: nothing is served
            chain = r.read(f"{self.cert_dir}/current/fullchain.pem")
        return None if chain is None else certificate_info(chain)

    def served_certificate(self, name: str) -> CertificateInfo:
        """What the node's port 443 presents for `name` (a wildcard is asked as ``www.``)."""
        site = _site_name(name)
        server_name = f"www.{site[2:]}" if site.startswith("*.") else site
        return served_certificate(self.access.address, self.https_port, server_name)

    def deploy(self, name: str, key_pem: bytes, chain_pem: bytes) -> CertificateInfo:
        self._own(name)
        check_key_matches(key_pem, chain_pem)
        info = certificate_info(chain_pem)
        names = [_site_name(n) for n in info.names]
        for n in names:
            self._own(n)  # every name of the certificate is this account's
        version = f"{datetime.now(UTC):%Y%m%d%H%M%S%f}-{info.serial:x}"[:80]
        vdir = f"{self.cert_dir}/{version}"
        current = f"{self.cert_dir}/current"
        ssl_conf = f"{self.conf_dir}/ssl.conf"
        with self._remote() as r:
            self._ensure_dirs(r)
            self._ensure_acme_conf(r)
            previous = r.readlink(current)
            previous_chain = r.read(f"{current}/fullchain.pem") if previous is not None else None
            old_conf = r.read(ssl_conf)
            try:
                r.sftp.mkdir(vdir, 0o700)
                r.sftp.chmod(vdir, 0o700)
                r.write(f"{vdir}/privkey.pem", key_pem, 0o600)
                r.write(f"{vdir}/fullchain.pem", chain_pem, 0o644)
                r.swap_link(current, version)
                if old_conf != self._ssl_conf():
                    r.write(ssl_conf, self._ssl_conf(), 0o644)
                problem = self._check_and_reload(r)
                if problem:
                    raise ConfigurationError(f"node {self.access.name}: the new certificate for {name} "
                                             f"was refused: {problem}")
                for served_name in names or [name]:
                    self._wait_served(served_name, info)
            except BaseException:
                self._rollback(r, current, previous, ssl_conf, old_conf)
                r.remove_tree(vdir)
                if previous_chain is not None and old_conf == self._ssl_conf():
                    self._wait_previous(names or [name], previous_chain)
                raise
            self._prune(r, keep=version)
        log.info("deployed certificate %x for %s on %s (%s)", info.serial, ", ".join(names),
                 self.access.name, self.account)
        return info

    def _wait_served(self, name: str, info: CertificateInfo) -> None:
        deadline = time.monotonic() + self.serve_timeout_s
        seen = "nothing"
        while True:
            try:
                served = self.served_certificate(name)
                if served.serial == info.serial:
                    return
                seen = f"serial {served.serial:x}"
            except (OSError, ssl.SSLError) as exc:
                seen = str(exc) or type(exc).__name__
            if time.monotonic() > deadline:
                raise TransientError(f"node {self.access.name} did not start serving the new certificate "
                                     f"for {name} ({seen})")
            time.sleep(0.05)

    def _wait_previous(self, names: Sequence[str], chain: bytes) -> None:
        """After a rollback: until the previous certificate is what new connections get
        (the reload's old workers may still answer for a moment). Best effort."""
        try:
            info = certificate_info(chain)
            for served_name in names:
                self._wait_served(served_name, info)
        except (InvalidInput, TransientError) as exc:
            log.error("node %s: after the rollback of %s: %s", self.access.name, self.account, exc)

    def _rollback(self, r: _Remote, current: str, previous: str | None, ssl_conf: str,
                  old_conf: bytes | None) -> None:
        try:
            if previous is None:
                r.remove(current)
            else:
                r.swap_link(current, previous)
            if old_conf is None:
                r.remove(ssl_conf)
            elif r.read(ssl_conf) != old_conf:
                r.write(ssl_conf, old_conf, 0o644)
            problem = self._check_and_reload(r)
            if problem:
                log.error("node %s: nginx after the rollback of %s: %s", self.access.name, self.account,
                          problem)
        except Exception:  # noqa: BLE001 - the original failure is what the caller must see
            log.exception("node %s: rollback of the certificate of %s failed", self.access.name,
                          self.account)

    def _prune(self, r: _Remote, keep: str, keep_old: int = 2) -> None:
        """Drop all but the newest `keep_old` earlier versions (the link's target stays)."""
        versions = sorted(e.filename for e in r.listdir(self.cert_dir)
                          if stat.S_ISDIR(e.st_mode or 0) and e.filename != keep)
        for old in versions[:-keep_old] if keep_old else versions:
            r.remove_tree(f"{self.cert_dir}/{old}")

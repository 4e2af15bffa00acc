"""A loopback nginx with its own prefix, and the certificate target that drives it:
the stand-in web server of the TLS tests and benchmarks (`adapters.tls_targets`
describes the interface; production certificates go to nodes)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from provisioner.adapters.tls_targets import (
    ACME_TOKEN_CHARS,
    CertificateInfo,
    certificate_info,
    check_key_matches,
    served_certificate,
)
from provisioner.devstack.net import free_port, port_open
from provisioner.errors import ConfigurationError, InvalidInput, TransientError

log = logging.getLogger("provisioner.tls")
_TOKEN_OK = ACME_TOKEN_CHARS


def _safe_name(name: str) -> str:
    clean = name.strip().lower().rstrip(".")
    if not clean or not all(c.isalnum() or c in ".-*" for c in clean) or ".." in clean:
        raise InvalidInput(f"bad site name {name!r}")
    return clean.replace("*", "_wildcard_")


# -- a loopback nginx with its own prefix -------------------------------------------------
_MAIN_CONF = """\
{user}worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    default_type text/plain;
    server {{
        listen {host}:{http_port} default_server;
        server_name _;
        location ^~ /.well-known/acme-challenge/ {{ root {prefix}/challenges; }}
        location / {{ return 404; }}
    }}
    include {prefix}/conf/sites/*.conf;
}}
"""

_SITE_HTTP = """\
server {{
    listen {host}:{http_port};
    server_name {server_names};
    root {prefix}/www/{site};
    location ^~ /.well-known/acme-challenge/ {{ root {prefix}/challenges; }}
}}
"""

_SITE_HTTPS = """\
server {{
    listen {host}:{https_port} ssl;
    server_name {server_names};
    root {prefix}/www/{site};
    ssl_certificate {prefix}/certs/{site}/current/fullchain.pem;
    ssl_certificate_key {prefix}/certs/{site}/current/privkey.pem;
}}
"""


@dataclass
class LocalNginx:
    prefix: Path
    host: str
    http_port: int
    https_port: int
    proc: subprocess.Popen[bytes] | None = None
    binary: str = "nginx"

    @property
    def conf(self) -> Path:
        return self.prefix / "conf" / "nginx.conf"

    def _cmd(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf), *extra]

    def test_config(self) -> str | None:
        """None when `nginx -t` accepts the configuration, else its complaint."""
        proc = subprocess.run(self._cmd("-t", "-q"), capture_output=True, text=True, timeout=30)
        return None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()

    def master_pid(self) -> int:
        if self.proc is not None:
            if self.proc.poll() is not None:
                raise TransientError("nginx is not running")
            return self.proc.pid
        try:
            return int((self.prefix / "nginx.pid").read_text().strip())
        except (OSError, ValueError) as exc:
            raise TransientError(f"nginx under {self.prefix} is not running: {exc}") from exc

    def workers(self) -> set[int]:
        pid = self.master_pid()
        try:
            return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
        except OSError:
            return set()

    def reload(self, timeout_s: float = 15.0) -> None:
        """SIGHUP to the master: nginx re-reads its configuration (keeping the old one when
        the new one does not load). Returns once the workers of the old generation are gone,
        so every new connection sees the new configuration."""
        old = self.workers()
        try:
            os.kill(self.master_pid(), signal.SIGHUP)
        except OSError as exc:
            raise TransientError(f"cannot signal nginx: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while old & self.workers():
            if time.monotonic() > deadline:
                raise TransientError("nginx old workers did not exit after the reload")
            time.sleep(0.005)

    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def local_nginx(prefix: Path | None = None, host: str = "127.0.0.1", http_port: int = 0,
                https_port: int = 0) -> Iterator[LocalNginx]:
    """Start nginx with its own prefix (not the system's config) on loopback; stop it after."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise ConfigurationError("nginx not found: run scripts/install-deps-dns-tls.sh")
    own = prefix is None
    base = Path(tempfile.mkdtemp(prefix="prov-nginx-")) if prefix is None else prefix
    for sub in ("conf/sites", "logs", "tmp", "challenges/.well-known/acme-challenge", "www", "certs"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    server = LocalNginx(base, host, http_port or free_port(host), https_port or free_port(host),
                        binary=binary)
    user = "user root;\n" if os.geteuid() == 0 else ""
    server.conf.write_text(_MAIN_CONF.format(user=user, prefix=base, host=host, http_port=server.http_port))
    problem = server.test_config()
    if problem:
        raise ConfigurationError(f"nginx configuration refused: {problem}")
    server.proc = subprocess.Popen(server._cmd(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while not port_open(host, server.http_port):
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise ConfigurationError(f"nginx did not start: {server.error_log()}")
            time.sleep(0.02)
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGQUIT)
            try:
                server.proc.wait(15)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait(5)
        if own:
            shutil.rmtree(base, ignore_errors=True)


class LocalNginxTarget:
    """A CertificateTarget on a LocalNginx: one vhost per site, like a node's account vhost."""

    def __init__(self, nginx: LocalNginx, serve_timeout_s: float = 15.0) -> None:
        self.nginx = nginx
        self.serve_timeout_s = serve_timeout_s

    # -- the vhost (the hosting account provides it on a node) ------------------------
    def add_site(self, name: str, aliases: Sequence[str] = (), content: str | None = None) -> None:
        """An HTTP vhost serving `name` and its aliases from its own webroot."""
        site = _safe_name(name)
        www = self.nginx.prefix / "www" / site
        www.mkdir(parents=True, exist_ok=True)
        (www / "index.html").write_text(content if content is not None else f"site {name}\n")
        self._write_site_conf(site, [name, *aliases], https=self._cert_dir(site).joinpath("current").exists())
        self._reload_checked()

    def _cert_dir(self, site: str) -> Path:
        return self.nginx.prefix / "certs" / site

    def _site_conf(self, site: str) -> Path:
        return self.nginx.prefix / "conf" / "sites" / f"{site}.conf"

    def _render(self, site: str, names: Sequence[str], https: bool) -> str:
        server_names = " ".join(dict.fromkeys(n.lower().rstrip(".") for n in names))
        values = dict(host=self.nginx.host, http_port=self.nginx.http_port, https_port=self.nginx.https_port,
                      prefix=self.nginx.prefix, site=site, server_names=server_names)
        text = _SITE_HTTP.format(**values)
        if https:
            text += _SITE_HTTPS.format(**values)
        return text

    def _write_site_conf(self, site: str, names: Sequence[str], https: bool) -> None:
        path = self._site_conf(site)
        tmp = path.with_suffix(".conf.tmp")
        tmp.write_text(self._render(site, names, https))
        os.replace(tmp, path)

    def _reload_checked(self) -> None:
        problem = self.nginx.test_config()
        if problem:
            raise ConfigurationError(f"nginx -t refused the configuration: {problem}")
        self.nginx.reload()

    # -- CertificateTarget ------------------------------------------------------------------
    def publish_challenge(self, token: str, content: str) -> None:
        if not token or not set(token) <= _TOKEN_OK:
            raise InvalidInput(f"bad ACME token {token!r}")
        path = self.nginx.prefix / "challenges" / ".well-known" / "acme-challenge" / token
        tmp = path.with_name(f".{token}.tmp")
        tmp.write_text(content)
        tmp.chmod(0o644)
        os.replace(tmp, path)

    def remove_challenge(self, token: str) -> None:
        if token and set(token) <= _TOKEN_OK:
            path = self.nginx.prefix / "challenges" / ".well-known" / "acme-challenge" / token
            path.unlink(missing_ok=True)

    def current_certificate(self, name: str) -> CertificateInfo | None:
        chain = self._cert_dir(_safe_name(name)) / "current" / "fullchain.pem"
        if not chain.exists():
            return None
        return certificate_info(chain.read_bytes())

    def served_certificate(self, name: str) -> CertificateInfo:
        return served_certificate(self.nginx.host, self.nginx.https_port, name.lstrip("*."))

    def deploy(self, name: str, key_pem: bytes, chain_pem: bytes) -> CertificateInfo:
        site = _safe_name(name)
        check_key_matches(key_pem, chain_pem)
        info = certificate_info(chain_pem)
        certs = self._cert_dir(site)
        certs.mkdir(parents=True, exist_ok=True)
        version = certs / f"{datetime.now(UTC):%Y%m%d%H%M%S%f}-{info.serial:x}"[:80]
        version.mkdir()
        key_path = version / "privkey.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        (version / "fullchain.pem").write_bytes(chain_pem)
        current = certs / "current"
        previous = os.readlink(current) if current.is_symlink() else None
        conf = self._site_conf(site)
        old_conf = conf.read_text() if conf.exists() else None
        staged = certs / "current.new"
        staged.unlink(missing_ok=True)
        staged.symlink_to(version.name)
        os.replace(staged, current)
        names = list(info.names) or [name]
        self._write_site_conf(site, names, https=True)
        try:
            problem = self.nginx.test_config()
            if problem:
                raise ConfigurationError(f"nginx -t refused the new certificate for {name}: {problem}")
            self.nginx.reload()
            for served_name in names:
                self._wait_served(served_name.replace("*.", "any."), info)
        except Exception:
            self._rollback(site, current, previous, conf, old_conf)
            shutil.rmtree(version, ignore_errors=True)
            raise
        self._prune(certs, keep={version.name})
        log.info("deployed certificate %x for %s", info.serial, ", ".join(names))
        return info

    def _wait_served(self, server_name: str, info: CertificateInfo) -> None:
        deadline = time.monotonic() + self.serve_timeout_s
        seen: str = "nothing"
        while time.monotonic() < deadline:
            try:
                served = self.served_certificate(server_name)
                if served.serial == info.serial:
                    return
                seen = f"serial {served.serial:x}"
            except (OSError, ssl.SSLError) as exc:
                seen = str(exc)
            time.sleep(0.02)
        raise TransientError(f"nginx did not start serving the new certificate for {server_name} ({seen})")

    def _rollback(self, site: str, current: Path, previous: str | None, conf: Path,
                  old_conf: str | None) -> None:
        if previous is None:
            current.unlink(missing_ok=True)
        else:
            staged = current.with_name("current.new")
            staged.unlink(missing_ok=True)
            staged.symlink_to(previous)
            os.replace(staged, current)
        if old_conf is None:
            conf.unlink(missing_ok=True)
        else:
            conf.write_text(old_conf)
        if self.nginx.test_config() is None:
            try:
                self.nginx.reload()
            except TransientError:
                log.exception("nginx could not be reloaded after a rollback of %s", site)

    @staticmethod
    def _prune(certs: Path, keep: set[str], keep_old: int = 2) -> None:
        versions = sorted(p for p in certs.iterdir() if p.is_dir() and not p.is_symlink()
                          and p.name not in keep)
        for old in versions[:-keep_old] if keep_old else versions:
            shutil.rmtree(old, ignore_errors=True)

"""Cached root images for throwaway hosts: a debootstrapped base and layers on top.

Layers are directories. The base is a full Debian 12 root made by debootstrap; every
other layer is the *upper* directory of an overlay built on the layers below it, so a
host's root is ``overlay(lowerdir=top:...:base)`` and costs seconds and little disk.

A layer's cache key is the hash of its recipe (packages, script version, parent key):
change the recipe and the layer (and everything above it) is rebuilt, otherwise reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.errors import ConfigurationError, ProvisionerError

RECIPE_VERSION = 3
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"

BASE_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "python3",
    "python3-apt",
    "iproute2",
    "iputils-ping",
    "sudo",
    "ca-certificates",
    "procps",
    "e2fsprogs",
    "less",
)

# What roles/hosting_node installs; present in the layer so a host without a route
# to the internet converges (the role's apt tasks use state=present, no cache update).
NODE_PACKAGES: tuple[str, ...] = (
    "nginx",
    "php-fpm",
    "php-mysql",
    "php-cli",
    "mariadb-server",
    "python3-pymysql",
    "postfix",
    "dovecot-core",
    "dovecot-imapd",
    "dovecot-pop3d",
    "dovecot-lmtpd",
    "pure-ftpd",
    "openssl",
    "ssl-cert",
    "quota",
    "rsyslog",
    "logrotate",
    "restic",  # hosting-backup: nightly backups into the node's repository on the backup host
    # migrations (issue 13): the node pulls from the old provider with these
    "mariadb-client",
    "rsync",
    "lftp",
    "sshpass",
)


PRESEED = """postfix postfix/main_mailer_type select Internet Site
postfix postfix/mailname string localhost.localdomain
pure-ftpd pure-ftpd/standalone-or-inetd select standalone
"""


@dataclass(frozen=True)
class Layer:
    """One image layer: a name, the packages it adds and its parent."""

    name: str
    packages: tuple[str, ...]
    parent: Layer | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        recipe = {
            "version": RECIPE_VERSION,
            "suite": SUITE,
            "name": self.name,
            "packages": sorted(self.packages),
            "parent": self.parent.key if self.parent else None,
            "extra": self.extra,
            "preseed": PRESEED if self.parent else "",
        }
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
        return f"{self.name}-{digest[:16]}"

    def chain(self) -> list[Layer]:
        """This layer and its ancestors, top first (the order of overlay's lowerdir)."""
        out: list[Layer] = []
        layer: Layer | None = self
        while layer is not None:
            out.append(layer)
            layer = layer.parent
        return out


BASE = Layer("base", BASE_PACKAGES)
NODE = Layer("node", NODE_PACKAGES, parent=BASE)


def run(argv: Sequence[str], *, timeout: float = 120, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (argv list, never a shell string); raise ProvisionerError on failure."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False, env=env)
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"{argv[0]} is not installed (run scripts/install-deps-hosts.sh)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ProvisionerError(f"{' '.join(argv)} took longer than {timeout}s") from exc
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise ProvisionerError(f"{' '.join(argv)} failed (rc={proc.returncode}): {tail}")
    return proc


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class ImageStore:
    """Layers under ``<hosts_dir>/images/<key>/``; a layer is ready when ``ready`` exists."""

    def __init__(self, hosts_dir: Path) -> None:
        self.root = hosts_dir / "images"

    def path(self, layer: Layer) -> Path:
        return self.root / layer.key / "root"

    def is_ready(self, layer: Layer) -> bool:
        return (self.root / layer.key / "ready").exists()

    def lowerdirs(self, layer: Layer) -> list[Path]:
        return [self.path(lay) for lay in layer.chain()]

    def ensure(self, layer: Layer) -> list[Path]:
        """Build ``layer`` (and its parents) unless cached; return the lowerdir list."""
        if layer.parent is not None:
            self.ensure(layer.parent)
        with file_lock(self.root / f"{layer.key}.lock"):
            if not self.is_ready(layer):
                self._build(layer)
        return self.lowerdirs(layer)

    def _build(self, layer: Layer) -> None:
        target = self.root / layer.key
        if target.exists():
            _force_remove(target)
        target.mkdir(parents=True)
        started = time.monotonic()
        if layer.parent is None:
            self._debootstrap(layer, target / "root")
        else:
            self._apt_layer(layer, target)
        meta = {"key": layer.key, "packages": sorted(layer.packages),
                "build_s": round(time.monotonic() - started, 1)}
        (target / "meta.json").write_text(json.dumps(meta, indent=2))
        (target / "ready").touch()
        self._prune(layer)

    def _prune(self, layer: Layer) -> None:
        """Remove older builds of the same layer name (their recipe changed)."""
        for other in self.root.glob(f"{layer.name}-*"):
            if other.name in (layer.key, f"{layer.key}.lock"):
                continue
            if other.is_dir() and not _in_use(other):
                _force_remove(other)
            elif other.suffix == ".lock" and not other.with_suffix("").exists():
                other.unlink(missing_ok=True)

    def _debootstrap(self, layer: Layer, root: Path) -> None:
        run(["debootstrap", "--variant=minbase", f"--include={','.join(layer.packages)}",
             SUITE, str(root), MIRROR], timeout=1800)
        _prepare_base(root)

    def _apt_layer(self, layer: Layer, target: Path) -> None:
        assert layer.parent is not None
        upper, work, merged = target / "root", target / "work", target / "merged"
        for d in (upper, work, merged):
            d.mkdir()
        lower = ":".join(str(p) for p in self.lowerdirs(layer.parent))
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)])
        try:
            policy = merged / "usr/sbin/policy-rc.d"
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            nspawn = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
                      "--resolv-conf=copy-host", "--setenv=DEBIAN_FRONTEND=noninteractive",
                      "--setenv=DEBCONF_NONINTERACTIVE_SEEN=true", "--pipe",
                      "-D", str(merged), "--"]
            preseed = merged / "tmp/provisioner.preseed"
            preseed.write_text(PRESEED)
            # A path inside the layer being built, not this machine's /tmp.
            run([*nspawn, "debconf-set-selections", "/tmp/provisioner.preseed"])  # noqa: S108
            preseed.unlink()
            run([*nspawn, "apt-get", "update"], timeout=600)
            run([*nspawn, "apt-get", "install", "-y", "--no-install-recommends",
                 "-o", "Dpkg::Options::=--force-confold", *layer.packages], timeout=1800)
            run([*nspawn, "apt-get", "clean"])
            policy.unlink()
            for lists in (merged / "var/lib/apt/lists").glob("*_Packages"):
                lists.unlink()
        finally:
            run(["umount", str(merged)], check=False)
        shutil.rmtree(work, ignore_errors=True)
        merged.rmdir()


def _prepare_base(root: Path) -> None:
    """Make a debootstrapped root a quick-booting, SSH-ready container image."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every host gets its own ed25519 host key at `up`
    (root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    (root / "etc/ssh/sshd_config.d/10-throwaway.conf").write_text(
        "HostKey /etc/ssh/ssh_host_ed25519_key\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nUseDNS no\n")
    (root / "etc/hostname").write_text("localhost\n")
    (root / "etc/machine-id").write_text("")
    (root / "etc/apt/apt.conf.d/90throwaway").write_text(
        'APT::Install-Recommends "false";\nAcquire::Retries "0";\n')
    wants = root / "etc/systemd/system"
    # Units that slow down boot or make no sense in a container on a test bench.
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                 "fstrim.timer", "systemd-networkd-wait-online.service",
                 "console-getty.service", "getty@.service"):
        link = wants / unit
        if not link.exists():
            link.symlink_to("/dev/null")


def _in_use(layer_dir: Path) -> bool:
    mounts = Path("/proc/mounts").read_text()
    return str(layer_dir) in mounts


def _force_remove(path: Path) -> None:
    """rm -rf that also copes with overlay whiteouts and immutable bits left by builds."""
    run(["rm", "-rf", "--one-file-system", str(path)], timeout=600)

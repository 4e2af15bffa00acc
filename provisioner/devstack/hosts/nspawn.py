"""Throwaway hosts: systemd-nspawn containers booted from cached, copy-on-write images.

Each host is ``<hosts_dir>/hosts/<name>/``: ``state.json``, an overlay (``upper``,
``work``, ``root`` = merged), the nspawn log. Its network namespace is nspawn's
(``--network-bridge``): a veth pair whose host side (``vb-<name>``) sits on the bridge
``provbr0`` (10.213.0.1/24) and whose container side (``host0``) gets 10.213.0.N/24.
All hosts share the bridge, so an "old provider" host can reach "our" node.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from provisioner.adapters.hosting.ansible import Target
from provisioner.adapters.vps.process import container_init as _container_init
from provisioner.adapters.vps.process import is_nspawn
from provisioner.devstack.hosts import cgroups
from provisioner.devstack.hosts.images import BASE, NODE, ImageStore, Layer, file_lock, run
from provisioner.devstack.hosts.ssh import ensure_keypair, wait_for_ssh
from provisioner.errors import ConfigurationError, InvalidInput, ProvisionerError, TransientError

NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,30}")
BRIDGE = "provbr0"
NETWORK = ipaddress.ip_network("10.213.0.0/24")
GATEWAY = ipaddress.ip_address("10.213.0.1")
ADDRESS_DIR = Path("/run/provisioner/hosts-net")  # machine-wide address claims


PathList = list[Path]  # (the adapter has a method named "list")

# nspawn processes this process started, so that ``down`` can reap them (kept for the
# life of the process: dropping a running Popen would warn and leak a zombie).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class HostInfo:
    name: str
    address: str
    state: str  # running | dead
    pid: int
    image: str
    veth: str
    ssh_key: str
    root: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def target(self) -> Target:
        """This host as the node adapters reach it: a throwaway host (no host-key check)."""
        return Target(self.name, self.address, throwaway=True)


def default_hosts_dir() -> Path:
    env = os.environ.get("PROVISIONER_HOSTS_DIR")
    if env:
        return Path(env)
    data = os.environ.get("PROVISIONER_DATA_DIR")
    if data:
        return Path(data) / "hosts"
    return Path("/var/lib/provisioner/hosts") if os.geteuid() == 0 else (
        Path.home() / ".local/share/provisioner/hosts")


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InvalidInput(f"host name {name!r} must match [a-z][a-z0-9-]{{0,30}}")
    return name


def veth_name(name: str) -> str:
    """The host-side interface nspawn creates (it hashes names longer than 15 chars)."""
    ifname = f"vb-{name}"
    if len(ifname) <= 15:
        return ifname
    return ""  # nspawn made it up; found through the bridge at runtime


class NspawnHosts:
    """The throwaway-host adapter: ``up``, ``down``, ``list`` and the image cache."""

    def __init__(self, hosts_dir: Path | None = None, *, ssh_timeout_s: float = 30.0,
                 boot_timeout_s: float = 60.0) -> None:
        self.dir = (hosts_dir or default_hosts_dir()).resolve()
        self.ssh_timeout_s = ssh_timeout_s
        self.boot_timeout_s = boot_timeout_s
        self.images = ImageStore(self.dir)

    # -- paths -----------------------------------------------------------------------
    def host_dir(self, name: str) -> Path:
        return self.dir / "hosts" / validate_name(name)

    @property
    def key_path(self) -> Path:
        return self.dir / "ssh" / "id_ed25519"

    # -- images ----------------------------------------------------------------------
    def ensure_image(self, layer: Layer = BASE) -> PathList:
        _require_tools()
        return self.images.ensure(layer)

    def node_layer(self, role_digest: str) -> Layer:
        """The converged-node snapshot layer for a given role/playbook content."""
        return Layer("converged", (), parent=NODE, extra={"role": role_digest})

    def snapshot(self, name: str, layer: Layer) -> None:
        """Keep the upper dir of a (stopped) converged host as ``layer``."""
        src = self.host_dir(name) / "upper"
        target = self.images.root / layer.key
        with file_lock(self.images.root / f"{layer.key}.lock"):
            if self.images.is_ready(layer):
                return
            if target.exists():
                run(["rm", "-rf", "--one-file-system", str(target)])
            target.mkdir(parents=True)
            run(["cp", "-a", str(src), str(target / "root")], timeout=600)
            # Per-host identity stays with the host, not the image.
            for rel in ("etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub",
                        "etc/machine-id", "etc/hostname", "var/lib/dbus/machine-id"):
                p = target / "root" / rel
                if p.is_file() or p.is_symlink():
                    p.unlink()
            (target / "meta.json").write_text(json.dumps({"key": layer.key, "from": name}))
            (target / "ready").touch()
            self.images._prune(layer)

    # -- lifecycle -------------------------------------------------------------------
    def up(self, name: str, *, layer: Layer = BASE) -> HostInfo:
        """Boot host ``name`` (idempotent: a running host is returned as it is)."""
        validate_name(name)
        lowers = self.ensure_image(layer)
        ensure_keypair(self.key_path)
        with file_lock(self.dir / "hosts.lock"):
            current = self._load(name)
            if current is not None and current.state == "running":
                info = current
            else:
                if current is not None or self.host_dir(name).exists():
                    self._teardown(name)
                info = self._boot(name, layer, lowers)
        try:
            wait_for_ssh(name, info.address, self.key_path, timeout_s=self.ssh_timeout_s,
                         alive=lambda: self._alive(info.pid))
        except ProvisionerError:
            log = self.host_dir(name) / "nspawn.log"
            if not self._alive(info.pid) and log.exists():
                tail = log.read_text(errors="replace")[-1500:]
                raise TransientError(f"host {name}: nspawn exited during boot: {tail}") from None
            raise
        return info

    def down(self, name: str) -> None:
        """Throw host ``name`` away: processes, mounts, links, cgroups, files. Idempotent."""
        validate_name(name)
        with file_lock(self.dir / "hosts.lock"):
            self._teardown(name)

    def list(self) -> list[HostInfo]:
        hosts = self.dir / "hosts"
        if not hosts.is_dir():
            return []
        out = [self._load(p.name) for p in sorted(hosts.iterdir()) if p.is_dir()]
        return [h for h in out if h is not None]

    def get(self, name: str) -> HostInfo | None:
        return self._load(validate_name(name))

    # -- internals -------------------------------------------------------------------
    def _load(self, name: str) -> HostInfo | None:
        path = self.host_dir(name) / "state.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        raw["state"] = "running" if self._alive(int(raw["pid"])) else "dead"
        return HostInfo(**{f.name: raw[f.name] for f in fields(HostInfo)})

    def _alive(self, pid: int) -> bool:
        return is_nspawn(pid)

    def _allocate_address(self, name: str) -> str:
        """Take a free address on the shared bridge.

        Several hosts dirs (CI, a developer, another engineer's tests) share the bridge,
        so addresses are claimed machine-wide: one file per address in ADDRESS_DIR,
        created exclusively, naming the host dir that owns it.
        """
        owner = str(self.host_dir(name))
        used = {h.address for h in self.list() if h.name != name}
        ADDRESS_DIR.mkdir(parents=True, exist_ok=True)
        for addr in NETWORK.hosts():
            if addr == GATEWAY or str(addr) in used:
                continue
            claim = ADDRESS_DIR / str(addr)
            for _ in range(2):
                try:
                    fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    holder = claim.read_text().strip() if claim.exists() else ""
                    if holder == owner:
                        return str(addr)
                    if holder and Path(holder).exists():
                        break
                    claim.unlink(missing_ok=True)  # its host is gone: reclaim
                    continue
                with os.fdopen(fd, "w") as fh:
                    fh.write(owner)
                return str(addr)
        raise TransientError(f"no free address left in {NETWORK} for host {name}")

    def _release_address(self, name: str, address: str) -> None:
        claim = ADDRESS_DIR / address
        try:
            if claim.read_text().strip() == str(self.host_dir(name)):
                claim.unlink()
        except OSError:
            pass

    def _boot(self, name: str, layer: Layer, lowers: PathList) -> HostInfo:
        hdir = self.host_dir(name)
        upper, work, merged = hdir / "upper", hdir / "work", hdir / "root"
        for d in (upper, work, merged):
            d.mkdir(parents=True, exist_ok=True)
        address = self._allocate_address(name)
        _ensure_bridge()
        self._seed_upper(name, upper)
        lower = ":".join(str(p) for p in lowers)
        run(["mount", "-t", "overlay", f"prov-{name}", "-o",
             f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)])
        cgroups.prepare(name)
        argv = ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
                f"--machine={name}", f"--hostname={name}", "-D", str(merged),
                f"--network-bridge={BRIDGE}", "--console=passive",
                "--resolv-conf=off", "--timezone=off", "--link-journal=no"]
        log = open(hdir / "nspawn.log", "wb")  # noqa: SIM115 (handed to the child)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_LOG_LEVEL": "warning"}
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, start_new_session=True,
                                    preexec_fn=lambda: cgroups.enter(name))  # noqa: PLW1509
        finally:
            log.close()
        _CHILDREN[proc.pid] = proc
        info = HostInfo(name=name, address=address, state="running", pid=proc.pid,
                        image=layer.key, veth=veth_name(name), ssh_key=str(self.key_path),
                        root=str(merged))
        state = asdict(info)
        state.update(netns=f"nspawn:{proc.pid}", bridge=BRIDGE, upper=str(upper),
                     work=str(work), lowerdirs=[str(p) for p in lowers])
        state.pop("state")
        tmp = hdir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(hdir / "state.json")
        try:
            leader = self._wait_leader(name, proc)
            self._configure_inside(name, leader, address)
        except BaseException:
            self._teardown(name)
            raise
        return info

    def _seed_upper(self, name: str, upper: Path) -> None:
        """Files that make this host itself, written before boot."""
        ssh = upper / "root/.ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        ssh.chmod(0o700)
        upper.joinpath("root").chmod(0o700)
        auth = ssh / "authorized_keys"
        auth.write_text(self.key_path.with_suffix(".pub").read_text())
        auth.chmod(0o600)
        etc_ssh = upper / "etc/ssh"
        etc_ssh.mkdir(parents=True, exist_ok=True)
        hostkey = etc_ssh / "ssh_host_ed25519_key"
        if not hostkey.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}",
                 "-f", str(hostkey)])
        (upper / "etc/hostname").write_text(f"{name}\n")
        hosts = f"127.0.0.1 localhost\n127.0.1.1 {name}\n"
        (upper / "etc/hosts").write_text(hosts)

    def _wait_leader(self, name: str, proc: subprocess.Popen[bytes]) -> int:
        """The host-side pid of the container's PID 1, once systemd runs as it."""
        deadline = time.monotonic() + self.boot_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.host_dir(name) / "nspawn.log").read_text(errors="replace")[-1500:]
                raise TransientError(f"host {name}: systemd-nspawn exited rc={proc.returncode}:"
                                     f" {tail}")
            leader = _container_init(proc.pid)
            if leader and _has_system_bus(leader):
                return leader
            time.sleep(0.05)
        raise TransientError(f"host {name}: systemd did not come up in {self.boot_timeout_s}s")

    def _configure_inside(self, name: str, leader: int, address: str) -> None:
        prefix = NETWORK.prefixlen
        ns_net = ["nsenter", f"--target={leader}", "--net", "--"]
        run([*ns_net, "ip", "link", "set", "host0", "up"])
        run([*ns_net, "ip", "addr", "replace", f"{address}/{prefix}", "dev", "host0"])
        run([*ns_net, "ip", "route", "replace", "default", "via", str(GATEWAY)])
        self._forget_everywhere(name, address)  # a host thrown away a moment ago may have had it
        if cgroups.mode() != "v2":
            self._writable_cgroups(leader)

    def _forget_everywhere(self, name: str, address: str) -> None:
        """Drop every ARP entry for ``address`` but ``name``'s own: the bridge's, and those of
        the other running hosts, which share the bridge's L2 and would otherwise keep sending
        to a thrown-away host's MAC for a while (an address is reused as soon as it is free)."""
        _forget_neighbour(address)
        for other in self.list():
            if other.name == name or other.state != "running":
                continue
            leader = _container_init(other.pid)
            if leader:
                run(["nsenter", f"--target={leader}", "--net", "--", "ip", "neigh", "flush", "to",
                     address, "dev", "host0"], check=False)

    def _writable_cgroups(self, leader: int) -> None:
        """Remount the v1 controllers read-write inside and re-exec systemd (item 5)."""
        ns = ["nsenter", f"--target={leader}", "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup",
              "--"]
        mounts = Path(f"/proc/{leader}/mounts").read_text().splitlines()
        mounted = {ln.split()[1]: ln.split()[3] for ln in mounts if " cgroup " in ln}
        for ctl in cgroups.V1_CONTROLLERS:
            path = f"/sys/fs/cgroup/{ctl}"
            opts = mounted.get(path)
            if opts is None or opts.startswith("rw"):
                continue
            run([*ns, "umount", path])
            run([*ns, "mount", "-t", "cgroup", "-o", ctl, "cgroup", path])
        run([*ns, "systemctl", "daemon-reexec"], timeout=60)

    def _teardown(self, name: str) -> None:
        hdir = self.host_dir(name)
        state: dict[str, object] = {}
        try:
            state = json.loads((hdir / "state.json").read_text())
        except (OSError, ValueError):
            pass
        pid = int(str(state.get("pid", 0)))
        cgroups.kill_all(name)
        if pid and self._alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reap(pid)
        cgroups.remove(name)
        merged = hdir / "root"
        for _ in range(50):
            if not _is_mount(merged):
                break
            rc = run(["umount", str(merged)], check=False).returncode
            if rc != 0:
                run(["umount", "-l", str(merged)], check=False)
        if state.get("address"):
            self._forget_everywhere(name, str(state["address"]))
            self._release_address(name, str(state["address"]))
        veth = veth_name(name)
        if veth and Path(f"/sys/class/net/{veth}").exists():
            run(["ip", "link", "del", veth], check=False)
        if hdir.exists():
            run(["rm", "-rf", "--one-file-system", str(hdir)], timeout=600)

    def _reap(self, pid: int) -> None:
        if not pid:
            return
        proc = _CHILDREN.pop(pid, None)
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            return
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # not ours; our parent or init reaps it
        except OSError as exc:
            if exc.errno != errno.ECHILD:
                raise


def _require_tools() -> None:
    missing = [t for t in ("systemd-nspawn", "debootstrap", "nsenter", "ip", "ssh-keygen")
               if shutil.which(t) is None]
    if missing:
        raise ConfigurationError(
            f"missing tools {missing}: run scripts/install-deps-hosts.sh")
    if "overlay" not in Path("/proc/filesystems").read_text():
        run(["modprobe", "overlay"], check=False)


def _ensure_bridge() -> None:
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=False)
    addrs = run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout
    if f"{GATEWAY}/" not in addrs:
        run(["ip", "addr", "add", f"{GATEWAY}/{NETWORK.prefixlen}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def _forget_neighbour(address: str) -> None:
    """Drop the bridge's ARP entry for ``address`` (it may name a dead host's MAC)."""
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        run(["ip", "neigh", "flush", "to", address, "dev", BRIDGE], check=False)


def _has_system_bus(leader: int) -> bool:
    """systemd inside is far enough along to take ``daemon-reexec`` and run sshd."""
    root = Path(f"/proc/{leader}/root")
    try:
        return (root / "run/systemd/private").exists() and (
            root / "run/dbus/system_bus_socket").exists()
    except OSError:
        return False


def _is_mount(path: Path) -> bool:
    target = str(path)
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[1] == target:
            return True
    return False


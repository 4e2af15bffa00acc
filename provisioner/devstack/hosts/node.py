"""Throwaway shared-hosting nodes: the converged-node image and hosts booted from it.

The image is the upper layer of a host booted from the node-packages layer and
converged by ``playbooks/hosting_node.yml`` through the hosting adapter. Its key
includes a hash of the role and playbook, so editing the role rebuilds it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

from provisioner.adapters.hosting.ansible import PLAYBOOKS_DIR, ROLES_DIR, RunResult
from provisioner.adapters.hosting.ansible import run_playbook as _run_playbook
from provisioner.devstack.hosts.disk import attach_hosting_disk
from provisioner.devstack.hosts.images import NODE, Layer, file_lock, run
from provisioner.devstack.hosts.nspawn import HostInfo, NspawnHosts, _container_init
from provisioner.errors import InvalidInput, StepFailed

PLAYBOOK = "hosting_node.yml"
BUILDER = "node-image-build"
# Per-node secrets the converge makes that must not be shared through the image (every
# node converged from it makes its own again): the SSH key the node logs in to the
# backup host with (roles/hosting_node, tasks/backup.yml).
NODE_IDENTITY = ("etc/hosting/backup/id_ed25519", "etc/hosting/backup/id_ed25519.pub")


def role_digest() -> str:
    """Hash of everything that decides what a converged node looks like."""
    h = hashlib.sha256(repr(NODE_IDENTITY).encode())
    files = sorted(p for p in (ROLES_DIR / "hosting_node").rglob("*") if p.is_file())
    for p in [PLAYBOOKS_DIR / PLAYBOOK, *files]:
        h.update(str(p.relative_to(ROLES_DIR.parent)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def converge(host: HostInfo, *, timeout_s: float = 900, extravars: dict[str, object] | None = None
             ) -> RunResult:
    """Run the hosting_node playbook against one throwaway host."""
    return converge_all([host], timeout_s=timeout_s, extravars=extravars)


def converge_all(hosts: Sequence[HostInfo], *, timeout_s: float = 900,
                 extravars: dict[str, object] | None = None) -> RunResult:
    """Run the hosting_node playbook against several throwaway hosts (of one hosts dir, one
    key) in one Ansible run: Ansible works on them at once (its forks)."""
    if not hosts:
        raise InvalidInput("converge_all needs at least one host")
    return _run_playbook(PLAYBOOK, [h.target() for h in hosts], dict(extravars or {}),
                         timeout_s=timeout_s, ssh_key=Path(hosts[0].ssh_key), throwaway=True)


def node_layer(hosts: NspawnHosts) -> Layer:
    return hosts.node_layer(role_digest())


def ensure_node_image(hosts: NspawnHosts, *, timeout_s: float = 1200) -> Layer:
    """Build the converged-node image unless it is cached; return its layer."""
    layer = node_layer(hosts)
    if hosts.images.is_ready(layer):
        return layer
    hosts.ensure_image(NODE)
    # One builder at a time per hosts dir (test sessions of several people may race).
    with file_lock(hosts.images.root / "build-converged.lock"):
        if hosts.images.is_ready(layer):
            return layer
        info = hosts.up(BUILDER, layer=NODE)
        try:
            result = converge(info, timeout_s=timeout_s)
            result.raise_for_status("hosts.node_image")
            _poweroff(hosts, info)
            for rel in NODE_IDENTITY:
                (hosts.host_dir(BUILDER) / "upper" / rel).unlink(missing_ok=True)
            hosts.snapshot(BUILDER, layer)
        finally:
            hosts.down(BUILDER)
    return layer


def up_node(hosts: NspawnHosts, name: str) -> HostInfo:
    """Boot ``name`` from the converged-node image (built first if needed)."""
    layer = ensure_node_image(hosts)
    info = hosts.up(name, layer=layer)
    attach_hosting_disk(info)  # /srv/hosting on a block device of its own (IOPS caps)
    return info


def _poweroff(hosts: NspawnHosts, info: HostInfo, timeout_s: float = 60) -> None:
    """Shut the builder down cleanly so that its files (MariaDB's too) are consistent."""
    leader = _container_init(info.pid)
    if not leader:
        raise StepFailed("hosts.node_image", f"host {info.name} is not running")
    run(["nsenter", f"--target={leader}", "--mount", "--pid", "--", "systemctl",
         "poweroff", "--no-block"], check=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = hosts.get(info.name)
        if current is None or current.state != "running":
            return
        time.sleep(0.1)
    raise StepFailed("hosts.node_image", f"host {info.name} did not power off in {timeout_s}s")

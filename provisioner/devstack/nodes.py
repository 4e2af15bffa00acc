"""A throwaway hosting node for the demo: booted on this machine, registered for placement."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from provisioner.devstack.hosts import NspawnHosts
from provisioner.devstack.hosts.node import up_node
from provisioner.domain.names import normalize_domain
from provisioner.store.db import transaction
from provisioner.store.hosting import add_node


def ensure_demo_node(factory: sessionmaker[Session], name: str = "demo-node") -> dict[str, str]:
    """Boot (or find) a throwaway hosting node and register it for placement (``make demo``).

    Uses the throwaway-host cache (``PROVISIONER_HOSTS_DIR``); the node comes from the
    converged-node image, so this takes seconds once the image is built. It is registered
    as a throwaway host: its SSH host key is not checked, and the throwaway hosts' key
    (`node_ssh_key`) reaches it.
    """
    info = up_node(NspawnHosts(ssh_timeout_s=60), name)
    with transaction(factory) as s:
        add_node(s, info.name, info.address, capacity_accounts=100, capacity_disk_mb=1_000_000,
                 throwaway=True)
    return {"name": info.name, "address": info.address}


def live_site(address: str, domain: str) -> dict[str, str]:
    """The URL of a placed site and the curl command that proves it answers from the node."""
    domain = normalize_domain(domain)
    return {"url": f"http://{domain}/",
            "curl": f"curl -sS -H 'Host: {domain}' http://{address}/"}

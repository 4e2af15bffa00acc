"""Nodes of a test module's own, the ``PROVISIONER_E2E_REUSE_NODE`` shortcut, and
testinfra over SSH to a throwaway host.

``PROVISIONER_E2E_REUSE_NODE=NAME`` runs a module against an already running,
converged throwaway host instead (kept afterwards): quicker while working on a role.

A throwaway host is one by data: its target is ``info.target()`` (``throwaway=True``),
and a test that registers it in a database passes ``add_node(..., throwaway=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


def reused_node(hosts: Any) -> Any | None:
    """The host named by ``PROVISIONER_E2E_REUSE_NODE``, or None when it is not set."""
    reuse = os.environ.get("PROVISIONER_E2E_REUSE_NODE")
    if not reuse:
        return None
    info = hosts.get(reuse)
    if info is None or info.state != "running":
        pytest.fail(f"PROVISIONER_E2E_REUSE_NODE={reuse}: no such running host")
    return info


@contextmanager
def own_node(hosts: Any, name: str, label: str) -> Iterator[Any]:
    """A converged hosting node called ``name``, thrown away on exit (or the reused one)."""
    from provisioner.devstack.hosts.node import converge, up_node

    info = reused_node(hosts)
    if info is not None:
        yield info
        return
    try:
        info = up_node(hosts, name)
        converge(info).raise_for_status(label)
        yield info
    finally:
        hosts.down(name)


def infra_host(info: Any, directory: Path) -> Any:
    """testinfra over SSH (paramiko) to the throwaway host ``info``. Its host key is new
    at every boot, so it is not checked (the ssh config written into ``directory``)."""
    import testinfra

    ssh_config = directory / "ssh_config"
    ssh_config.write_text("Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
    return testinfra.get_host(f"paramiko://root@{info.address}", ssh_identity_file=str(info.ssh_key),
                              ssh_config=str(ssh_config))

"""Throwaway hosts booted at once (tests/e2e/nodes.py's ``in_parallel``, ``own_hosts``): each
gets an address of its own and answers as itself, the SSH key pair is made once however
many ask for it at the same moment, and every host is thrown away afterwards."""

from __future__ import annotations

import os
import subprocess
import threading
from functools import partial
from pathlib import Path
from typing import Any

from provisioner.devstack.hosts.ssh import ensure_keypair, ssh_exec
from tests.e2e.nodes import in_parallel


def test_the_key_pair_is_made_once_when_several_threads_ask_at_the_same_moment(tmp_path: Path) -> None:
    path = tmp_path / "ssh" / "id_ed25519"
    start = threading.Barrier(8)

    def ask() -> Path:
        start.wait()
        return ensure_keypair(path)

    assert in_parallel(*[ask] * 8) == [path] * 8
    public = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True,
                            check=True).stdout.split()[:2]
    assert path.with_suffix(".pub").read_text().split()[:2] == public  # one pair, not two halves
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")) == [
        "id_ed25519", "id_ed25519.pub"]


def test_hosts_booted_at_once_each_get_an_address_of_their_own_and_answer_as_themselves(
        hosts: Any) -> None:
    names = [f"t-par{i}-{os.getpid()}" for i in range(3)]
    try:
        infos = in_parallel(*[partial(hosts.up, name) for name in names])
        assert [i.name for i in infos] == names
        assert len({i.address for i in infos}) == len(names)
        for info in infos:
            status, out = ssh_exec(info.name, info.address, Path(info.ssh_key), "hostname")
            assert (status, out.strip()) == (0, info.name)
        running = {h.name: h.address for h in hosts.list() if h.state == "running"}
        assert all(running.get(i.name) == i.address for i in infos)
    finally:
        for name in names:
            hosts.down(name)
    assert not {h.name for h in hosts.list()} & set(names)

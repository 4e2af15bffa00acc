"""The VPS hosts of an installation, each reached by the ``nspawn`` driver.

``NspawnHosts.driver(target, image)`` gives the driver of one VPS host (a `VpsTarget`, from
our ``vps_hosts`` record) for machines made from ``image``:

- a host named in ``local_hosts`` is this machine: its commands run through
  ``LocalRunner``, its units under systemd when systemd is PID 1 here, else with
  ``PlainUnits`` (a container, this CI machine: the unit files are kept in ``unit_dir``);
- any other host is reached over SSH (``SshRunner``, the installation's key; the host key
  is checked against ``known_hosts`` unless the record says the host is a throwaway one),
  its units under systemd.

Every image is a root directory ``<image_root>/<image>/`` on the VPS host (the cached
image a machine's disk is made from). Nothing here is cached between calls: a step gets
a fresh driver (and, for a remote host, its own SSH connection).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

from provisioner.adapters.vps.driver import NspawnDriver
from provisioner.adapters.vps.runner import CommandRunner, LocalRunner, SshRunner
from provisioner.adapters.vps.units import PlainUnits, SystemdUnits, UnitManager
from provisioner.domain.catalog import VPS_IMAGES
from provisioner.errors import InvalidInput


@dataclass(frozen=True)
class VpsTarget:
    """A VPS host as the driver reaches it (plain values from its record)."""

    name: str
    address: str
    user: str = "root"
    port: int = 22
    throwaway: bool = False


def systemd_is_init() -> bool:
    """Whether this machine's PID 1 is systemd (``sd_booted()``'s test)."""
    return Path("/run/systemd/system").is_dir()


@dataclass(frozen=True)
class NspawnHosts:
    """The ``nspawn`` driver per VPS host (see the module doc)."""

    image_root: str
    state_dir: str
    unit_dir: Path  # PlainUnits' unit files on this machine (when systemd is not PID 1 here)
    bridge: str = "provvps0"
    local_hosts: frozenset[str] = frozenset({"local"})
    ssh_key: Path | None = None
    known_hosts: Path | None = None

    def image_dir(self, image: str) -> str:
        if image not in VPS_IMAGES:
            raise InvalidInput(f"unknown VPS image {image!r}; one of {', '.join(VPS_IMAGES)}")
        return f"{self.image_root.rstrip('/')}/{image}"

    def _units(self, target: VpsTarget) -> UnitManager:
        if target.name in self.local_hosts:
            if systemd_is_init():
                return SystemdUnits(LocalRunner())
            # PlainUnits' runner is always a LocalRunner (a narrower attribute type than the
            # protocol's CommandRunner, which mypy's invariance rejects): it meets the protocol.
            return cast(UnitManager, PlainUnits(self.unit_dir))
        runner: CommandRunner = SshRunner(target.name, target.address, user=target.user,
                                          port=target.port, key_path=self.ssh_key,
                                          known_hosts=self.known_hosts, throwaway=target.throwaway)
        return SystemdUnits(runner)

    def driver(self, target: VpsTarget, image: str) -> NspawnDriver:
        return NspawnDriver(self._units(target), image_dir=self.image_dir(image),
                            state_dir=self.state_dir, bridge=self.bridge)

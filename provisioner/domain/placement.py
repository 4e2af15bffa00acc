"""Placement of a new shared-hosting account: the least-full node that still has room.

Pure: nodes come in as plain values (capacity and what is already placed), the
answer is a node name or ``NoCapacity``. "Full" is the larger of the two fill ratios
(accounts and disk) *after* placing the account, so a node nearly out of disk is not
chosen just because it has few accounts. Ties go to the node with more free disk, then
to the name, so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from provisioner.errors import InvalidInput, ProvisionerError


class NoCapacity(ProvisionerError):
    """No registered node can take the account (ops must add a node)."""


@dataclass(frozen=True)
class NodeLoad:
    name: str
    capacity_accounts: int
    capacity_disk_mb: int
    accounts: int = 0
    disk_mb: int = 0  # disk reserved by the accounts on it (their plans' disk_mb)
    active: bool = True

    def fits(self, disk_mb: int) -> bool:
        return (self.active and self.accounts + 1 <= self.capacity_accounts
                and self.disk_mb + disk_mb <= self.capacity_disk_mb)

    def fill_after(self, disk_mb: int) -> float:
        return max((self.accounts + 1) / self.capacity_accounts,
                   (self.disk_mb + disk_mb) / self.capacity_disk_mb)


def choose_node(nodes: Iterable[NodeLoad], disk_mb: int) -> NodeLoad:
    """The node a new account of ``disk_mb`` goes to."""
    if disk_mb <= 0:
        raise InvalidInput("an account reserves a positive amount of disk")
    candidates = [n for n in nodes if n.capacity_accounts > 0 and n.capacity_disk_mb > 0 and n.fits(disk_mb)]
    if not candidates:
        raise NoCapacity(f"no active node has room for one more account with {disk_mb} MB of disk")
    return min(candidates,
               key=lambda n: (n.fill_after(disk_mb), -(n.capacity_disk_mb - n.disk_mb), n.name))

"""Placement: the least-full node (accounts and disk) within each node's capacity."""

from __future__ import annotations

import pytest

from provisioner.domain.placement import NoCapacity, NodeLoad, choose_node
from provisioner.errors import InvalidInput


def test_an_empty_node_is_chosen_over_a_busy_one() -> None:
    nodes = [NodeLoad("a", 100, 100_000, accounts=50, disk_mb=10_000), NodeLoad("b", 100, 100_000)]
    assert choose_node(nodes, 5000).name == "b"


def test_disk_counts_as_much_as_the_number_of_accounts() -> None:
    # "a" has fewer accounts but its disk is nearly gone; "b" is the less full one.
    nodes = [NodeLoad("a", 100, 100_000, accounts=5, disk_mb=90_000),
             NodeLoad("b", 100, 100_000, accounts=30, disk_mb=20_000)]
    assert choose_node(nodes, 2000).name == "b"


def test_a_node_without_room_for_the_disk_is_skipped() -> None:
    nodes = [NodeLoad("a", 100, 10_000, accounts=0, disk_mb=9000), NodeLoad("b", 100, 100_000, accounts=90)]
    assert choose_node(nodes, 2000).name == "b"


def test_a_node_at_its_account_capacity_is_skipped() -> None:
    nodes = [NodeLoad("a", 10, 1_000_000, accounts=10), NodeLoad("b", 1000, 100_000, accounts=900)]
    assert choose_node(nodes, 1000).name == "b"


def test_exactly_full_after_placing_still_fits() -> None:
    assert choose_node([NodeLoad("a", 1, 5000)], 5000).name == "a"


def test_draining_nodes_get_nothing() -> None:
    nodes = [NodeLoad("a", 100, 100_000, active=False), NodeLoad("b", 100, 100_000, accounts=99)]
    assert choose_node(nodes, 1000).name == "b"


@pytest.mark.parametrize("nodes", [
    [],
    [NodeLoad("a", 10, 10_000, accounts=10)],
    [NodeLoad("a", 10, 10_000, disk_mb=9_999)],
    [NodeLoad("a", 0, 10_000)],
    [NodeLoad("a", 10, 10_000, active=False)],
])
def test_no_room_anywhere_is_an_error_for_ops(nodes: list[NodeLoad]) -> None:
    with pytest.raises(NoCapacity):
        choose_node(nodes, 1000)


def test_ties_are_broken_deterministically() -> None:
    nodes = [NodeLoad("b", 100, 100_000), NodeLoad("a", 100, 100_000)]
    assert choose_node(nodes, 1000).name == "a"
    assert choose_node(list(reversed(nodes)), 1000).name == "a"


def test_more_free_disk_wins_a_tie_on_fill() -> None:
    nodes = [NodeLoad("a", 10, 10_000, accounts=4), NodeLoad("b", 10, 20_000, accounts=4)]
    assert choose_node(nodes, 1000).name == "b"


def test_filling_a_cluster_spreads_accounts_evenly() -> None:
    loads = {n: NodeLoad(n, 10, 50_000) for n in ("a", "b", "c")}
    for _ in range(9):
        chosen = choose_node(loads.values(), 5000)
        loads[chosen.name] = NodeLoad(chosen.name, 10, 50_000, chosen.accounts + 1, chosen.disk_mb + 5000)
    assert sorted(n.accounts for n in loads.values()) == [3, 3, 3]
    with pytest.raises(NoCapacity):
        for _ in range(100):
            chosen = choose_node(loads.values(), 5000)
            loads[chosen.name] = NodeLoad(chosen.name, 10, 50_000, chosen.accounts + 1,
                                          chosen.disk_mb + 5000)
    assert all(n.disk_mb <= n.capacity_disk_mb for n in loads.values())


def test_a_nonpositive_disk_reservation_is_refused() -> None:
    with pytest.raises(InvalidInput):
        choose_node([NodeLoad("a", 10, 10_000)], 0)

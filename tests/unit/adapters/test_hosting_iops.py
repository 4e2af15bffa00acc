"""The plan's IOPS caps on a node: the module finds the disk under the hosting root by
itself (io_device "auto"), and hosting-iops writes the caps to the blkio cgroups on
cgroup v1, where systemd leaves them out. The caps holding a real writer are measured in
tests/e2e/test_iops.py; here the parts, loaded as the node runs them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.adapters.node_code import MODULE, ROLES, load_file, load_node

IOPS = ROLES / "hosting_account" / "files" / "usr" / "local" / "sbin" / "hosting-iops"


@pytest.fixture(scope="module")
def module() -> Any:
    return load_node("hosting_account_module", MODULE)


@pytest.fixture
def iops(tmp_path: Path, monkeypatch: Any) -> Any:
    mod = load_file("hosting_iops", IOPS)
    monkeypatch.setattr(mod, "DROPIN", str(tmp_path / "hosting-%s.slice.conf"))
    return mod


def sys_block(tmp_path: Path, path: Path, *, partition: bool) -> Path:
    """A /sys/dev/block with the entry of the device holding ``path``: a disk "vdb", or
    its partition "vdb1"."""
    dev = os.stat(path).st_dev
    disk = tmp_path / "devices" / "vdb"
    disk.mkdir(parents=True)
    (disk / "uevent").write_text("MAJOR=254\nMINOR=16\nDEVNAME=vdb\nDEVTYPE=disk\n")
    target = disk
    if partition:
        target = disk / "vdb1"
        target.mkdir()
        (target / "partition").write_text("1\n")
        (target / "uevent").write_text("DEVNAME=vdb1\nDEVTYPE=partition\n")
    table = tmp_path / "dev-block"
    table.mkdir()
    (table / f"{os.major(dev)}:{os.minor(dev)}").symlink_to(target)
    return table


@pytest.mark.parametrize("partition", [False, True], ids=["disk", "partition"])
def test_the_disk_under_the_hosting_root_is_found(module: Any, tmp_path: Path, partition: bool) -> None:
    root = tmp_path / "srv" / "hosting"
    root.mkdir(parents=True)
    table = sys_block(tmp_path, root, partition=partition)
    assert module.block_device_of(str(root), str(table)) == "/dev/vdb"
    # Not made yet (the first converge): its parent's filesystem.
    assert module.block_device_of(str(root / "later"), str(table)) == "/dev/vdb"


def test_no_disk_no_cap(module: Any, tmp_path: Path) -> None:
    # Not a block device's filesystem (no entry in /sys/dev/block): no IOPS limit.
    assert module.block_device_of(str(tmp_path), str(tmp_path / "empty")) == ""
    assert module.block_device_of("/proc") == ""  # major 0


def blkio_tree(tmp_path: Path) -> Path:
    slice_dir = tmp_path / "cg" / "hosting.slice" / "hosting-shop.slice"
    for d in (slice_dir, slice_dir / "run-u7.service"):
        d.mkdir(parents=True)
        for name in ("blkio.throttle.read_iops_device", "blkio.throttle.write_iops_device"):
            (d / name).write_text("")
    return slice_dir


def test_the_caps_go_to_the_slice_and_every_cgroup_below_it(iops: Any, tmp_path: Path) -> None:
    slice_dir = blkio_tree(tmp_path)
    limits = {"blkio.throttle.read_iops_device": {"7:3": 500},
              "blkio.throttle.write_iops_device": {"7:3": 500}}
    assert iops.apply(str(slice_dir), limits) == 4
    for d in (slice_dir, slice_dir / "run-u7.service"):
        # (a file of the kernel would show the whole table; this one keeps the last write)
        assert (d / "blkio.throttle.write_iops_device").read_text() == "7:3 500\n"
    # A device no longer capped is lifted (0), the wanted cap written again.
    (slice_dir / "blkio.throttle.write_iops_device").write_text("8:0 100\n")
    iops.apply(str(slice_dir), {"blkio.throttle.write_iops_device": {}})
    assert (slice_dir / "blkio.throttle.write_iops_device").read_text() == "8:0 0\n"


def test_the_caps_are_read_from_the_slices_drop_in(iops: Any, tmp_path: Path) -> None:
    device = next((p for p in sorted(Path("/dev").glob("loop[0-9]*")) if p.is_block_device()), None)
    assert device is not None, "this machine has loop devices (scripts/install-deps-hosts.sh)"
    rdev = os.stat(device).st_rdev
    Path(iops.DROPIN % "shop").write_text(
        f"[Slice]\nCPUQuota=50%\nIOReadIOPSMax={device} 500\nIOWriteIOPSMax={device} 400\n"
        "IOWriteIOPSMax=/nonexistent 9\n")
    key = f"{os.major(rdev)}:{os.minor(rdev)}"
    assert iops.wanted("shop") == {"blkio.throttle.read_iops_device": {key: 500},
                                   "blkio.throttle.write_iops_device": {key: 400}}
    assert iops.wanted("other") == {"blkio.throttle.read_iops_device": {},
                                    "blkio.throttle.write_iops_device": {}}


def test_a_bad_account_name_is_refused(iops: Any) -> None:
    assert iops.main(["../etc"]) == 2

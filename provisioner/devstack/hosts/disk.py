"""A real block device under a throwaway node's hosting root.

A node's image lives on overlayfs, which is not a block device: the plan's IOPS caps
(IOReadIOPSMax=/IOWriteIOPSMax= of each account's slice, roles/hosting_account) would
have nothing to hold. Like a real server, a throwaway node gets its hosting root on a
disk of its own: an ext4 image file in the host's directory, attached to a loop device
on this machine and mounted inside the host at ``/srv/hosting`` (with what the image had
there, copied in), when the node boots. roles/hosting_account then finds the disk under
the hosting root by itself (its ``io_device: auto``), as it does on a real server.

The loop device is detached lazily right after the mount (autoclear): it goes away with
the mount, that is, when the host is thrown away; the image file goes with the host's
directory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from provisioner.devstack.hosts.images import run
from provisioner.devstack.hosts.nspawn import HostInfo, _container_init
from provisioner.errors import StepFailed

MOUNTPOINT = "/srv/hosting"
IMAGE = "hosting-disk.img"
SIZE_MB = 1024


def mounted_source(leader: int, mountpoint: str = MOUNTPOINT) -> str:
    """The device mounted at ``mountpoint`` inside the host ("" when none)."""
    for line in Path(f"/proc/{leader}/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) > 4 and fields[4] == mountpoint:
            parts = right.split()
            return parts[1] if len(parts) > 1 else ""
    return ""


def attach_hosting_disk(info: HostInfo, *, size_mb: int = SIZE_MB) -> str:
    """Mount a loop-backed ext4 disk at /srv/hosting inside ``info``; return its device
    ("/dev/loopN"). Idempotent: a disk already mounted there is left as it is."""
    leader = _container_init(info.pid)
    if not leader:
        raise StepFailed("hosts.disk", f"host {info.name} is not running")
    current = mounted_source(leader)
    if current.startswith("/dev/loop"):
        return current
    root = Path(info.root)
    image = root.parent / IMAGE
    seed = root / MOUNTPOINT.lstrip("/")
    seed.mkdir(parents=True, exist_ok=True)
    image.unlink(missing_ok=True)
    with image.open("wb") as fh:
        fh.truncate(size_mb * 1024 * 1024)
    # -d: the image's /srv/hosting (owners and modes too) becomes the new disk's content.
    run(["mkfs.ext4", "-q", "-F", "-m", "0", "-d", str(seed), str(image)], timeout=120)
    device = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    try:
        rdev = os.stat(device).st_rdev
        node = Path(f"/proc/{leader}/root{device}")
        if not node.exists():
            os.mknod(node, 0o660 | stat.S_IFBLK, rdev)
        run(["nsenter", f"--target={leader}", "--mount", "--", "mount", device, MOUNTPOINT])
        run(["nsenter", f"--target={leader}", "--mount", "--", "rmdir", f"{MOUNTPOINT}/lost+found"],
            check=False)
        # The disk's root takes the owner and mode the directory had.
        before = seed.stat()
        inside = Path(f"/proc/{leader}/root{MOUNTPOINT}")
        os.chown(inside, before.st_uid, before.st_gid)
        os.chmod(inside, stat.S_IMODE(before.st_mode))
    finally:
        # Lazy detach: the device stays while mounted and goes away with the mount.
        run(["losetup", "--detach", device], check=False)
    return device

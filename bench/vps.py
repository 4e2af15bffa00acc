"""Benchmark: a paid VPS order until ``ssh`` answers (issue 14).

This machine is the VPS host, wired as tests/e2e/test_vps_pipeline.py wires it (the
product's own `bootstrap`, the catalog's vps-s plan, the harness's cached Debian image, a
SQLite store): an order is made, then paid by card; the clock runs from the payment to
a root login with the password the customer reads from the delivered access-data link.

The floor, measured in the same run on the same host, interleaved with the product's
runs: the same cached image booted by a bare ``systemd-nspawn --boot`` command, with the
same kind of disk (a sparse ext4 image of the plan's size made from the image with
``mkfs.ext4 -d``, loop-mounted), its own veth on the same bridge and an address, until
its sshd sends its banner. The floor writes only what sshd needs to answer at an address:
a host key and the unit that sets the address (the product writes the same two, plus
the host name and the root password).

1. ``--count`` (10) machines one after another: p50 and p95 of each, ratio p50/p50 and
   p95/p95 (target within 1.5x). Each machine is deleted after its measurement.
2. ``--count`` machines at once: the orders paid together, then ``--count`` worker
   threads taking steps from the queue (as that many workers take them from the broker;
   the runner's leases keep each step to one worker), until every machine accepts its
   login; beside ``--count`` bare boots started together until every sshd answers.

Everything the bench starts (machines, state dir, loop devices, veths, the bridge) is
removed at the end, also on failure. Prints one JSON document and writes it to ``--out``
(default ``bench/results/vps.json``). Run from the repo root as root, under the e2e lock::

    flock /tmp/e2e.lock .venv/bin/python bench/vps.py [--count 10]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, write_result  # noqa: E402

from provisioner.adapters.vps import cgroups  # noqa: E402
from provisioner.bootstrap import build_vps_hosts  # noqa: E402
from provisioner.devstack.hosts import NspawnHosts as DevHosts  # noqa: E402
from provisioner.domain.catalog import DEFAULT_CATALOG  # noqa: E402
from provisioner.errors import TransientError  # noqa: E402
from provisioner.store import vps as vps_store  # noqa: E402
from provisioner.store.db import dispose_all, transaction, upgrade  # noqa: E402
from tests.e2e.test_vps_pipeline import HOST, PUBLIC, KillAfterCreate, VpsWorld, _ssh  # noqa: E402
from tests.helpers import MemoryMailer, customer, make_settings, stripe_notice, wire  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "vps.json"
BRIDGE = "provvpsb0"
POOL = "10.219.0.0/24"  # the product leases from the bottom, the floor uses .200 and up
GATEWAY = "10.219.0.1"
PLAN = "vps-s"
FLOOR_FIRST = 200


def _p(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def _banner(address: str, deadline: float) -> None:
    """Until sshd at ``address`` sends its ``SSH-`` banner."""
    while True:
        with socket.socket() as s:
            s.settimeout(1.0)
            try:
                s.connect((address, 22))
                if s.recv(64).startswith(b"SSH-"):
                    return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no sshd banner from {address}")
        time.sleep(0.05)


class Floor:
    """Bare ``systemd-nspawn`` boots of the cached image (see the module doc)."""

    def __init__(self, work: Path, image: Path, disk_mb: int) -> None:
        self.dir = work / "floor"
        self.dir.mkdir()
        self.image, self.disk_mb = image, disk_mb
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()

    def boot(self, n: int) -> dict[str, float]:
        """Disk, seed, boot: seconds to the disk and to sshd's banner."""
        name, address = f"bfl-{n}", f"10.219.0.{FLOOR_FIRST + n}"
        mdir = self.dir / name
        root, disk = mdir / "root", mdir / "disk.img"
        started = time.monotonic()
        root.mkdir(parents=True)
        subprocess.run(["truncate", "-s", f"{self.disk_mb}M", str(disk)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-d", f"{self.image}/", str(disk)], check=True)
        subprocess.run(["mount", "-o", "loop", str(disk), str(root)], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(root / "etc/ssh/ssh_host_ed25519_key")], check=True)
        unit = root / "etc/systemd/system/bench-net.service"
        unit.write_text("[Unit]\nBefore=network.target ssh.service\n[Service]\nType=oneshot\n"
                        "ExecStart=/sbin/ip link set host0 up\n"
                        f"ExecStart=/sbin/ip addr replace {address}/24 dev host0\n"
                        "[Install]\nWantedBy=multi-user.target\n")
        (root / "etc/systemd/system/multi-user.target.wants/bench-net.service").symlink_to(
            "/etc/systemd/system/bench-net.service")
        disk_s = time.monotonic() - started
        log = (mdir / "nspawn.log").open("wb")
        # its own cgroups, as every nspawn on a host whose PID 1 is not systemd needs (no limits)
        cgroups.prepare(name)
        proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--boot", "--keep-unit", "--register=no", f"--machine={name}",
             "-D", str(root),
             f"--network-bridge={BRIDGE}", "--console=passive", "--resolv-conf=off", "--timezone=off",
             "--link-journal=no"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True, preexec_fn=lambda: cgroups.enter(name))  # noqa: PLW1509
        log.close()
        with self.lock:
            self.procs[name] = proc
        try:
            _banner(address, time.monotonic() + 120)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: {(mdir / 'nspawn.log').read_text(errors='replace')[-800:]}") from None
        return {"disk_s": disk_s, "total_s": time.monotonic() - started}

    def remove(self, n: int) -> None:
        name = f"bfl-{n}"
        with self.lock:
            proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nspawn: an orderly shutdown of the machine
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        with contextlib.suppress(OSError):
            cgroups.kill_all(name)
            cgroups.remove(name)
        mdir = self.dir / name
        subprocess.run(["umount", str(mdir / "root")], check=False, capture_output=True)
        loops = subprocess.run(["losetup", "--noheadings", "--output", "NAME", "-j", str(mdir / "disk.img")],
                               capture_output=True, text=True, check=False).stdout.split()
        for dev in loops:
            subprocess.run(["losetup", "--detach", dev], check=False)
        subprocess.run(["ip", "link", "del", f"vb-{name}"], check=False, capture_output=True)
        shutil.rmtree(mdir, ignore_errors=True)

    def remove_all(self) -> None:
        for path in sorted(self.dir.glob("bfl-*")):
            self.remove(int(path.name.removeprefix("bfl-")))


class Product:
    """The product's VPS orders on this machine (the e2e test's world)."""

    def __init__(self, work: Path, image: Path, count: int) -> None:
        images = work / "images"
        images.mkdir()
        (images / "debian-12").symlink_to(image)
        self.db_file = work / "p.sqlite"
        url = f"sqlite:///{self.db_file}"
        upgrade(url)
        self.state_dir = work / "machines"
        settings = make_settings(work, url, 1, public_base_url=PUBLIC, line_kinds="vps",
                                 vps_image_dir=str(images), vps_state_dir=str(self.state_dir),
                                 vps_bridge=BRIDGE, vps_local_hosts=HOST)
        hosts = KillAfterCreate(build_vps_hosts(settings))  # kills=0: the product's driver as is
        mailer = MemoryMailer()
        app, queue = wire(settings, mailer=mailer, vps=hosts)
        with transaction(app.factory) as s:
            vps_store.add_host(s, HOST, "127.0.0.1", pool=POOL, capacity=3 * count,
                               now=datetime.now(UTC))
        self.world = VpsWorld(app, queue, mailer, hosts, self.db_file, self.state_dir)
        self.qlock = threading.Lock()

    def order(self, hostname: str) -> tuple[int, dict[str, Any]]:
        order = self.world.order([f"vps:{PLAN}:{hostname}:1m"], who=customer("en"))
        self.world.drain()
        return int(order["order"]), order["proforma"]

    def pay(self, hostname: str, order_id: int, proforma: dict[str, Any]) -> None:
        w = self.world
        tag = hostname.split(".")[0]
        assert w.ingest(stripe_notice(f"evt_{tag}", f"pi_{tag}", proforma["number"],
                                      Decimal(str(proforma["gross"])))).settled
        w.runner.dispatch(order_id)

    def login(self, hostname: str) -> None:
        data = self.world.reveal(hostname)
        _ssh(data["address"], data["password"], "true", timeout_s=120)

    def one(self, hostname: str) -> float:
        order_id, proforma = self.order(hostname)
        started = time.monotonic()
        self.pay(hostname, order_id, proforma)
        self.world.drain()
        self.login(hostname)
        return time.monotonic() - started

    def workers(self, n: int) -> dict[str, int]:
        """``n`` threads taking steps from the queue until none is queued or running."""
        busy = [0]
        counts = {"steps": 0, "transient": 0}
        runner = self.world.runner
        backoff = self.world.app.settings.step_backoff_s

        def work() -> None:
            while True:
                with self.qlock:
                    if not self.world.queue.keys:
                        if busy[0] == 0:
                            return
                        key = None
                    else:
                        key = self.world.queue.keys.pop(0)
                        busy[0] += 1
                if key is None:
                    time.sleep(0.02)
                    continue
                try:
                    runner.run_step(key)
                    counts["steps"] += 1
                except TransientError:  # back on the queue once its backoff is over
                    counts["transient"] += 1
                    time.sleep(backoff + 0.05)
                    with self.qlock:
                        self.world.queue.keys.append(key)
                finally:
                    with self.qlock:
                        busy[0] -= 1

        with ThreadPoolExecutor(n) as pool:
            for f in [pool.submit(work) for _ in range(n)]:
                f.result()
        return counts

    def delete_all(self) -> list[str]:
        driver = self.world.driver()
        for m in driver.list_tagged():
            with contextlib.suppress(Exception):
                driver.delete(m.vps_id, m.tag)
        return sorted(p.name for p in self.state_dir.glob("vps-*")) if self.state_dir.exists() else []


def _ensure_bridge() -> None:
    if subprocess.run(["ip", "link", "show", "dev", BRIDGE], capture_output=True, check=False).returncode:
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "replace", f"{GATEWAY}/24", "dev", BRIDGE], check=True)
    subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)


def _stats(values: list[float]) -> dict[str, Any]:
    return {"p50_s": statistics.median(values), "p95_s": _p(values, 0.95), "runs_s": values}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    image = DevHosts(ssh_timeout_s=30.0).ensure_image()[-1]  # the cached Debian root
    disk_mb = DEFAULT_CATALOG.vps_plan(PLAN).disk_gb * 1024
    work = Path(tempfile.mkdtemp(prefix="bench-vps-", dir="/var/tmp"))
    result: dict[str, Any] = {"machine": platform.node(), "count": args.count, "plan": PLAN,
                              "disk_mb": disk_mb, "floor_ready": "sshd banner",
                              "product_ready": "root login with the delivered password"}
    floor = Floor(work, Path(image), disk_mb)
    product: Product | None = None
    leftovers: dict[str, Any] = {}
    try:
        _ensure_bridge()
        product = Product(work, Path(image), args.count)
        bare: list[float] = []
        bare_disk: list[float] = []
        paid: list[float] = []
        for i in range(args.count):  # interleaved: the same host load for both
            t = floor.boot(i)
            floor.remove(i)
            bare.append(t["total_s"])
            bare_disk.append(t["disk_s"])
            paid.append(product.one(f"s{i}.vps-bench.si"))
            product.delete_all()
        seq = {"floor": {**_stats(bare), "disk_p50_s": statistics.median(bare_disk)},
               "product": _stats(paid)}
        seq["ratio_p50"] = seq["product"]["p50_s"] / seq["floor"]["p50_s"]
        seq["ratio_p95"] = seq["product"]["p95_s"] / seq["floor"]["p95_s"]
        seq["within_target"] = seq["ratio_p50"] <= 1.5 and seq["ratio_p95"] <= 1.5
        result["sequential"] = seq

        n = args.count
        started = time.monotonic()
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(floor.boot, range(n)))
        floor_all = time.monotonic() - started
        floor.remove_all()

        names = [f"p{i}.vps-bench.si" for i in range(n)]
        orders = [product.order(h) for h in names]
        started = time.monotonic()
        for h, (order_id, proforma) in zip(names, orders, strict=True):
            product.pay(h, order_id, proforma)
        counts = product.workers(n)
        steps_s = time.monotonic() - started
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(product.login, names))
        product_all = time.monotonic() - started
        result["parallel"] = {
            "how": f"{n} orders paid together; {n} worker threads taking steps from the queue",
            "floor_total_s": floor_all, "product_total_s": product_all, "product_steps_s": steps_s,
            "steps_run": counts["steps"], "transient_retries": counts["transient"],
            "ratio": product_all / floor_all}
    finally:
        floor.remove_all()
        if product is not None:
            leftovers["machines"] = product.delete_all()
        for ln in reversed(Path("/proc/mounts").read_text().splitlines()):
            if str(work) in ln:
                subprocess.run(["umount", "-l", ln.split()[1]], check=False)
        subprocess.run(["ip", "link", "del", BRIDGE], check=False, capture_output=True)
        dispose_all()
        loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=False).stdout
        leftovers["loops"] = [ln for ln in loops.splitlines() if str(work) in ln]
        leftovers["veths"] = [ln.split()[0] for ln in links.splitlines()
                              if ln.startswith(("vb-vps-", "vb-bfl-", BRIDGE))]
        shutil.rmtree(work, ignore_errors=True)
        leftovers["work_dir_left"] = work.exists()
    result["left_behind"] = leftovers
    write_result(result, args.out)
    return 0 if not any(leftovers.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

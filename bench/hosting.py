"""Benchmark: paid proforma -> live site, on a throwaway hosting node (issue 4).

1. boots a throwaway node from the converged-node image (``provisioner hosts``) and
   registers it for placement;
2. for each of N accounts: creates a customer and an order for ``hosting:giga5:bN.si``,
   records the payment (the proforma is now paid: the clock starts), then runs the
   order's steps in this process (the same runner and handlers the Celery workers
   use) while a probe asks the node over HTTP, with the site's Host header, until
   the account's own page answers (the clock stops);
3. measures the baseline: one ansible-runner run of a no-op playbook (one ``ping``
   task) against the same node, through the same adapter.

Prints one JSON document and writes it to ``--out`` (default
``bench/results/hosting.json``). Run from the repo root as root::

    .venv/bin/python bench/hosting.py --accounts 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from provisioner.adapters.hosting import Target, run_playbook  # noqa: E402
from provisioner.adapters.hosting.accounts import HostingAccounts  # noqa: E402
from provisioner.adapters.payments import PaymentNotice  # noqa: E402
from provisioner.config import Settings  # noqa: E402
from provisioner.pipeline import capabilities, ops  # noqa: E402, F401 - planners and handlers
from provisioner.pipeline.payments import ingest  # noqa: E402
from provisioner.pipeline.runner import Runner  # noqa: E402
from provisioner.store.db import session_factory, transaction, upgrade  # noqa: E402
from provisioner.store.hosting import add_node  # noqa: E402

CUSTOMER = {"name": "Bench Customer", "address": "Slovenska cesta 1", "postal_code": "1000",
            "city": "Ljubljana", "country": "SI", "email": "bench@example.si", "phone": "+386.41123456",
            "lang": "en"}
NOOP = """---
- name: No-op (baseline of one ansible-runner run).
  hosts: all
  gather_facts: false
  tasks:
    - name: Reach the node and run one module.
      ansible.builtin.ping:
"""


class Outbox:
    """Stands in for the SMTP relay: keeps the messages the steps send."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, *, to: str, rendered: Any, message_id: str, headers: Any = None) -> None:
        self.sent.append({"to": to, "subject": rendered.subject, "message_id": message_id})


def probe(address: str, domain: str, marker: str, stop: threading.Event, out: dict[str, float]) -> None:
    with httpx.Client(timeout=2) as client:
        while not stop.is_set():
            try:
                r = client.get(f"http://{address}/", headers={"Host": domain})
                if r.status_code == 200 and marker in r.text:
                    out["live_at"] = time.monotonic()
                    return
            except httpx.HTTPError:
                pass
            stop.wait(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=5)
    ap.add_argument("--plan", default="giga5")
    ap.add_argument("--node", default="bench-hosting", help="throwaway host name")
    ap.add_argument("--keep", action="store_true", help="keep the node afterwards")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "hosting.json"))
    args = ap.parse_args()

    from provisioner.adapters.hosts import NspawnHosts
    from provisioner.adapters.hosts.node import up_node

    hosts = NspawnHosts(ssh_timeout_s=60)
    t0 = time.monotonic()
    info = up_node(hosts, args.node)
    boot_s = time.monotonic() - t0
    work = Path(tempfile.mkdtemp(prefix="bench-hosting-"))
    try:
        url = f"sqlite:///{work / 'bench.sqlite'}"
        upgrade(url)
        settings = Settings(data_dir=work, database_url=url, public_base_url="http://127.0.0.1:8000")
        factory = session_factory(url)
        with transaction(factory) as s:
            add_node(s, info.name, info.address, capacity_accounts=1000, capacity_disk_mb=10_000_000)
        adapter = HostingAccounts(ssh_key=Path(info.ssh_key), throwaway=True)
        outbox = Outbox()
        queue: list[str] = []
        runner = Runner(settings, factory, queue.append, adapters={"hosting": adapter, "mailer": outbox})

        # Baseline: one no-op ansible-runner run against the same node.
        noop = work / "noop.yml"
        noop.write_text(NOOP)
        baseline = []
        for _ in range(3):
            r = run_playbook(str(noop), [Target(info.name, info.address)], {}, ssh_key=Path(info.ssh_key),
                             throwaway=True)
            assert r.ok, r.errors
            baseline.append(r.duration_s)

        samples: list[dict[str, Any]] = []
        customer = ops.add_customer(factory, CUSTOMER, "bench")
        stamp = int(time.time()) % 100000
        for i in range(args.accounts):
            domain = f"b{stamp}x{i}.si"
            order = ops.create_order(factory, customer["id"], [f"hosting:{args.plan}:{domain}"], None, "fcb",
                                     "bench")
            runner.dispatch(order["order"])
            while queue:
                runner.run_step(queue.pop(0))
            proforma = order["proforma"]
            stop = threading.Event()
            seen: dict[str, float] = {}
            notice = PaymentNotice(provider="stripe", event_id=f"evt_{domain}", kind="payment",
                                   txn_id=f"pi_{domain}", amount=Decimal(str(proforma["gross"])),
                                   currency="EUR", proforma=proforma["number"], reference=None,
                                   payer="Bench", occurred_at=datetime.now(UTC), raw=b"{}")
            paid_at = time.monotonic()
            result = ingest(factory, notice, "bench")
            assert result.settled, result
            thread = threading.Thread(target=probe, args=(info.address, domain, domain, stop, seen))
            thread.start()
            runner.dispatch(result.order_id)
            steps: dict[str, float] = {}
            while queue:
                key = queue.pop(0)
                t = time.monotonic()
                outcome = runner.run_step(key)
                steps[key.rsplit("/", 1)[-1]] = round(time.monotonic() - t, 2)
                if outcome.status == "failed":
                    raise SystemExit(f"step {key} failed: {outcome.detail}")
            thread.join(timeout=30)
            stop.set()
            done_at = time.monotonic()
            if "live_at" not in seen:
                raise SystemExit(f"{domain} never answered over HTTP")
            samples.append({"domain": domain, "paid_to_live_s": round(seen["live_at"] - paid_at, 2),
                            "paid_to_all_steps_done_s": round(done_at - paid_at, 2), "steps_s": steps})
            print(json.dumps(samples[-1]), file=sys.stderr)

        live = [s["paid_to_live_s"] for s in samples]
        report = {
            "benchmark": "hosting: paid proforma -> live site over HTTP",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_avg_1m": round(os.getloadavg()[0], 2)},
            "node": {"name": info.name, "address": info.address, "boot_s": round(boot_s, 2)},
            "plan": args.plan,
            "accounts": len(samples),
            "paid_to_live_p50_s": round(statistics.median(live), 2),
            "paid_to_live_min_s": min(live),
            "paid_to_live_max_s": max(live),
            "baseline_ansible_noop_s": round(statistics.median(baseline), 2),
            "baseline_runs_s": baseline,
            "ratio_p50_to_baseline": round(statistics.median(live) / statistics.median(baseline), 1),
            "credential_mails": sum("access data" in m["subject"] for m in outbox.sent),
            "samples": samples,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return 0
    finally:
        if not args.keep:
            hosts.down(args.node)


if __name__ == "__main__":
    sys.exit(main())

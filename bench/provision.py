"""Benchmark: paid webhook -> site answering, against the floor of the same end state (issue 4).

On one throwaway node (booted from the converged-node image):

1. warm-up: one account through the adapter (installs the role's node-wide support;
   not measured);
2. the one-account floor: a straight shell script over ONE fresh SSH connection that
   produces the same web end state as the role's module for one account (group, user,
   home, docroot and first page, state file, slice and PHP-FPM limits, pool, service
   started, nginx site, ``nginx -t`` and reload), with the module's own renderers, so
   the files are byte for byte the same; several runs, median;
3. ``--accounts`` (10) accounts through the pipeline: for each, an order is created,
   the payment webhook's notice is ingested (the clock starts), the order's steps run
   in this process (the runner and handlers the Celery workers use) while a probe asks
   the node over HTTP with the site's Host header until the account's own page answers
   (the clock stops); p50 and p95;
4. the 20-account floor: the same script for ``--batch`` (20) accounts in ONE SSH
   session (one daemon-reload, one start of all services, one nginx reload);
5. ``--batch`` accounts in one Ansible run (``HostingAccounts.create_many``), then
   ``--batch`` single runs (``HostingAccounts.create``) of other accounts;
6. an ansible-runner no-op (one ``ping``) for reference.

Ratios: pipeline p50 / one-account floor (target <= 6), batch run / 20-account floor
(target <= 4), 20 single runs / batch run (target >= 10). In the same pipeline runs, paid
webhook -> the access-data e-mail handed to the mailer (every step done: the account's
converge sets the passwords and holds the mail; ``notify.credentials`` only sends it),
p50 / one-account floor (target <= 3, issue 12). Prints one JSON document and
writes it to ``--out`` (default ``bench/results/provision.json``). Run from the repo root
as root::

    .venv/bin/python bench/provision.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
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

from provisioner.adapters.hosting import run_playbook  # noqa: E402
from provisioner.adapters.hosting.accounts import AccountSpec, HostingAccounts  # noqa: E402
from provisioner.adapters.payments import PaymentNotice  # noqa: E402
from provisioner.bootstrap import bootstrap  # noqa: E402
from provisioner.config import Settings  # noqa: E402
from provisioner.domain.catalog import DEFAULT_CATALOG  # noqa: E402
from provisioner.pipeline.usecases import ops  # noqa: E402
from provisioner.pipeline.usecases.payments import ingest  # noqa: E402
from provisioner.store.db import transaction, upgrade  # noqa: E402
from provisioner.store.hosting import add_node  # noqa: E402

MODULE = ROOT / "roles" / "hosting_account" / "library" / "hosting_account.py"
MODULE_UTILS = ROOT / "roles" / "hosting_account" / "module_utils"
CUSTOMER = {"name": "Bench Customer", "address": "Slovenska cesta 1", "postal_code": "1000",
            "city": "Ljubljana", "country": "SI", "email": "bench@example.si", "phone": "+386.41123456",
            "lang": "en"}
NOOP = """---
- name: No-op (one ansible-runner run).
  hosts: all
  gather_facts: false
  tasks:
    - name: Reach the node and run one module.
      ansible.builtin.ping:
"""


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_module() -> Any:
    """The role's module, loaded as the node runs it: its ``module_utils`` (which AnsiballZ
    ships along) importable as ``ansible.module_utils.<name>`` while it loads."""
    shipped = {f"ansible.module_utils.{path.stem}": path for path in sorted(MODULE_UTILS.glob("*.py"))}
    saved = {name: sys.modules.get(name) for name in shipped}
    try:
        for name, path in shipped.items():
            sys.modules[name] = _load(name, path)
        return _load("hosting_account_module", MODULE)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


class Outbox:
    """Stands in for the SMTP relay: keeps the messages the steps send."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, *, to: str, rendered: Any, message_id: str, headers: Any = None,
             sender: str | None = None) -> None:
        self.sent.append({"to": to, "subject": rendered.subject, "message_id": message_id,
                          "at": time.monotonic()})


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
            stop.wait(0.02)


def answers(address: str, domain: str) -> bool:
    r = httpx.get(f"http://{address}/", headers={"Host": domain}, timeout=5)
    return r.status_code == 200 and domain in r.text


def all_answer_after(address: str, domains: list[str], started: float, limit_s: float = 30) -> float:
    """Seconds from ``started`` until every domain's own page answers (nginx reloads
    asynchronously: a reload that has returned may not serve the new site yet)."""
    pending = list(domains)
    with httpx.Client(timeout=2) as client:
        while pending:
            if time.monotonic() - started > limit_s:
                raise SystemExit(f"{pending[:3]} never answered over HTTP")
            try:
                r = client.get(f"http://{address}/", headers={"Host": pending[0]})
                if r.status_code == 200 and pending[0] in r.text:
                    pending.pop(0)
                    continue
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
    return time.monotonic() - started


# -- the floor: one shell script over one SSH connection ------------------------------------
def floor_script(mod: Any, specs: list[AccountSpec]) -> str:
    """Shell for the same web end state the module writes (its own renderers: same bytes)."""
    params = {"php_max_children": 5, "php_memory_limit": "256M", "io_device": ""}
    out = ["set -eu", "umask 022"]

    def put(path: str, text: str, mode: str, owner: str = "root:root") -> None:
        out.append(f"cat > {shlex.quote(path)} <<'__EOF__'\n{text}__EOF__")
        out.append(f"chmod {mode} {shlex.quote(path)}; chown {owner} {shlex.quote(path)}")

    units = []
    for spec in specs:
        n, home = spec.name, f"/srv/hosting/{spec.name}"
        a = {"name": n, "domains": list(spec.domains), "plan": spec.plan.code, "limits": spec.limits(),
             "home": home, "docroot": home + "/public_html", "socket": f"/run/hosting-php-{n}/php.sock"}
        out.append(f"groupadd {n}; useradd --gid {n} --groups hosting --home-dir {home} --no-create-home "
                   f"--shell /usr/sbin/nologin --password '!' {n}")
        out.append(f"install -d -o {n} -g www-data -m 0750 {home}; install -d -o {n} -g {n} -m 0755 "
                   f"{home}/public_html; install -d -o {n} -g {n} -m 0700 {home}/tmp")
        put(f"{home}/public_html/index.html", mod.render_index(a), "0644", f"{n}:{n}")
        put(f"/etc/hosting/accounts/{n}.json", mod.render_state(a, False), "0600")
        out.append(f"mkdir -p /etc/systemd/system/hosting-{n}.slice.d "
                   f"/etc/systemd/system/hosting-php@{n}.service.d")
        put(f"/etc/systemd/system/hosting-{n}.slice.d/20-limits.conf", mod.render_slice(a, params), "0644")
        put(f"/etc/systemd/system/hosting-php@{n}.service.d/20-limits.conf", mod.render_php_dropin(a), "0644")
        put(f"/etc/php/8.2/fpm/hosting/{n}.conf", mod.render_pool(a, params), "0644")
        out.append(f"ln -sf /etc/systemd/system/hosting-php@.service "
                   f"/etc/systemd/system/multi-user.target.wants/hosting-php@{n}.service")
        put(f"/etc/nginx/sites-available/hosting-{n}.conf", mod.render_vhost(a, False), "0644")
        out.append(f"ln -sf /etc/nginx/sites-available/hosting-{n}.conf "
                   f"/etc/nginx/sites-enabled/hosting-{n}.conf")
        units.append(f"hosting-php@{n}.service")
    out += ["systemctl daemon-reload", "systemctl start " + " ".join(units), "nginx -t -q",
            "systemctl reload nginx"]
    return "\n".join(out) + "\n"


def run_floor(address: str, key: str, script: str, domains: list[str]) -> float:
    """Seconds until the sites answer, for the script over one fresh SSH connection
    (handshake included)."""
    argv = ["ssh", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ControlMaster=no",
            "-o", "ControlPath=none", f"root@{address}", "sh", "-s"]
    t = time.monotonic()
    r = subprocess.run(argv, input=script.encode(), capture_output=True, timeout=300, check=False)
    if r.returncode != 0:
        raise SystemExit(f"floor script failed: {r.stderr.decode()[-800:]}")
    return all_answer_after(address, domains, t)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=10)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--floor-runs", type=int, default=5)
    ap.add_argument("--plan", default="giga5")
    ap.add_argument("--node", default="bench-provision", help="throwaway host name")
    ap.add_argument("--keep", action="store_true", help="keep the node afterwards")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "provision.json"))
    args = ap.parse_args()

    from provisioner.devstack.hosts import NspawnHosts
    from provisioner.devstack.hosts.node import up_node

    mod = load_module()
    plan = DEFAULT_CATALOG.hosting_plan(args.plan)
    hosts = NspawnHosts(ssh_timeout_s=60)
    t0 = time.monotonic()
    info = up_node(hosts, args.node)
    boot_s = time.monotonic() - t0
    work = Path(tempfile.mkdtemp(prefix="bench-provision-"))
    stamp = int(time.time()) % 100000
    try:
        url = f"sqlite:///{work / 'bench.sqlite'}"
        upgrade(url)
        # The pipeline as the composition root wires it (hosting lines only; the node's
        # SSH key from the settings; the node registered as the throwaway host it is).
        settings = Settings(data_dir=work, database_url=url, public_base_url="http://127.0.0.1:8000",
                            line_kinds="hosting", node_ssh_key=str(info.ssh_key))
        outbox = Outbox()
        queue: list[str] = []
        app = bootstrap(settings, enqueue=queue.append, mailer=outbox)
        factory, runner = app.factory, app.runner
        with transaction(factory) as s:
            add_node(s, info.name, info.address, capacity_accounts=1000, capacity_disk_mb=10_000_000,
                     throwaway=True)
        # The adapter itself, for the direct runs (batch, singles, warm-up).
        adapter = HostingAccounts(ssh_key=Path(info.ssh_key))
        target = info.target()  # a throwaway host: its host key is not checked

        # 1. warm-up (installs the node-wide support once).
        warm = adapter.create(target, AccountSpec(f"w{stamp}", (f"w{stamp}.si",), plan, mailboxes=("info",)))
        assert warm.ok, warm.run.errors

        # 2. the one-account floor.
        floor_one = []
        for i in range(args.floor_runs):
            spec = AccountSpec(f"f{stamp}x{i}", (f"f{stamp}x{i}.si",), plan)
            floor_one.append(round(run_floor(info.address, info.ssh_key, floor_script(mod, [spec]),
                                             [spec.domains[0]]), 3))

        # 3. paid webhook -> site answering, through the pipeline.
        samples: list[dict[str, Any]] = []
        customer = ops.add_customer(factory, CUSTOMER, "bench")
        for i in range(args.accounts):
            domain = f"p{stamp}x{i}.si"
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
            thread = threading.Thread(target=probe, args=(info.address, domain, domain, stop, seen))
            thread.start()
            paid_at = time.monotonic()
            result = ingest(factory, notice, "bench", app.planner)
            assert result.settled, result
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
            mailed = [m["at"] for m in outbox.sent if "access data" in m["subject"] and m["at"] >= paid_at]
            if len(mailed) != 1:
                raise SystemExit(f"{domain}: {len(mailed)} access-data e-mails, not one")
            samples.append({"domain": domain, "paid_to_live_s": round(seen["live_at"] - paid_at, 3),
                            "paid_to_access_mail_s": round(mailed[0] - paid_at, 3),
                            "paid_to_all_steps_done_s": round(done_at - paid_at, 2), "steps_s": steps})
            print(json.dumps(samples[-1]), file=sys.stderr)

        # 4. the 20-account floor (one SSH session).
        floor_specs = [AccountSpec(f"g{stamp}x{i}", (f"g{stamp}x{i}.si",), plan) for i in range(args.batch)]
        floor_batch = round(run_floor(info.address, info.ssh_key, floor_script(mod, floor_specs),
                                      [s.domains[0] for s in floor_specs]), 3)

        # 5. the batch in one Ansible run, then as many single runs.
        batch_specs = [AccountSpec(f"b{stamp}x{i}", (f"b{stamp}x{i}.si",), plan, mailboxes=("info",))
                       for i in range(args.batch)]
        t = time.monotonic()
        batch = adapter.create_many(target, batch_specs)
        assert batch.ok, batch.run.errors
        batch_s = round(all_answer_after(info.address, [s.domains[0] for s in batch_specs], t), 3)
        batch_live = all(answers(info.address, s.domains[0]) for s in batch_specs)
        again = adapter.create_many(target, batch_specs)
        assert again.ok, again.run.errors

        single_specs = [AccountSpec(f"s{stamp}x{i}", (f"s{stamp}x{i}.si",), plan, mailboxes=("info",))
                        for i in range(args.batch)]
        singles = []
        for spec in single_specs:
            t = time.monotonic()
            one = adapter.create(target, spec)
            singles.append(round(time.monotonic() - t, 3))
            assert one.ok, one.run.errors
        singles_live = all(answers(info.address, s.domains[0]) for s in single_specs)

        # 6. reference: an ansible-runner no-op against the same node.
        noop = work / "noop.yml"
        noop.write_text(NOOP)
        noops = []
        for _ in range(3):
            r = run_playbook(str(noop), [target], {}, ssh_key=Path(info.ssh_key))
            assert r.ok, r.errors
            noops.append(r.duration_s)

        live = [s["paid_to_live_s"] for s in samples]
        p50, p95 = statistics.median(live), pct(live, 0.95)
        floor1 = statistics.median(floor_one)
        mail = [s["paid_to_access_mail_s"] for s in samples]
        done = [s["paid_to_all_steps_done_s"] for s in samples]
        mail50, mail95 = statistics.median(mail), pct(mail, 0.95)
        singles_total = round(sum(singles), 2)
        report = {
            "benchmark": "provision: paid webhook -> site answering, against the SSH floor",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_avg_1m": round(os.getloadavg()[0], 2)},
            "node": {"name": info.name, "address": info.address, "boot_s": round(boot_s, 2)},
            "plan": args.plan,
            "warmup_create_s": warm.run.duration_s,
            "one_account": {
                "accounts": len(samples),
                "paid_to_live_p50_s": round(p50, 3),
                "paid_to_live_p95_s": round(p95, 3),
                "paid_to_live_min_s": min(live),
                "paid_to_live_max_s": max(live),
                "floor_ssh_s": round(floor1, 3),
                "floor_runs_s": floor_one,
                "ratio_p50_to_floor": round(p50 / floor1, 2),
                "ratio_p95_to_floor": round(p95 / floor1, 2),
                "target_ratio_max": 6,
                "samples": samples,
            },
            "access_mail": {
                "what": "paid webhook -> the access-data e-mail handed to the mailer (every step done)",
                "accounts": len(samples),
                "paid_to_access_mail_p50_s": round(mail50, 3),
                "paid_to_access_mail_p95_s": round(mail95, 3),
                "paid_to_all_steps_done_p50_s": round(statistics.median(done), 3),
                "notify_credentials_step_p50_s": round(statistics.median(
                    s["steps_s"].get("notify.credentials", 0.0) for s in samples), 3),
                "floor_ssh_s": round(floor1, 3),
                "ratio_p50_to_floor": round(mail50 / floor1, 2),
                "ratio_p95_to_floor": round(mail95 / floor1, 2),
                "target_ratio_max": 3,
            },
            "batch": {
                "accounts": args.batch,
                "one_ansible_run_s": batch_s,
                "ansible_run_duration_s": batch.run.duration_s,
                "all_answer_http": batch_live,
                "rerun_s": again.run.duration_s,
                "rerun_changed_tasks": again.changed,
                "floor_ssh_s": floor_batch,
                "ratio_to_floor": round(batch_s / floor_batch, 2),
                "target_ratio_to_floor_max": 4,
                "single_runs_total_s": singles_total,
                "single_runs_s": singles,
                "single_runs_all_answer_http": singles_live,
                "speedup_vs_single_runs": round(singles_total / batch_s, 1),
                "target_speedup_min": 10,
            },
            "ansible_runner_noop_s": round(statistics.median(noops), 3),
            "ansible_runner_noop_runs_s": noops,
            "credential_mails": sum("access data" in m["subject"] for m in outbox.sent),
        }
        report["targets_met"] = {
            "one_account_within_6x_floor": report["one_account"]["ratio_p50_to_floor"] <= 6,
            "access_mail_within_3x_floor": report["access_mail"]["ratio_p50_to_floor"] <= 3,
            "batch_within_4x_floor": report["batch"]["ratio_to_floor"] <= 4,
            "batch_10x_faster_than_singles": report["batch"]["speedup_vs_single_runs"] >= 10,
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

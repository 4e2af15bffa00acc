"""`provisioner demo`: the main job on embedded defaults, end to end.

Starts a local SMTP sink, the HTTP API and a Celery worker (with the re-drive beat)
on a fresh data dir, creates a customer and an order, prints the proforma, delivers
a correctly signed Stripe webhook to the running API, follows the plan to the end,
shows the e-mails that arrived, and says where to look. Nothing to configure.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from provisioner.config import Settings, load_settings
from provisioner.devstack.dns_tls import https_fetch, local_dns_and_ca
from provisioner.devstack.hosts import NspawnHosts
from provisioner.devstack.hosts.nspawn import default_hosts_dir
from provisioner.devstack.net import free_port
from provisioner.devstack.nodes import ensure_demo_node, live_site
from provisioner.devstack.registry import run_sandbox
from provisioner.devstack.registry.store import Store
from provisioner.devstack.smtp_sink import SmtpSink, read_maildir
from provisioner.store.db import session_factory, upgrade

DEMO_CUSTOMER = {
    "name": "Ana Novak",
    "company": "Novak d.o.o.",
    "vat_id": "SI12345679",
    "address": "Slovenska cesta 1",
    "postal_code": "1000",
    "city": "Ljubljana",
    "country": "SI",
    "email": "ana@novak.example",
    "phone": "+386.41123456",
    "lang": "sl",
}
DEMO_ITEMS = ["hosting:giga5:novak.example", "domain:novak.si:1y", "tls:novak.example"]
# The capabilities whose outside systems the demo runs on this machine: the domain is
# registered at the sandbox registry (EPP over TLS on loopback); the hosting account is
# created on a throwaway hosting node (systemd-nspawn, needs root), with its zone on a
# local Knot and its certificate from a local Pebble (HTTP-01 through the account's
# vhost on the node); the tls line's certificate goes to the same vhost.
DEMO_NODE = "demo-node"
# Settings the worker needs to reach the local Knot and Pebble (from local_dns_and_ca).
_DNS_TLS_SETTINGS = ("dns_server", "dns_port", "dns_knotc_socket", "tsig_key_name", "tsig_secret",
                     "tsig_algorithm", "dns_nameservers", "dns_site_ipv4", "acme_directory", "acme_ca_file")
# Shows an order's steps until all are done or one failed (or the timeout, in seconds,
# passed) and returns their counts by state: the CLI hands in its progress display.
Follow = Callable[[sessionmaker[Session], int, float], dict[str, int]]


def _hosts_dir() -> Path:
    return default_hosts_dir()


HOSTS_DIR = _hosts_dir()


def demo_line_kinds() -> str:
    if os.geteuid() == 0 and shutil.which("systemd-nspawn"):
        return "domain,hosting,dns,tls"
    return "domain"


def stripe_payload(event_id: str, intent_id: str, proforma: str, amount: Decimal) -> bytes:
    """A `payment_intent.succeeded` event as Stripe sends it (the fields we read)."""
    cents = int((amount * 100).to_integral_value())
    event = {
        "id": event_id,
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": {
            "id": intent_id, "object": "payment_intent", "amount": cents,
            "amount_received": cents, "currency": "eur", "status": "succeeded",
            "metadata": {"proforma": proforma},
        }},
    }
    return json.dumps(event).encode()


def stripe_signature(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """Stripe's scheme: t=<unix time>,v1=HMAC-SHA256(secret, "<t>.<payload>")."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


@dataclass
class DemoStack:
    settings: Settings
    root: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    sink: SmtpSink | None = None
    dns_tls: Any = None  # dns_tls_local.LocalDnsAndCa when the tls capability is on

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
        s = self.settings
        env.update({
            "PROVISIONER_DATA_DIR": str(s.data_dir),
            "PROVISIONER_DATABASE_URL": s.effective_database_url,
            "PROVISIONER_BROKER_URL": s.effective_broker_url,
            "PROVISIONER_API_TOKEN": s.api_token,
            "PROVISIONER_STRIPE_WEBHOOK_SECRET": s.stripe_webhook_secret,
            "PROVISIONER_SMTP_PORT": str(s.smtp_port),
            "PROVISIONER_REDRIVE_INTERVAL_S": "2",
            "PROVISIONER_LINE_KINDS": s.line_kinds,
            # the links in the e-mails point at the API this demo serves
            "PROVISIONER_PUBLIC_BASE_URL": s.public_base_url,
            # the throwaway hosts' image cache and SSH key: machine-wide, not the demo's
            "PROVISIONER_HOSTS_DIR": str(HOSTS_DIR),
            "PROVISIONER_NODE_SSH_KEY": s.node_ssh_key,
            "PROVISIONER_REGISTRY_HOST": s.registry_host,
            "PROVISIONER_REGISTRY_PORT": str(s.registry_port),
            "PROVISIONER_REGISTRY_LOGIN": s.registry_login,
            "PROVISIONER_REGISTRY_PASSWORD": s.registry_password,
            "PROVISIONER_REGISTRY_CA_FILE": s.registry_ca_file,
            "PYTHONUNBUFFERED": "1",
        })
        for name in _DNS_TLS_SETTINGS:
            value = getattr(s, name)
            if value:
                env[f"PROVISIONER_{name.upper()}"] = str(value)
        return env

    def start(self, name: str, argv: list[str]) -> None:
        with open(self.root / f"{name}.log", "ab") as log:  # the child keeps its own fd
            self.procs[name] = subprocess.Popen(argv, env=self.env(), stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self.sink is not None:
            self.sink.stop()


def run_demo(out: Console, follow: Follow) -> int:
    base = load_settings()
    root = base.data_dir / "demo"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    sink = SmtpSink(root / "mail")
    sink.start()
    sandbox_cm = run_sandbox(root / "registry")
    sandbox = sandbox_cm.__enter__()
    line_kinds = demo_line_kinds()
    dns_tls_cm: Any = None
    dns_tls: Any = None
    if "tls" in line_kinds.split(","):
        # Pebble checks HTTP-01 on port 80 of the address Knot gives: the hosting node.
        dns_tls_cm = local_dns_and_ca(root / "dnstls", validation_ports=(80, 443))
        try:
            dns_tls = dns_tls_cm.__enter__()
        except BaseException:
            sink.stop()
            sandbox_cm.__exit__(None, None, None)
            raise
    settings = base.with_overrides(
        **sandbox.settings_overrides(),
        **(dns_tls.settings if dns_tls is not None else {}),
        # The capabilities whose outside systems the demo runs on this machine.
        line_kinds=line_kinds,
        data_dir=root,
        database_url=f"sqlite:///{root / 'provisioner.sqlite'}",
        broker_url=f"filesystem://{root / 'broker'}",
        api_token=secrets.token_urlsafe(24),
        stripe_webhook_secret="whsec_" + secrets.token_hex(16),
        # the e-mails' links lead to the API the demo serves (its port, chosen now)
        public_base_url=f"http://127.0.0.1:{free_port()}",
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        # the demo's hosting node is a throwaway host: the key those accept reaches it
        node_ssh_key=(str(NspawnHosts(HOSTS_DIR).key_path) if "hosting" in line_kinds.split(",")
                      else base.node_ssh_key),
    )
    stack = DemoStack(settings, root, sink=sink, dns_tls=dns_tls)
    try:
        return _run(out, stack, follow)
    finally:
        stack.stop()
        if dns_tls_cm is not None:
            dns_tls_cm.__exit__(None, None, None)
        sandbox_cm.__exit__(None, None, None)


def _run(out: Console, stack: DemoStack, follow: Follow) -> int:
    s = stack.settings
    root = stack.root
    out.rule("[bold]Provisioner demo[/] (embedded defaults)")
    upgrade(s.effective_database_url)
    api = start_api(stack)
    stack.start("worker", [sys.executable, "-m", "celery", "-A", "provisioner.tasks", "worker",
                           "-B", "-s", str(root / "celerybeat-schedule"), "--concurrency", "2",
                           "--loglevel", "INFO", "-Q", "provisioner"])
    out.print(f"data dir {root}\nSMTP sink on 127.0.0.1:{s.smtp_port}, API on {api}, "
              "one Celery worker (filesystem broker, no server), sandbox EPP registry on "
              f"{s.registry_host}:{s.registry_port}")
    if stack.dns_tls is not None:
        out.print(f"Knot (DNS, TSIG updates) on {s.dns_server}:{s.dns_port}, Pebble (ACME CA) at "
                  f"{s.acme_directory}, its root in {stack.dns_tls.pebble.root_file}")
    client = httpx.Client(base_url=api, timeout=30,
                          headers={"Authorization": f"Bearer {s.api_token}"})
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.get("/health").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or stack.procs["api"].poll() is not None:
            out.print(f"[red]the API did not start; see {root / 'api.log'}[/]")
            return 1
        time.sleep(0.2)

    node: dict[str, str] | None = None
    if "hosting" in s.line_kinds:
        NspawnHosts(HOSTS_DIR).down(DEMO_NODE)  # a clean node for a clean demo

        out.print("booting a throwaway hosting node (the first run builds its image: "
                  "a few minutes; later runs: seconds)")
        node = ensure_demo_node(session_factory(s.effective_database_url), DEMO_NODE)
        out.print(f"hosting node {node['name']} at {node['address']} registered for placement")
    customer = _check(client.post("/customers", json=DEMO_CUSTOMER))
    out.print(f"customer {customer['id']}: {customer['name']}, {customer['company']}")
    created = _check(client.post("/orders", json={"customer_id": customer["id"],
                                                  "items": DEMO_ITEMS}))
    p = created["proforma"]
    table = Table(title=f"Predračun / proforma {p['number']}")
    for col in ("description", "net", "vat", "gross"):
        table.add_column(col, justify="right" if col != "description" else "left")
    for line in p["lines"]:
        table.add_row(line["description"], line["net"], line["vat"], line["gross"])
    table.add_row("[bold]total[/]", p["net"], p["vat"], f"[bold]{p['gross']}[/]")
    out.print(table)
    out.print(f"pay by {p['due_date']} with reference [bold]{p['reference']}[/]")

    payload = stripe_payload("evt_demo_" + secrets.token_hex(6), "pi_demo_" + secrets.token_hex(6),
                             p["number"], Decimal(p["gross"]))
    answer = client.post("/webhooks/stripe", content=payload, headers={
        "Stripe-Signature": stripe_signature(payload, s.stripe_webhook_secret),
        "Content-Type": "application/json"})
    out.print(f"signed Stripe webhook delivered: HTTP {answer.status_code} {answer.json()}")
    forged = client.post("/webhooks/stripe", content=payload, headers={
        "Stripe-Signature": stripe_signature(payload, "whsec_wrong"),
        "Content-Type": "application/json"})
    out.print(f"the same webhook with a forged signature: HTTP {forged.status_code} (refused)")

    factory = session_factory(s.effective_database_url)
    counts = follow(factory, created["order"], 300)
    order = _check(client.get(f"/orders/{created['order']}"))
    steps = Table(title=f"Plan of order {order['id']}: {order['status']}")
    for col in ("key", "state", "attempts"):
        steps.add_column(col)
    for st in order["steps"]:
        steps.add_row(st["key"], st["state"], str(st["attempts"]))
    out.print(steps)
    mails = read_maildir(root / "mail")
    mt = Table(title=f"E-mails delivered to the local SMTP sink ({len(mails)})")
    mt.add_column("to")
    mt.add_column("subject")
    for m in mails:
        mt.add_row(str(m["To"]), str(m["Subject"]))
    out.print(mt)
    services = Table(title="Services")
    for col in ("id", "kind", "name", "state", "detail"):
        services.add_column(col)
    for sv in order["services"]:
        services.add_row(str(sv["id"]), sv["kind"], sv["name"], sv["state"], sv["detail"] or "")
    out.print(services)
    at_registry = _sandbox_domains(root / "registry")
    if at_registry:
        reg = Table(title="At the sandbox registry (EPP)")
        for col in ("name", "registrar", "expires", "nameservers"):
            reg.add_column(col)
        for d in at_registry:
            ns = d.get("ns")
            reg.add_row(str(d["name"]), str(d["cl_id"]), str(d["ex_date"]),
                        ", ".join(ns) if isinstance(ns, list) else str(ns or ""))
        out.print(reg)
    site_ok = True
    if node is not None:
        site = live_site(node["address"], DEMO_ITEMS[0].split(":")[2])
        try:
            answer = httpx.get(f"http://{node['address']}/", timeout=10,
                               headers={"Host": DEMO_ITEMS[0].split(":")[2]})
            site_ok = answer.status_code == 200
            first = answer.text.strip().splitlines()[:1]
            seen = f"HTTP {answer.status_code} {first[0][:60] if first else ''}"
        except httpx.HTTPError as exc:
            site_ok, seen = False, f"no answer: {exc}"
        lines = [f"{site['url']} is live on {node['name']} ({node['address']}): {seen}",
                 f"prove it:  {site['curl']}"]
        if stack.dns_tls is not None:
            https_ok, https_lines = _https_site(stack.dns_tls, node["address"], DEMO_ITEMS[0].split(":")[2])
            site_ok = site_ok and https_ok
            lines += https_lines
        lines.append(f"throw the node away:  provisioner hosts down {node['name']}")
        out.print(Panel.fit("\n".join(lines), title="the customer's site"))
    link_ok = True
    link = access_link(mails, api)
    if link is not None:
        link_ok, seen = check_link(link)
        wait = " (it works while the demo runs: press Enter to stop)" if sys.stdin.isatty() else ""
        out.print(Panel.fit(f"open it in a browser{wait}:\n{link}\n{seen}",
                            title="the customer's access-data link"))
    ok = counts.get("done", 0) == sum(counts.values()) and len(mails) >= 3 and site_ok and link_ok
    env = f"PROVISIONER_DATA_DIR={root}"
    out.print(Panel.fit(
        f"database   {s.effective_database_url}\n"
        f"e-mails    {root / 'mail'} (a Maildir: `mutt -f {root / 'mail'}`)\n"
        f"logs       {root / 'api.log'}  {root / 'worker.log'}\n"
        f"registry   {root / 'registry'}\n"
        f"try        {env} provisioner invoices list\n"
        f"           {env} provisioner payments list --json\n"
        f"           {env} provisioner jobs --order {order['id']}\n"
        f"           {env} provisioner registry-sandbox domains --data-dir {root / 'registry'}",
        title="where to look"))
    if not ok:
        out.print(f"[red]the plan did not finish: {counts}; see {root / 'worker.log'}[/]")
        return 1
    out.print("[bold green]demo finished: paid proforma -> invoice and e-mails, each once[/]")
    if link is not None and sys.stdin.isatty():
        input()
    return 0


def start_api(stack: DemoStack) -> str:
    """Start the demo's API where its ``public_base_url`` (the e-mails' links) points;
    returns that address."""
    api = stack.settings.public_base_url.rstrip("/")
    port = int(api.rsplit(":", 1)[1])
    bindir = Path(sys.executable).parent
    stack.start("api", [str(bindir / "uvicorn"), "--factory", "provisioner.api.app:app_from_env",
                        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"])
    return api


_LINK = re.compile(r"(https?://[^\s/]+/credentials/[A-Za-z0-9_-]{20,100})")


def access_link(mails: list[Any], api: str) -> str | None:
    """The access-data link of the delivered e-mails (the last one), if it leads to ``api``."""
    found = None
    for message in mails:
        part = message.get_body(preferencelist=("plain",))
        text = part.get_content() if part is not None else ""
        for match in _LINK.finditer(text):
            if match.group(1).startswith(api + "/"):
                found = match.group(1)
    return found


def check_link(link: str) -> tuple[bool, str]:
    """Open the link as a browser would first (GET: the page with the button; the data
    stay for the customer's own click)."""
    try:
        page = httpx.get(link, timeout=10)
    except httpx.HTTPError as exc:
        return False, f"[red]the link does not answer: {exc}[/]"
    ok = page.status_code == 200 and '<form method="post"' in page.text
    return ok, f"GET {page.status_code}: {'the page with the button' if ok else page.text[:80]}"


def _https_site(dns_tls: Any, address: str, domain: str) -> tuple[bool, list[str]]:
    """GET https://<domain>/ from the node with an SSL context that trusts only Pebble's
    root (fetched from its management port) and checks the name; the curl that proves it."""
    import ssl
    root_file = dns_tls.pebble.root_file
    curl = f"curl --cacert {root_file} --resolve {domain}:443:{address} https://{domain}/"
    try:
        seen = https_fetch(address, 443, domain, root_file)
    except (OSError, ssl.SSLError) as exc:
        return False, [f"https://{domain}/: no verified answer: {exc}", f"prove it:  {curl}"]
    first = seen["body"].strip().splitlines()[:1]
    return seen["status"] == 200, [
        f"{seen['url']} answers HTTP {seen['status']} {first[0][:60] if first else ''}",
        f"  chain verifies against Pebble's root only; names {', '.join(seen['names'])}; "
        f"valid until {seen['not_after']}",
        f"prove it:  {curl}",
    ]


def _sandbox_domains(data_dir: Path) -> list[dict[str, Any]]:
    """What the sandbox registry holds (its own state file)."""
    store = Store(data_dir / "registry.sqlite")
    try:
        return store.all("SELECT name, cl_id, ex_date, ns FROM domains ORDER BY name")
    finally:
        store.close()


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.method} {response.request.url}: "
                           f"HTTP {response.status_code} {response.text}")
    return response.json()

"""Benchmark of the payment webhook paths against their ceilings (issues 2 and 12).

For each provider (``--providers``: Stripe, the target's measure; PayPal and Braintree,
reported apart) and each database (SQLite in WAL mode, PostgreSQL) this script

1. starts a fresh, migrated database (and a throwaway Redis as the Celery broker,
   unless ``--broker filesystem``), creates customers and orders, so there is one
   open proforma per distinct event;
2. prepares N signed deliveries (Stripe ``payment_intent.succeeded``, PayPal
   ``PAYMENT.CAPTURE.COMPLETED``, Braintree ``transaction_settled``): 80 % distinct
   events, each paying its own proforma in full, 20 % repeats of an earlier event
   (duplicates; a PayPal repeat comes in a transmission of its own, as PayPal's
   redeliveries do). The request path verifies the signature, stores the notification
   (one insert, one commit; PayPal's transmission id is looked up first and claimed in
   the same commit) and answers; matching, settling and planning run in the worker
   (``provisioner.process_notifications``, a batch of notifications per transaction),
   here timed apart after the run (``processing_after``, one worker in this process;
   for PayPal each capture is confirmed through the REST API, a local stand-in here,
   ``provisioner.devstack.paypal_api``), and checked in step 5. Then, for each count in
   ``--processing-workers`` (1 and 2), a fresh backlog of the same size (new proformas,
   stored through the webhook's ``store_batch``) is settled by that many worker
   processes at once (``processing_workers``: PostgreSQL's SKIP LOCKED splits the
   backlog; SQLite has one writer at a time).
   PayPal's signing certificate comes from a local HTTPS host the app and the ceiling
   both trust (``paypal_cert_hosts``, ``paypal_ca_file``), fetched once per process;
3. serves the ceiling (``bench/bare_webhook.py``: read the body, check the
   signature with the provider's own check, answer) and then the real app
   (``provisioner.api.app:app_from_env``) with the same uvicorn and the same
   number of workers, and fires the same deliveries at each from ``wrk`` (one
   thread, C keep-alive connections, a Lua script sending each pre-signed
   request once; signed right before each run, with the signature tolerance
   raised to 1 h for both servers so that a slow run cannot outlive it);
4. sends the same deliveries to the app once more (all duplicates now: the cost of
   the store-first step alone, reported apart as ``app_all_duplicates``);
5. checks the database afterwards: exactly one notification and one payment per
   distinct event, every proforma paid once, a plan in the journal per order.

It prints one JSON document (``results[provider][database]``) and writes it to
``--out``. Run from the repo root::

    .venv/bin/python bench/webhooks.py --requests 5000 --concurrency 50 --db both \
        --providers stripe,paypal,braintree

No Celery worker runs: the steps stay queued. If ``wrk`` is missing the script
installs it with apt-get; if that fails it falls back to a Python asyncio client
(httpx) in a separate process and says so in the JSON (``generator``); that
client tops out far lower and is then itself the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from provisioner.adapters.payments import PaymentNotice  # noqa: E402
from provisioner.adapters.payments.braintree import BraintreeVerifier  # noqa: E402
from provisioner.adapters.payments.paypal import PayPalCaptures, parse_paypal  # noqa: E402
from provisioner.adapters.payments.stripe import parse_stripe  # noqa: E402
from provisioner.bootstrap import planner_for  # noqa: E402
from provisioner.config import Settings  # noqa: E402
from provisioner.devstack.paypal_api import PayPalApi, PayPalCertHost  # noqa: E402
from provisioner.pipeline.usecases import ops  # noqa: E402
from provisioner.pipeline.usecases.payments import Confirm, process_pending, store_batch  # noqa: E402
from provisioner.store.db import dispose_all, session_factory, transaction, upgrade  # noqa: E402
from provisioner.store.models import Notification, Payment, Proforma, Step  # noqa: E402
from tests.payloads import (  # noqa: E402
    braintree_notification,
    make_paypal_signing_cert,
    paypal_event,
    paypal_headers,
    stripe_event,
    stripe_signature,
)
from tests.servers import free_port, postgres_server, redis_server, wait_for  # noqa: E402

VENV_BIN = Path(sys.executable).parent
SECRET = "whsec_bench_" + "b" * 24
TOKEN = "bench-token-" + "t" * 20
TARGETS = {"sqlite": 0.6, "postgres": 0.5}  # Stripe's; the others are reported apart
# notifications settled per second by one worker (issue 15); reported, not part of "pass"
PROCESSING_TARGETS = {"postgres": 500}
PAYPAL_WEBHOOK_ID = "WH-BENCH-1"
PAYPAL_CLIENT = ("bench-client-id", "bench-client-secret")
BRAINTREE = {"braintree_merchant_id": "benchmerchant", "braintree_public_key": "benchpub",
             "braintree_private_key": "benchpriv"}
TOLERANCE_S = 3600
DUPLICATES = 0.2
ORDERS_PER_CUSTOMER = 10
CUSTOMER = {
    "name": "Ana Novak", "address": "Slovenska cesta 1", "postal_code": "1000",
    "city": "Ljubljana", "country": "SI", "email": "ana@example.si",
    "phone": "+386.41123456", "lang": "sl",
}

WRK_SCRIPT = r"""
-- generated by bench/webhooks.py: POST each pre-signed delivery once, then stop.
-- wrk's main thread sleeps for -d whatever the threads do: when the last response is
-- in, we print FINISHED and the caller interrupts wrk (SIGINT), which then reports.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_usec; } bench_timeval;
int gettimeofday(bench_timeval *tv, void *tz);
]]
local tv = ffi.new("bench_timeval")
local function now_us()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec)
end

local reqs = {}
local filler = nil
local n = 0
local i = 0
local started = nil
got, ok2xx, c4xx, c5xx, elapsed = 0, 0, 0, 0, 0

-- each line: <path> TAB <Name: value> (SOH-separated) TAB <body>
function init(args)
  for line in io.lines(args[1]) do
    local tab1 = line:find("\t", 1, true)
    local tab2 = line:find("\t", tab1 + 1, true)
    local headers = {}
    for field in line:sub(tab1 + 1, tab2 - 1):gmatch("[^\1]+") do
      local colon = field:find(": ", 1, true)
      headers[field:sub(1, colon - 1)] = field:sub(colon + 2)
    end
    n = n + 1
    reqs[n] = wrk.format("POST", line:sub(1, tab1 - 1), headers, line:sub(tab2 + 1))
    filler = filler or wrk.format("GET", line:sub(1, tab1 - 1))
  end
end

local verified = false
function request()
  -- wrk calls request() once before the run to count pipelined requests: not a send
  if not verified then verified = true; return reqs[1] end
  if not started then started = now_us() end
  -- past the end only while the last responses are in flight: a GET of the webhook's
  -- path, answered 405 and not counted (a repeat would be a replay: PayPal's is refused)
  i = i + 1
  if i > n then return filler end
  return reqs[i]
end

function response(status, headers, body)
  if status == 405 then return end
  got = got + 1
  if got > n then return end  -- a repeat answered in the same loop turn as the last one
  if status >= 200 and status < 300 then ok2xx = ok2xx + 1
  elseif status >= 500 then c5xx = c5xx + 1
  else c4xx = c4xx + 1 end
  if got == n then
    elapsed = now_us() - started
    io.write("FINISHED\n"); io.flush()
    wrk.thread:stop()
  end
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

function done(summary, latency, requests)
  local a, b, c, d = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("ok2xx"); b = b + t:get("c4xx"); c = c + t:get("c5xx")
    d = math.max(d, t:get("elapsed"))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"ok2xx":%d,"c4xx":%d,"c5xx":%d,' ..
    '"socket_errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, d, a, b, c,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0),
    latency.mean, latency.max))
end
"""


# -- providers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Delivery:
    event_id: str
    body: bytes


class Provider(ABC):
    """One payment provider's side of the benchmark: its settings, its signed deliveries,
    and what the worker needs to process them."""

    name = ""
    path = ""
    targets: dict[str, float] | None = None

    def env(self) -> dict[str, str]:
        """Settings for the app and the ceiling."""
        return {}

    @abstractmethod
    def event(self, n: int, event_id: str, proforma: str, gross: Decimal) -> bytes:
        """The provider's notification body for one paid proforma."""

    @abstractmethod
    def headers(self, body: bytes) -> dict[str, str]:
        """The delivery's headers, signed now."""

    def event_id(self, label: str, body: bytes) -> str:
        """The notification's event id (the label given to `event`, unless the provider
        derives its own)."""
        return label

    def worker_args(self) -> list[str]:
        """What a worker process (``--_worker``) needs to confirm payments: nothing, or
        PayPal's API address."""
        return []

    @abstractmethod
    def parse(self, body: bytes) -> PaymentNotice:
        """The notice the webhook would store for ``body`` (signature checked apart)."""

    def confirm(self) -> Confirm | None:
        return None

    def close(self) -> None:  # noqa: B027 - an optional hook: most providers hold nothing
        return None


class Stripe(Provider):
    name, path, targets = "stripe", "/webhooks/stripe", TARGETS

    def event(self, n: int, event_id: str, proforma: str, gross: Decimal) -> bytes:
        return stripe_event(event_id, proforma, int(gross * 100))

    def headers(self, body: bytes) -> dict[str, str]:
        return {"Stripe-Signature": stripe_signature(body, SECRET, int(time.time())),
                "Content-Type": "application/json"}

    def parse(self, body: bytes) -> PaymentNotice:
        return parse_stripe(body)


class PayPal(Provider):
    """PayPal with its stand-ins: the certificate host (HTTPS, trusted through
    ``paypal_ca_file``) and the REST API that confirms each capture."""

    name, path = "paypal", "/webhooks/paypal"

    def __init__(self) -> None:
        self.key, pem = make_paypal_signing_cert(san_ip="127.0.0.1")
        key_pem = self.key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        self.cert_host = PayPalCertHost(pem, pem, key_pem).__enter__()
        self.api = PayPalApi(*PAYPAL_CLIENT).start()
        self._captures: PayPalCaptures | None = None

    def env(self) -> dict[str, str]:
        return {"PROVISIONER_PAYPAL_WEBHOOK_ID": PAYPAL_WEBHOOK_ID,
                "PROVISIONER_PAYPAL_CERT_HOSTS": self.cert_host.host,
                "PROVISIONER_PAYPAL_CA_FILE": self.cert_host.ca_file,
                "PROVISIONER_PAYPAL_API_BASE": self.api.url,
                "PROVISIONER_PAYPAL_CLIENT_ID": PAYPAL_CLIENT[0],
                "PROVISIONER_PAYPAL_CLIENT_SECRET": PAYPAL_CLIENT[1]}

    def event(self, n: int, event_id: str, proforma: str, gross: Decimal) -> bytes:
        capture = f"BENCH{n:012d}"
        self.api.add_capture(capture, str(gross), "EUR", custom_id=proforma)
        return paypal_event(event_id, proforma, str(gross), capture_id=capture)

    def headers(self, body: bytes) -> dict[str, str]:
        # a transmission of its own for every request, repeats included (as PayPal's)
        return dict(paypal_headers(body, PAYPAL_WEBHOOK_ID, self.key, self.cert_host.cert_url()),
                    **{"Content-Type": "application/json"})

    def parse(self, body: bytes) -> PaymentNotice:
        return parse_paypal(body)

    def worker_args(self) -> list[str]:
        return [self.api.url]

    def confirm(self) -> Confirm | None:
        self._captures = self._captures or PayPalCaptures(self.api.url, *PAYPAL_CLIENT)
        return self._captures.confirm

    def close(self) -> None:
        if self._captures is not None:
            self._captures.close()
        self.api.stop()
        self.cert_host.__exit__(None, None, None)


class Braintree(Provider):
    name, path = "braintree", "/webhooks/braintree"

    def __init__(self) -> None:
        self.verifier = BraintreeVerifier("sandbox", BRAINTREE["braintree_merchant_id"],
                                          BRAINTREE["braintree_public_key"],
                                          BRAINTREE["braintree_private_key"])
        self.gateway = self.verifier.gateway

    def env(self) -> dict[str, str]:
        return {f"PROVISIONER_{k.upper()}": v for k, v in BRAINTREE.items()}

    def event_id(self, label: str, body: bytes) -> str:
        return self.verifier.parse_form(body).event_id

    def event(self, n: int, event_id: str, proforma: str, gross: Decimal) -> bytes:
        signature, payload = braintree_notification(self.gateway, "transaction_settled",
                                                    f"bt{n:08d}", proforma, str(gross))
        return urlencode({"bt_signature": signature, "bt_payload": payload}).encode()

    def headers(self, body: bytes) -> dict[str, str]:
        return {"Content-Type": "application/x-www-form-urlencoded"}

    def parse(self, body: bytes) -> PaymentNotice:
        return self.verifier.parse_form(body)


PROVIDERS: dict[str, type[Provider]] = {"stripe": Stripe, "paypal": PayPal, "braintree": Braintree}


# -- load generation ---------------------------------------------------------------------


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        if subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True).returncode:
            subprocess.run(["apt-get", "update"], capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True)
    found = shutil.which("wrk")
    if not found:
        print("WARNING: wrk is not available; falling back to the Python client, which is "
              "slower than the server and makes the numbers a floor", file=sys.stderr)
    return found


def write_requests(path: Path, provider: Provider, deliveries: list[Delivery]) -> None:
    """One line per request: ``<path>\\t<Name: value>\\x01...\\t<body>``, signed now."""
    with open(path, "wb") as f:
        for d in deliveries:
            assert b"\n" not in d.body and b"\t" not in d.body
            headers = "\x01".join(f"{k}: {v}" for k, v in provider.headers(d.body).items())
            f.write(f"{provider.path}\t{headers}\t".encode() + d.body + b"\n")


def fire(base: str, provider: Provider, deliveries: list[Delivery], concurrency: int,
         work: Path, wrk: str | None) -> dict[str, Any]:
    """Send every delivery once from a separate load-generator process."""
    requests_file = work / "requests.tsv"
    write_requests(requests_file, provider, deliveries)
    if wrk:
        script = work / "webhooks.lua"
        script.write_text(WRK_SCRIPT)
        cmd = [wrk, "-t1", f"-c{concurrency}", "-d600s", "--timeout", "60s", "-s", str(script),
               base, "--", str(requests_file)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_client", base,
               str(requests_file), str(concurrency)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    for text in proc.stdout:
        lines.append(text.rstrip("\n"))
        if text.startswith("FINISHED"):
            proc.send_signal(signal.SIGINT)  # wrk then joins its threads and reports
    _, err = proc.communicate(timeout=60)
    line = next((x for x in lines if x.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"load generator failed:\n{chr(10).join(lines)}\n{err}")
    raw = json.loads(line.removeprefix("BENCHJSON "))
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["ok2xx"] + raw["c4xx"] + raw["c5xx"] + raw["socket_errors"],
        "accepted": raw["ok2xx"],
        "errors": raw["c4xx"] + raw["c5xx"] + raw["socket_errors"],
        "errors_4xx": raw["c4xx"],
        "errors_5xx": raw["c5xx"],
        "socket_errors": raw["socket_errors"],
        "duration_s": round(seconds, 3),
        "accepted_per_s": round(raw["ok2xx"] / seconds, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "mean_ms": round(raw["mean_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
    }


def python_client(base: str, requests_file: str, concurrency: int) -> None:
    """Fallback generator (``--_client``): asyncio + httpx, keep-alive connections."""
    import asyncio

    reqs = []
    for line in Path(requests_file).read_bytes().splitlines():
        path, fields, body = line.split(b"\t", 2)
        headers = dict(field.split(": ", 1) for field in fields.decode().split("\x01"))
        reqs.append((path.decode(), headers, body))

    async def run() -> None:
        latencies: list[float] = []
        counts = {"ok2xx": 0, "c4xx": 0, "c5xx": 0, "socket_errors": 0}
        next_index = iter(range(len(reqs)))
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

            async def worker() -> None:
                for i in next_index:
                    path, headers, body = reqs[i]
                    t0 = time.perf_counter()
                    try:
                        r = await client.post(path, content=body, headers=headers)
                    except httpx.HTTPError:
                        counts["socket_errors"] += 1
                        continue
                    latencies.append(time.perf_counter() - t0)
                    key = "ok2xx" if r.status_code < 300 else "c5xx" if r.status_code >= 500 else "c4xx"
                    counts[key] += 1

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            duration = time.perf_counter() - start
        latencies.sort()

        def pct(p: float) -> int:
            return int(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e6)

        print("BENCHJSON " + json.dumps({
            "requests": len(latencies), "duration_us": int(duration * 1e6), **counts,
            "p50_us": pct(50), "p90_us": pct(90), "p99_us": pct(99),
            "mean_us": sum(latencies) / len(latencies) * 1e6, "max_us": int(latencies[-1] * 1e6),
        }))

    asyncio.run(run())


# -- servers -----------------------------------------------------------------------------
def app_env(data_dir: Path, db_url: str, broker_url: str, provider: Provider) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env.update(provider.env())
    env.update({
        "PROVISIONER_DATA_DIR": str(data_dir),
        "PROVISIONER_DATABASE_URL": db_url,
        "PROVISIONER_BROKER_URL": broker_url,
        "PROVISIONER_STRIPE_WEBHOOK_SECRET": SECRET,
        "PROVISIONER_API_TOKEN": TOKEN,
        # Signed once right before a run: a slow run must not outlive Stripe's 300 s.
        # Same setting for app and ceiling; the check costs the same.
        "PROVISIONER_STRIPE_TOLERANCE_S": str(TOLERANCE_S),
        "PYTHONUNBUFFERED": "1",
    })
    return env


@contextmanager
def uvicorn(target: list[str], env: dict[str, str], workers: int, log: Path) -> Iterator[str]:
    """Serve ``target`` (uvicorn arguments naming the app) on a free port."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "uvicorn"), *target, "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited:\n{log.read_text()}")
        try:
            return httpx.get(f"{base}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 60, f"uvicorn {' '.join(target)}")
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # graceful: background tasks finish
        except ProcessLookupError:
            pass
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


REAL_APP = ["--factory", "provisioner.api.app:app_from_env"]
BARE_APP = ["--app-dir", str(ROOT / "bench"), "--factory", "bare_webhook:create_app"]


# -- data ----------------------------------------------------------------------------------
def make_proformas(db_url: str, count: int, offset: int = 0) -> list[tuple[str, Decimal]]:
    """``count`` open proformas (number, gross), each of its own order (names from
    ``offset`` on)."""
    factory = session_factory(db_url)
    out: list[tuple[str, Decimal]] = []
    customer = None
    for i in range(offset, offset + count):
        if (i - offset) % ORDERS_PER_CUSTOMER == 0:
            customer = ops.add_customer(factory, dict(CUSTOMER, email=f"c{i}@example.si"),
                                        "bench")["id"]
        assert customer is not None
        made = ops.create_order(factory, customer, [f"hosting:giga5:bench{i}.si",
                                                    f"domain:bench{i}.si:1y"],
                                None, "fcb", "bench")
        out.append((made["proforma"]["number"], Decimal(made["proforma"]["gross"])))
    return out


def plan_deliveries(provider: Provider, proformas: list[tuple[str, Decimal]], total: int,
                    prefix: str, rng: random.Random, first: int = 0) -> list[Delivery]:
    """``total`` deliveries: one distinct event per proforma, and ``total - len(proformas)``
    repeats of an earlier event, each placed after its original."""
    distinct = []
    for n, (number, gross) in enumerate(proformas):
        label = f"evt_{prefix}_{n:06d}"
        body = provider.event(first + n, label, number, gross)
        distinct.append(Delivery(provider.event_id(label, body), body))
    keyed = [(float(n), d) for n, d in enumerate(distinct)]
    for _ in range(total - len(distinct)):
        n = rng.randrange(len(distinct))
        keyed.append((n + rng.uniform(1, 200), distinct[n]))  # Stripe retries soon-ish
    keyed.sort(key=lambda kd: kd[0])
    out = [d for _, d in keyed]
    return out


def process_in_workers(db_url: str, provider: Provider, backlog: list[Delivery], workers: int,
                       work: Path) -> dict[str, Any]:
    """Store ``backlog`` (as the webhook does, in batches of its writer's size), then let
    ``workers`` worker processes (``--_worker``) process it at once: each loops on
    `process_pending` until nothing is left, as the worker's task does. Timed from the
    go given to all (they have imported and connected by then) to the last one done."""
    factory = session_factory(db_url)
    stored = 0
    for i in range(0, len(backlog), 256):
        stored += sum(r.status == "accepted" for r in store_batch(
            factory, [provider.parse(d.body) for d in backlog[i:i + 256]]))
    dispose_all()
    procs = []
    for n in range(workers):
        with open(work / f"worker-{workers}-{n}.log", "ab") as log:  # the child keeps its fd
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--_worker", db_url,
                 provider.name, *provider.worker_args()],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True))
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "READY":
                raise RuntimeError(f"a worker did not start: see {work}/worker-*.log")
        t0 = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        load = os.getloadavg()[0]
        reports = []
        for proc in procs:
            out, _ = proc.communicate(timeout=3600)
            reports.append(json.loads(out.strip().splitlines()[-1]))
        seconds = time.monotonic() - t0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    counts = [r["processed"] for r in reports]
    # per_s: the backlog over the time (`check` then finds every one of them processed);
    # the workers' results may count a notification twice if two looked at it
    return {"workers": workers, "notifications": stored, "results_per_worker": counts,
            "seconds": round(seconds, 2), "per_s": round(stored / max(seconds, 1e-9), 1),
            "cpu_s_per_worker": [r["cpu_s"] for r in reports],
            "load_1m_at_start": round(load, 2),
            "note": "cpu_s: each worker process's own CPU time; on a machine with fewer "
                    "free cores than workers (load_1m) the workers wait for a CPU"}


def worker(db_url: str, provider: str, api: str | None) -> None:
    """One worker process (``--_worker``): connect, say READY, wait for GO, then process
    stored notifications until none is left; print how many."""
    planner = planner_for(Settings(database_url=db_url))
    factory = session_factory(db_url)
    captures = PayPalCaptures(api, *PAYPAL_CLIENT) if provider == "paypal" and api else None
    with transaction(factory) as s:
        s.execute(select(func.count()).select_from(Notification)).scalar_one()
    print("READY", flush=True)
    sys.stdin.readline()
    processed = 0
    cpu = time.process_time()
    while done := process_pending(factory, planner, limit=1000,
                                  confirm=captures.confirm if captures else None):
        processed += len(done)
    print(json.dumps({"processed": processed, "cpu_s": round(time.process_time() - cpu, 2)}),
          flush=True)


def check(db_url: str, provider: str, deliveries: list[Delivery],
          proformas: list[str]) -> dict[str, Any]:
    """Correctness under load: one notification and one payment per distinct event."""
    factory = session_factory(db_url)
    events = {d.event_id for d in deliveries}
    with transaction(factory) as s:
        notes = dict(s.execute(
            select(Notification.event_id, Notification.status)
            .where(Notification.provider == provider)).all())
        pay = s.execute(
            select(Payment.txn_id, Payment.status, Proforma.number, Proforma.state)
            .join(Proforma, Payment.proforma_id == Proforma.id)
            .where(Payment.provider == provider)).all()
        per_notification = dict(s.execute(
            select(Payment.notification_id, func.count()).group_by(Payment.notification_id)
        ).all())
        paid = s.execute(select(func.count()).select_from(Proforma)
                         .where(Proforma.number.in_(proformas), Proforma.state == "paid")
                         ).scalar_one()
        orders_with_plan = s.execute(select(func.count(func.distinct(Step.order_id)))).scalar_one()
        steps = dict(s.execute(select(Step.state, func.count()).group_by(Step.state)).all())
    result = {
        "distinct_events": len(events),
        "notifications": len(notes),
        "notifications_processed": sum(1 for v in notes.values() if v == "processed"),
        "payments": len(pay),
        "payments_matched": sum(1 for p in pay if p.status == "matched"),
        "max_payments_per_notification": max(per_notification.values(), default=0),
        "proformas_paid": paid,
        "orders_with_plan": orders_with_plan,
        "steps_by_state": steps,
    }
    result["ok"] = (
        set(notes) == events
        and result["notifications_processed"] == len(events)
        and result["payments"] == len(events)
        and result["payments_matched"] == len(events)
        and len({p.txn_id for p in pay}) == len(events)
        and result["max_payments_per_notification"] == 1
        and paid == len(proformas)
        and orders_with_plan == len(proformas)
    )
    return result


# -- one database --------------------------------------------------------------------------
def bench_db(provider: Provider, kind: str, args: argparse.Namespace, wrk: str | None,
             stack: ExitStack, work: Path) -> dict[str, Any]:
    rng = random.Random(42)
    if kind == "sqlite":
        db_url = f"sqlite:///{work / 'provisioner.sqlite'}"
        db_label = "SQLite (WAL, synchronous=NORMAL)"
    else:
        db_url = stack.enter_context(postgres_server()).create_database()
        db_label = "PostgreSQL (throwaway: fsync=off, synchronous_commit=off)"
    if args.broker == "redis":
        broker_url = stack.enter_context(redis_server()).url
    else:
        broker_url = f"filesystem://{work / 'broker'}"
    upgrade(db_url)

    distinct = round(args.requests * (1 - DUPLICATES))
    t0 = time.monotonic()
    proformas = make_proformas(db_url, distinct + args.warmup)
    setup_s = time.monotonic() - t0
    dispose_all()
    warm = plan_deliveries(provider, proformas[:args.warmup], args.warmup, f"{kind}_warm", rng)
    main = plan_deliveries(provider, proformas[args.warmup:], args.requests, kind, rng,
                           first=args.warmup)

    env = app_env(work / "data", db_url, broker_url, provider)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    with uvicorn(BARE_APP, env, args.workers, logs / "bare.log") as base:
        fire(base, provider, warm, args.concurrency, work, wrk)
        ceiling = fire(base, provider, main, args.concurrency, work, wrk)
    with uvicorn(REAL_APP, env, args.workers, logs / "app.log") as base:
        fire(base, provider, warm, args.concurrency, work, wrk)
        app = fire(base, provider, main, args.concurrency, work, wrk)
        time.sleep(1.0)  # the last background hand-offs
        # The same deliveries again: now every one is a duplicate, i.e. verify, one
        # INSERT .. ON CONFLICT DO NOTHING, answer. The floor of the store-first path.
        redelivered = fire(base, provider, main, args.concurrency, work, wrk)
    # What a worker does next (provisioner.process_notifications): match, settle and
    # plan every stored notification. Timed apart; it is not on the request path.
    planner = planner_for(Settings(database_url=db_url))
    t0 = time.monotonic()
    processed = 0
    confirm = provider.confirm()
    while batch := process_pending(session_factory(db_url), planner, limit=1000, confirm=confirm):
        processed += len(batch)
    seconds = time.monotonic() - t0
    processing = {"notifications": processed, "seconds": round(seconds, 2),
                  "per_s": round(processed / max(seconds, 1e-9), 1),
                  "target_per_s": PROCESSING_TARGETS.get(kind),
                  "note": "in one process after the run, as the worker's task does it"
                          + ("; each capture confirmed through the (local) REST API"
                             if confirm is not None else "")}
    # The same work split between worker processes: each backlog fresh (its own
    # proformas, stored by the webhook's own `store_batch`), the same size as the run's.
    deliveries, numbers = warm + main, [n for n, _ in proformas]
    by_workers: dict[str, Any] = {}
    for workers in args.processing_workers:
        fresh = make_proformas(db_url, distinct, offset=len(numbers))
        dispose_all()
        backlog = plan_deliveries(provider, fresh, distinct, f"{kind}_w{workers}", rng,
                                  first=len(numbers))
        deliveries += backlog
        numbers += [n for n, _ in fresh]
        by_workers[str(workers)] = process_in_workers(db_url, provider, backlog, workers, work)
    one = by_workers.get("1", {}).get("per_s")
    for result in by_workers.values():
        result["ratio_to_one"] = round(result["per_s"] / one, 2) if one else None
    correctness = check(db_url, provider.name, deliveries, numbers)
    dispose_all()
    ratio = app["accepted_per_s"] / ceiling["accepted_per_s"]
    target = provider.targets[kind] if provider.targets is not None else None
    return {
        "provider": provider.name,
        "database": db_label,
        "broker": broker_url.split("://", 1)[0] + ("://127.0.0.1 (redis-server)"
                                                   if args.broker == "redis" else " (kombu)"),
        "proformas_created": len(proformas),
        "setup_s": round(setup_s, 1),
        "app": app,
        "ceiling": ceiling,
        "ratio": round(ratio, 3),
        "target": target,
        "app_all_duplicates": dict(
            redelivered,
            ratio=round(redelivered["accepted_per_s"] / ceiling["accepted_per_s"], 3),
            note="the same deliveries sent again after the run: each is a duplicate "
                 "(verify, INSERT .. ON CONFLICT DO NOTHING, answer); not the target's measure",
        ),
        "processing_after": processing,
        "processing_workers": by_workers,
        "pass": (target is None or ratio >= target) and correctness["ok"] and app["errors"] == 0,
        "correctness": correctness,
    }


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_client":
        python_client(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=5000, help="deliveries per run (20 %% repeats)")
    p.add_argument("--concurrency", type=int, default=50, help="keep-alive connections")
    p.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument("--providers", default="stripe",
                   help="comma-separated: stripe (the target's measure), paypal, braintree")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers (app and ceiling)")
    p.add_argument("--broker", choices=["redis", "filesystem"], default="redis",
                   help="Celery broker the app publishes to (no worker consumes)")
    p.add_argument("--warmup", type=int, default=200,
                   help="distinct deliveries sent first and not measured")
    p.add_argument("--processing-workers", default="1,2",
                   type=lambda v: [int(n) for n in v.split(",") if n.strip()],
                   help="worker processes to settle a fresh backlog with, each count in turn "
                        "(processing_workers; empty: none)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "webhooks.json")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, DB)")
    args = p.parse_args(argv)
    providers = [name.strip() for name in args.providers.split(",") if name.strip()]
    unknown = sorted(set(providers) - set(PROVIDERS))
    if unknown or not providers:
        p.error(f"unknown providers {unknown}; choose from {sorted(PROVIDERS)}")

    wrk = ensure_wrk()
    generator = (f"wrk ({subprocess.run([wrk, '-v'], capture_output=True, text=True).stdout.split()[1]}"
                 f", 1 thread, {args.concurrency} connections)" if wrk
                 else f"python httpx asyncio fallback ({args.concurrency} connections)")
    report: dict[str, Any] = {
        "benchmark": "webhooks",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "params": {"providers": providers, "requests": args.requests, "duplicates": DUPLICATES,
                   "concurrency": args.concurrency, "workers": args.workers,
                   "warmup": args.warmup, "generator": generator,
                   "server": "uvicorn (same options for app and ceiling)"},
        "results": {},
    }
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    for name in providers:
        provider = PROVIDERS[name]()
        report["results"][name] = {}
        try:
            for kind in kinds:
                work = Path(tempfile.mkdtemp(prefix=f"bench-webhooks-{name}-{kind}-"))
                try:
                    with ExitStack() as stack:
                        report["results"][name][kind] = bench_db(provider, kind, args, wrk,
                                                                 stack, work)
                finally:
                    if args.keep:
                        print(f"work directory kept: {work}", file=sys.stderr)
                    else:
                        shutil.rmtree(work, ignore_errors=True)
        finally:
            provider.close()
    report["pass"] = all(r["pass"] for by_db in report["results"].values() for r in by_db.values())
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

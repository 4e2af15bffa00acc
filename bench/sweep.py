"""Benchmark: the lifecycle sweep over 100,000 and 1,000,000 services with 1,000 due,
on SQLite and PostgreSQL (issue 7).

For each database and size, a fresh migrated database is filled with one customer,
one order and N services (generated in SQL), of which 1,000 are due on the swept day:
400 renewal notices (a proforma each), 300 shutdowns (renewal proforma + reactivation
fee + shutdown step), 200 stage-1 deletions and 100 stage-2 purges, plus 100 .com
domains at their registry cut-off (issue 17 item 4: a renewal proforma with the restore
fee and a ``clock.registry_cutoff`` step each); and N new-order
proformas, of which 100 lapse today (unpaid past due date + grace), N/20 are open and
lapse later, the rest paid. The rest are active
with a far expiry. One ``sweep(today)`` is timed (the database part the beat does daily;
the steps it writes run on the workers). Then the work is checked: 1,000 due handled.

Prints one JSON document and writes it to ``--out`` (default bench/results/sweep.json).
Target: under 2 s per sweep, and time(1M) / time(100k) at most 1.5.

    .venv/bin/python bench/sweep.py [--sizes 100000 1000000] [--db sqlite postgres]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select, text  # noqa: E402

from provisioner.domain.lifecycle import backup_purge_date, data_deletion_date  # noqa: E402
from provisioner.domain.policy import FCB  # noqa: E402
from provisioner.pipeline.capabilities import lifecycle as clock  # noqa: E402
from provisioner.store.db import dispose_all, session_factory, transaction, upgrade  # noqa: E402
from provisioner.store.lifecycle import Renewal  # noqa: E402
from provisioner.store.models import Service, Step  # noqa: E402

TODAY = date(2027, 6, 15)
DUE = {"renewal": 400, "shutdown": 300, "delete_data": 200, "purge_backups": 100,
       "registry_cutoff": 100}
LAPSING = 100  # new-order proformas unpaid past due date + grace (issue 17 item 2)


def fill(url: str, n: int) -> float:
    """N services; the first 1,000 are due today. Returns the seconds it took."""
    t0 = time.perf_counter()
    pg = url.startswith("postgresql")
    now = datetime.now(UTC).isoformat(sep=" ")
    far = TODAY + timedelta(days=200)
    # (state, expires_on, clock_on) per group of due services, in id order
    groups = [("active", TODAY + timedelta(days=30), TODAY, DUE["renewal"]),
              ("active", TODAY - timedelta(days=1), TODAY, DUE["shutdown"]),
              # expired so that stage 1 / stage 2 fall due today (the brand's rule)
              ("expired", TODAY - (data_deletion_date(TODAY, FCB) - TODAY), TODAY,
               DUE["delete_data"]),
              ("deleted", TODAY - (backup_purge_date(TODAY, FCB) - TODAY), TODAY,
               DUE["purge_backups"]),
              # .com domains whose lapse day is today (deleted the day before expiry)
              ("active", TODAY + timedelta(days=1), TODAY, DUE["registry_cutoff"])]
    domains_from = sum(DUE.values()) - DUE["registry_cutoff"]  # ids above it are domains
    is_domain = f"x > {domains_from} AND x <= {sum(DUE.values())}"
    seq = ("SELECT generate_series(1, :n) AS x" if pg else
           "WITH RECURSIVE seq(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM seq WHERE x < :n) "
           "SELECT x FROM seq")
    case_state, case_exp, case_clock, lo = [], [], [], 0
    for state, exp, clk, count in groups:
        hi = lo + count
        case_state.append(f"WHEN x <= {hi} THEN '{state}'")
        case_exp.append(f"WHEN x <= {hi} THEN DATE '{exp}'" if pg else f"WHEN x <= {hi} THEN '{exp}'")
        case_clock.append(f"WHEN x <= {hi} THEN DATE '{clk}'" if pg else f"WHEN x <= {hi} THEN '{clk}'")
        lo = hi
    d = (lambda v: f"DATE '{v}'") if pg else (lambda v: f"'{v}'")
    factory = session_factory(url)
    with transaction(factory) as s:
        s.execute(text("INSERT INTO customers (id, name, email, address, postal_code, city, country,"
                       " phone, lang, created_at) VALUES (1, 'Bench', 'bench@example.si', 'Ulica 1',"
                       " '1000', 'Ljubljana', 'SI', '+386.41123456', 'sl', :now)"), {"now": now})
        s.execute(text("INSERT INTO orders (id, customer_id, brand, status, renewal, refund_flag,"
                       " created_at) VALUES (1, 1, 'fcb', 'completed', false, false, :now)"),
                  {"now": now})
        # generated from the constants above: no outside input reaches these strings
        s.execute(text(f"INSERT INTO order_items (id, order_id, position, kind, product, name,"  # noqa: S608
                       f" period_months, action, spec) SELECT x, 1, x,"
                       f" CASE WHEN {is_domain} THEN 'domain' ELSE 'hosting' END,"
                       f" CASE WHEN {is_domain} THEN 'com' ELSE 'giga5' END,"
                       f" CASE WHEN {is_domain} THEN 'c' || x || '.com' ELSE 's' || x || '.si' END,"
                       f" 12, 'new', CASE WHEN {is_domain} THEN 'domain:c' || x || '.com:1y'"
                       f" ELSE 'hosting:giga5:s' || x || '.si:12m' END"
                       f" FROM ({seq}) AS t"), {"n": n})
        s.execute(text(
            f"INSERT INTO services (id, order_id, item_id, customer_id, kind, product, name, state,"  # noqa: S608
            f" period_months, expires_on, clock_on, held, created_at, updated_at)"
            f" SELECT x, 1, x, 1, CASE WHEN {is_domain} THEN 'domain' ELSE 'hosting' END,"
            f" CASE WHEN {is_domain} THEN 'com' ELSE 'giga5' END,"
            f" CASE WHEN {is_domain} THEN 'c' || x || '.com' ELSE 's' || x || '.si' END,"
            f" CASE {' '.join(case_state)} ELSE 'active' END, 12,"
            f" CASE {' '.join(case_exp)} ELSE {d(far)} END,"
            f" CASE {' '.join(case_clock)} ELSE {d(far - timedelta(days=35))} END,"
            f" false, :now, :now FROM ({seq}) AS t"), {"n": n, "now": now})
        # N proformas (issue 17 item 2: unpaid new orders lapse): LAPSING open ones lapse
        # today, one in 20 is open and lapses later, the rest are paid (outside the index)
        lapse_case = (f"CASE WHEN x <= {LAPSING} THEN {d(TODAY)} WHEN x % 20 = 0 THEN "
                      f"{d(TODAY + timedelta(days=5))} ELSE NULL END")
        # each lapsing proforma has its own (new) order; the rest belong to order 1
        s.execute(text(f"INSERT INTO orders (id, customer_id, brand, status, renewal, refund_flag,"  # noqa: S608
                       f" created_at) SELECT x + 1, 1, 'fcb', 'open', false, false, :now"
                       f" FROM ({seq}) AS t"), {"n": LAPSING, "now": now})
        s.execute(text(
            f"INSERT INTO proformas (id, number, reference, order_id, state, issued_on, due_date,"  # noqa: S608
            f" currency, net, vat, gross, lapses_on) SELECT x, 'PR-B-' || x, 'SI12 B' || x,"
            f" CASE WHEN x <= {LAPSING} THEN x + 1 ELSE 1 END,"
            f" CASE WHEN x <= {LAPSING} OR x % 20 = 0 THEN 'open' ELSE 'paid' END,"
            f" {d(TODAY - timedelta(days=20))}, {d(TODAY - timedelta(days=12))}, 'EUR', 8.20,"
            f" 1.80, 10.00, {lapse_case} FROM ({seq}) AS t"), {"n": n})
        if pg:
            for table, last in (("customers", 1), ("orders", LAPSING + 1), ("order_items", n),
                                ("services", n), ("proformas", n)):
                s.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {last})"))
    if pg:
        with transaction(factory) as s:
            s.execute(text("ANALYZE"))
    return time.perf_counter() - t0


def one(db: str, n: int, workdir: Path, pg: Any) -> dict[str, Any]:
    url = (f"sqlite:///{workdir / f'sweep-{n}.sqlite'}" if db == "sqlite"
           else pg.create_database())
    upgrade(url)
    fill_s = fill(url, n)
    factory = session_factory(url)
    t0 = time.perf_counter()
    report = clock.sweep(factory, TODAY)
    sweep_s = time.perf_counter() - t0
    counts = report.counts()
    with transaction(factory) as s:
        renewals = s.execute(select(func.count()).select_from(Renewal)).scalar_one()
        steps = s.execute(select(func.count()).select_from(Step)).scalar_one()
        left = s.execute(select(func.count()).select_from(Service)
                         .where(Service.clock_on <= TODAY)).scalar_one()
    dispose_all()
    assert report.looked_at == sum(DUE.values()), report.looked_at
    assert renewals == DUE["renewal"] + DUE["shutdown"] + DUE["registry_cutoff"], renewals
    assert counts.get("registry_cutoff") == DUE["registry_cutoff"], counts
    assert counts.get("delete_data") == DUE["delete_data"], counts
    assert counts.get("purge_backups") == DUE["purge_backups"], counts
    assert left == 0, left
    assert counts.get("lapse") == LAPSING, counts
    return {"db": db, "services": n, "due": sum(DUE.values()), "fill_s": round(fill_s, 2),
            "sweep_s": round(sweep_s, 3), "counts": counts, "renewals": renewals,
            "steps_written": steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgres"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/sweep.json")
    args = ap.parse_args()
    runs: list[dict[str, Any]] = []
    from tests.servers import postgres_server

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pg_cm = postgres_server() if "postgres" in args.db else None
        pg = pg_cm.__enter__() if pg_cm is not None else None
        try:
            for db in args.db:
                for n in args.sizes:
                    run = one(db, n, work, pg)
                    print(json.dumps(run), file=sys.stderr)
                    runs.append(run)
        finally:
            if pg_cm is not None:
                pg_cm.__exit__(None, None, None)
    summary = {}
    for db in args.db:
        by_n = {r["services"]: r["sweep_s"] for r in runs if r["db"] == db}
        small, large = min(by_n), max(by_n)
        summary[db] = {"small": small, "large": large, "sweep_small_s": by_n[small],
                       "sweep_large_s": by_n[large],
                       "ratio_large_to_small": round(by_n[large] / by_n[small], 3),
                       "under_2s": max(by_n.values()) < 2.0}
    result = {"benchmark": "sweep", "today": TODAY.isoformat(), "due": DUE,
              "machine": {"python": platform.python_version(), "platform": platform.platform()},
              "targets": {"sweep_s": 2.0, "ratio": 1.5}, "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

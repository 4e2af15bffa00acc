"""/metrics, the alert rules and the dashboard (issue 15, item 5): the figures come from
the database, `promtool` accepts the rules, and every metric the rules and the dashboard
name is one /metrics exports."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from provisioner.api.app import create_app
from provisioner.pipeline.engine import beat
from provisioner.pipeline.usecases.metrics import JournalCollector
from provisioner.store.db import transaction
from provisioner.store.models import Step
from tests.helpers import API_TOKEN, Queue, World, make_settings, make_world

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/provisioner.rules.yml"
DASHBOARD = ROOT / "deploy/grafana/provisioner.json"
NOW = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)


def _samples(factory: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(JournalCollector(factory, now=lambda: NOW))  # type: ignore[arg-type]
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> World:
    return make_world(make_settings(tmp_path, db_url, 25, line_kinds="hosting"), now=lambda: NOW)


def test_the_journal_figures_come_from_the_database(world: World) -> None:
    world.order(["hosting:giga5:example.si:12m"])
    with transaction(world.factory) as s:
        steps = s.query(Step).all()
        assert steps
        first = steps[0]
        s.execute(update(Step).where(Step.id == first.id).values(
            state="queued", enqueued_at=NOW - timedelta(minutes=20), next_attempt_at=None))
        s.execute(update(Step).where(Step.id != first.id).values(state="failed"))
        kind = first.kind
    samples = _samples(world.factory)
    assert samples[("provisioner_steps", (("kind", kind), ("state", "queued")))] == 1
    assert samples[("provisioner_oldest_queued_step_age_seconds", ())] == 20 * 60
    failed = sum(v for (name, labels), v in samples.items()
                 if name == "provisioner_steps" and ("state", "failed") in labels)
    assert failed == len(steps) - 1
    # a queued step in its backoff is not "waiting": it is not due yet
    with transaction(world.factory) as s:
        s.execute(update(Step).where(Step.id == first.id).values(next_attempt_at=NOW + timedelta(minutes=1)))
    assert _samples(world.factory)[("provisioner_oldest_queued_step_age_seconds", ())] == 0


def test_the_sweep_s_last_run_and_its_duration_are_exported(world: World) -> None:
    assert not any(name.startswith("provisioner_beat") for name, _ in _samples(world.factory))
    start = NOW - timedelta(hours=2)
    assert beat.claim(world.factory, "sweep", "2027-01-10", owner="b", now=start, lease_s=3600)
    assert beat.finish(world.factory, "sweep", "2027-01-10", owner="b", now=start + timedelta(seconds=42))
    samples = _samples(world.factory)
    assert samples[("provisioner_beat_duration_seconds", (("task", "sweep"),))] == 42
    assert samples[("provisioner_beat_last_success_timestamp_seconds", (("task", "sweep"),))] == (
        (start + timedelta(seconds=42)).timestamp())


def test_promtool_accepts_the_alert_rules() -> None:
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _named_metrics() -> set[str]:
    exprs = re.findall(r"expr: (.+)", RULES.read_text())
    exprs += [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    return {m for e in exprs for m in re.findall(r"\b(provisioner_[a-z_]+)", e)}


@pytest.mark.anyio
async def test_every_metric_the_rules_and_the_dashboard_name_is_exported(sqlite_url: str,
                                                                          tmp_path: Path) -> None:
    settings = make_settings(tmp_path, sqlite_url, 25)
    world = make_world(settings)
    world.order(["hosting:giga5:example.si:12m"])
    beat.once_per_slot(world.factory, "sweep", "2027-01-10", lambda: {}, now=lambda: NOW, lease_s=60)
    transport = httpx.ASGITransport(app=create_app(settings, enqueue=Queue()))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        await client.post("/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"})
        body = await client.get("/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert body.status_code == 200
    exported = {s.name for f in text_string_to_metric_families(body.text) for s in f.samples}
    named = _named_metrics()
    assert len(named) >= 7
    assert named <= exported, named - exported

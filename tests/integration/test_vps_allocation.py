"""VPS allocation we own (issue 14, item 2): ids, hosts and addresses are reserved in the
database under UNIQUE constraints before any driver is called; twenty concurrent
creates share nothing; ids are never reused; a released address waits in quarantine."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from provisioner.errors import InvalidInput, TransientError
from provisioner.store import vps
from provisioner.store.db import session_factory, transaction
from provisioner.store.models import Service
from tests.helpers import make_settings, make_world

NOW = datetime(2027, 2, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def factory(db_url: str, tmp_path: Path) -> Any:
    world = make_world(make_settings(tmp_path, db_url, 25, line_kinds=""))
    for i in range(24):  # services to allocate for (their own orders, as a paid VPS line makes)
        world.order([f"vps:vps-s:vps{i}.example.si:1m"])
    f = session_factory(db_url)
    with transaction(f) as s:
        vps.add_host(s, "vh1", "192.0.2.10", pool="10.220.1.0/27", capacity=12, now=NOW)
        vps.add_host(s, "vh2", "192.0.2.11", pool="10.220.2.0/27", capacity=12, now=NOW)
    return f


def _services(factory: Any) -> list[int]:
    with transaction(factory) as s:
        return list(s.execute(select(Service.id).order_by(Service.id)).scalars())


def test_twenty_concurrent_creates_share_no_id_and_no_address(factory: Any) -> None:
    services = _services(factory)[:20]
    gate = threading.Barrier(len(services))
    got: dict[int, vps.Allocation] = {}
    errors: list[BaseException] = []

    def create(sid: int) -> None:
        gate.wait()
        try:
            got[sid] = vps.allocate(factory, sid, hostname=f"h{sid}.example.si", plan="vps-s",
                                    image="debian-12", now=NOW)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(sid,)) for sid in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({a.vps_id for a in got.values()}) == 20
    assert len({(a.host, a.address) for a in got.values()}) == 20
    assert all(a.address != a.gateway for a in got.values())
    assert {a.host for a in got.values()} == {"vh1", "vh2"}  # spread over the hosts
    assert all(a.tag == vps.tag_for(sid) for sid, a in got.items())


def test_a_re_driven_create_finds_its_reservation(factory: Any) -> None:
    sid = _services(factory)[0]
    first = vps.allocate(factory, sid, hostname="a.example.si", plan="vps-s", image="debian-12", now=NOW)
    again = vps.allocate(factory, sid, hostname="a.example.si", plan="vps-s", image="debian-12", now=NOW)
    assert first.created and not again.created
    assert (again.vps_id, again.host, again.address) == (first.vps_id, first.host, first.address)


def test_ids_are_never_reused_and_a_released_address_waits_in_quarantine(factory: Any) -> None:
    a, b, c = _services(factory)[:3]
    with transaction(factory) as s:
        s.execute(vps.VpsHost.__table__.update().where(vps.VpsHost.name == "vh2").values(state="draining"))
    first = vps.allocate(factory, a, hostname="a.example.si", plan="vps-s", image="debian-12", now=NOW)
    vps.release(factory, first.vps_id, now=NOW)
    second = vps.allocate(factory, b, hostname="b.example.si", plan="vps-s", image="debian-12",
                          now=NOW + timedelta(hours=1))
    assert second.vps_id > first.vps_id  # the deleted machine's id is not handed out again
    assert second.address != first.address  # its address is in quarantine
    later = NOW + vps.ADDRESS_QUARANTINE + timedelta(minutes=1)
    vps.release(factory, second.vps_id, now=NOW + timedelta(hours=2))
    third = vps.allocate(factory, c, hostname="c.example.si", plan="vps-s", image="debian-12", now=later)
    assert third.address == first.address  # out of quarantine: the lowest free address again
    assert third.vps_id > second.vps_id


def test_full_hosts_are_a_clear_error_and_bad_pools_are_refused(factory: Any) -> None:
    services = _services(factory)
    for sid in services[:24]:
        vps.allocate(factory, sid, hostname=f"h{sid}.example.si", plan="vps-s", image="debian-12", now=NOW)
    with transaction(factory) as s:
        live = s.execute(select(vps.VpsMachine.host_id)).scalars().all()
        assert sorted(live.count(h) for h in set(live)) == [12, 12]  # both hosts full now
    with pytest.raises(TransientError, match="full"):
        vps.allocate(factory, 10**6, hostname="x.example.si", plan="vps-s", image="debian-12", now=NOW)
    with transaction(factory) as s, pytest.raises(InvalidInput):
        vps.add_host(s, "vh3", "192.0.2.12", pool="10.0.0.1/24", capacity=5, now=NOW)


def test_an_exhausted_pool_is_a_clear_error(factory: Any) -> None:
    with transaction(factory) as s:
        s.execute(vps.VpsHost.__table__.update().values(state="draining"))
        vps.add_host(s, "vh9", "192.0.2.19", pool="10.220.9.0/29", capacity=50, now=NOW)
    services = _services(factory)
    got = [vps.allocate(factory, sid, hostname=f"h{sid}.example.si", plan="vps-s", image="debian-12",
                        now=NOW) for sid in services[:5]]  # a /29: 6 host addresses, one the gateway
    assert sorted(a.address for a in got) == [f"10.220.9.{i}" for i in range(2, 7)]
    with pytest.raises(TransientError, match="no free address"):
        vps.allocate(factory, services[5], hostname="x.example.si", plan="vps-s", image="debian-12", now=NOW)

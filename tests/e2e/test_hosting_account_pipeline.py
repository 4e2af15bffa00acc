"""A paid hosting order through the pipeline to a live site on a throwaway node:
placement (``provisioner nodes``), ``hosting.account`` (observe, then converge; safe to
run twice) and ``notify.credentials`` (a one-time, expiring link; no plaintext
password in our database)."""

from __future__ import annotations

import ftplib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from provisioner.errors import InvalidInput
from provisioner.pipeline.capabilities.hosting import open_link
from provisioner.store.db import dispose_all, transaction, upgrade
from provisioner.store.hosting import CredentialLink, HostingAccount, HostingNode
from provisioner.store.models import Step
from tests.e2e.nodes import own_node
from tests.helpers import MemoryMailer, World, customer, make_settings, stripe_notice, wire
from tests.servers import self_signed_tls_context

NODE_NAME = "t-acctpipe"


class HtmlMailer(MemoryMailer):
    """The recording mailer, keeping the HTML part too (no password may be in it)."""

    def send(self, *, to: str, rendered: Any, message_id: str, headers: Any = None,
             sender: str | None = None) -> None:
        super().send(to=to, rendered=rendered, message_id=message_id, headers=headers)
        self.sent[-1]["html"] = rendered.html


@pytest.fixture(scope="module")
def pipe_node(hosts: Any) -> Iterator[Any]:
    with own_node(hosts, NODE_NAME, "e2e.pipe_node") as info:
        yield info


@dataclass
class PipeWorld(World):
    url: str = ""
    db_file: Path = Path()
    mailer: HtmlMailer | None = None
    node: Any = None

    def run_all(self, order_id: int) -> None:
        """Run what is queued; no step of the order may have failed or be left to retry."""
        self.drain()
        bad = {k: (st.state, st.last_error) for k, st in self.steps(order_id).items()
               if st.state in ("failed", "queued", "running")}
        assert not bad, bad


@pytest.fixture(scope="module")
def world(pipe_node: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipeWorld]:
    work = tmp_path_factory.mktemp("pipe")
    db_file = work / "p.sqlite"
    url = f"sqlite:///{db_file}"
    upgrade(url)
    # The product's own wiring: the hosting adapter comes from these settings (the
    # node's SSH key); whether the node's host key is checked comes from its record.
    settings = make_settings(work, url, 1, public_base_url="https://panel.provider.example",
                             line_kinds="hosting", node_ssh_key=str(pipe_node.ssh_key))
    mailer = HtmlMailer()
    app, queue = wire(settings, mailer=mailer)
    # Register the nodes through the CLI, as ops would (the throwaway host as one).
    env = {"PROVISIONER_DATABASE_URL": url, "PROVISIONER_DATA_DIR": str(work)}
    from provisioner.cli.nodes import app as nodes_cli

    cli = CliRunner()
    res = cli.invoke(nodes_cli, ["add", "full-node", "--address", "192.0.2.10", "--capacity-accounts", "1",
                                 "--capacity-disk-mb", "100000", "--json"], env=env)
    assert res.exit_code == 0, res.output
    res = cli.invoke(nodes_cli, ["add", pipe_node.name, "--address", pipe_node.address, "--capacity-accounts",
                                 "50", "--capacity-disk-mb", "500000", "--throwaway", "--json"], env=env)
    assert res.exit_code == 0, res.output
    # The first node is full: one account already placed there (a fake, not on a real host).
    with transaction(app.factory) as s:
        full = s.execute(select(HostingNode).where(HostingNode.name == "full-node")).scalar_one()
        full.capacity_accounts = 0
    yield PipeWorld(app, queue, url=url, db_file=db_file, mailer=mailer, node=pipe_node)
    dispose_all()


def _pay(world: PipeWorld, domain: str) -> int:
    order = world.order([f"hosting:giga5:{domain}"], who=customer("en"))
    order_id = int(order["order"])
    world.run_all(order_id)
    proforma = order["proforma"]
    result = world.ingest(stripe_notice(f"evt_{domain}", f"pi_{domain}", proforma["number"],
                                        Decimal(str(proforma["gross"]))))
    assert result.settled
    assert result.order_id == order_id
    world.runner.dispatch(order_id)
    world.run_all(order_id)
    return order_id


@pytest.fixture(scope="module")
def paid(world: PipeWorld) -> dict[str, Any]:
    order_id = _pay(world, "pipeline-shop.si")
    return {"order_id": order_id, "domain": "pipeline-shop.si"}


def test_after_payment_the_site_answers_on_the_least_full_node(world: PipeWorld,
                                                               paid: dict[str, Any]) -> None:
    r = httpx.get(f"http://{world.node.address}/", headers={"Host": paid["domain"]}, timeout=20)
    assert r.status_code == 200
    assert paid["domain"] in r.text
    with transaction(world.factory) as s:
        account = s.execute(select(HostingAccount)).scalars().one()
        steps = {st.kind: st.state for st in s.execute(select(Step).where(Step.order_id == paid["order_id"]))
                 .scalars()}
        node = s.get(HostingNode, account.node_id)
        assert node is not None and node.name == world.node.name  # not the full one
    assert account.state == "active" and account.username == "pipelineshopsi"
    assert steps["hosting.account"] == "done" and steps["notify.credentials"] == "done"
    assert steps["service.activate"] == "done"


def test_nodes_list_shows_the_placed_account(world: PipeWorld, paid: dict[str, Any]) -> None:
    from provisioner.cli.nodes import app

    res = CliRunner().invoke(app, ["list", "--json"], env={"PROVISIONER_DATABASE_URL": world.url})
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows[world.node.name]["accounts"] == 1
    assert rows[world.node.name]["disk_mb"] == 5000
    assert rows["full-node"]["accounts"] == 0


def test_credentials_arrive_as_a_one_time_link_and_work(world: PipeWorld, paid: dict[str, Any]) -> None:
    assert world.mailer is not None
    mails = [m for m in world.mailer.sent if "access data" in m["subject"]]
    assert len(mails) == 1
    text = mails[0]["text"]
    match = re.search(r"https://panel\.provider\.example/credentials/([A-Za-z0-9_-]{20,})", text)
    assert match, text
    token = match.group(1)
    data = open_link(world.factory, token, datetime.now(UTC))
    # The passwords in the link are the ones the node accepts.
    ftp = ftplib.FTP_TLS(world.node.address, timeout=20, context=self_signed_tls_context())  # noqa: S321
    try:
        ftp.login(data["ftp"]["user"], data["ftp"]["password"])
        ftp.prot_p()
        assert "public_html" in ftp.nlst()
    finally:
        ftp.close()
    # No password in the mail, none in our database file.
    raw = world.db_file.read_bytes()
    for secret in (data["ftp"]["password"], data["database"]["password"], data["mail"]["password"]):
        assert secret not in text and secret not in (mails[0]["html"] or "")
        assert secret.encode() not in raw
    with pytest.raises(InvalidInput, match="already used"):
        open_link(world.factory, token, datetime.now(UTC))


def test_an_expired_link_shows_nothing(world: PipeWorld, paid: dict[str, Any]) -> None:
    from provisioner.pipeline.capabilities.hosting import seal, token_hash

    token = "t" * 43
    with transaction(world.factory) as s:
        service_id = s.execute(select(HostingAccount.service_id)).scalar_one()
        s.add(CredentialLink(token_sha256=token_hash(token), service_id=service_id,
                             sealed=seal(token, {"x": 1}), created_at=datetime.now(UTC),
                             expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    with pytest.raises(InvalidInput, match="expired"):
        open_link(world.factory, token, datetime.now(UTC))
    with pytest.raises(InvalidInput):
        open_link(world.factory, "u" * 43, datetime.now(UTC))


def test_running_the_account_step_again_creates_nothing(world: PipeWorld, paid: dict[str, Any]) -> None:
    with transaction(world.factory) as s:
        step = s.execute(select(Step).where(Step.kind == "hosting.account")).scalar_one()
        step.state = "queued"  # as if the broker delivered it again after a crash
        key = step.key
    outcome = world.runner.run_step(key)
    assert outcome.status == "done" and outcome.detail == "unchanged"
    with transaction(world.factory) as s:
        assert len(s.execute(select(HostingAccount)).scalars().all()) == 1


def test_the_link_endpoint_shows_the_data_once(world: PipeWorld, paid: dict[str, Any]) -> None:
    import anyio

    from provisioner.api.app import create_app
    from provisioner.pipeline.capabilities.hosting import seal, token_hash

    token = "k" * 43
    with transaction(world.factory) as s:
        service_id = s.execute(select(HostingAccount.service_id)).scalar_one()
        s.add(CredentialLink(token_sha256=token_hash(token), service_id=service_id,
                             sealed=seal(token, {"ftp": {"user": "u1", "password": "Secret<b>Pw123"}}),
                             created_at=datetime.now(UTC), expires_at=datetime.now(UTC) + timedelta(hours=1)))
    app = create_app(world.app.settings, enqueue=world.queue)  # the customer pages as served

    async def visit() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://panel") as client:
            page = await client.get(f"/credentials/{token}")  # a link preview must not use it up
            shown = await client.post(f"/credentials/{token}")
            again = await client.post(f"/credentials/{token}")
            return [page, shown, again]

    page, shown, again = anyio.run(visit)
    assert page.status_code == 200 and "Secret" not in page.text
    assert page.headers["cache-control"] == "no-store"
    assert shown.status_code == 200
    assert "Secret&lt;b&gt;Pw123" in shown.text  # escaped
    assert again.status_code == 410 and "Secret" not in again.text
    with transaction(world.factory) as s:
        link = s.execute(select(CredentialLink).where(CredentialLink.token_sha256 == token_hash(token))
                         ).scalar_one()
        assert link.used_at is not None and link.sealed == b"-"

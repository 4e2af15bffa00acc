"""The backup download's pure parts (issue 17 item 9): the ``backup`` line (its syntax,
price and the rule that it comes with a hosting line), its plan, the archive's repack
with its manifest, and the access log without the link's token."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from provisioner.api.gate import RedactCredentialTokens
from provisioner.domain.billing import price_order
from provisioner.domain.catalog import DEFAULT_CATALOG, check_order_lines, parse_item
from provisioner.domain.policy import FCB
from provisioner.errors import InvalidInput
from provisioner.pipeline.capabilities.backup_download import archive_name, plan_backup_line, repack
from provisioner.pipeline.engine.plan import OrderView, PlanOptions, ServiceView

TODAY = date(2026, 3, 1)


@pytest.mark.parametrize(("spec", "months", "action"), [
    ("backup:example.si", 12, "new"),
    ("backup:Example.SI:24m", 24, "new"),
    ("backup:example.si:1y:renew", 12, "renew"),
    ("backup:example.si:1m", 1, "new"),
])
def test_the_backup_line_parses_and_round_trips(spec: str, months: int, action: str) -> None:
    item = parse_item(spec)
    assert (item.kind, item.product, item.name, item.period_months, item.action) == (
        "backup", "backup", "example.si", months, action)
    assert parse_item(item.to_spec()) == item


@pytest.mark.parametrize("spec", ["backup:example.si:5m", "backup:x:example.si",
                                  "backup:example.si:1y:transfer"])
def test_a_bad_backup_line_is_refused(spec: str) -> None:
    with pytest.raises(InvalidInput):
        parse_item(spec)


@pytest.mark.parametrize(("months", "gross"), [(12, "12.00"), (1, "1.00"), (24, "24.00")])
def test_the_backup_service_costs_one_euro_a_month(months: int, gross: str) -> None:
    items = [parse_item(f"hosting:mega:example.si:{months}m"), parse_item(f"backup:example.si:{months}m")]
    quote = price_order(items, catalog=DEFAULT_CATALOG, policy=FCB, today=TODAY)
    line = quote.lines[1]
    assert line.gross == Decimal(gross) and line.description.startswith("Backup service example.si")
    assert DEFAULT_CATALOG.product_name("backup", "backup") == "Backup"


def test_a_backup_line_needs_a_hosting_line_for_its_site() -> None:
    with pytest.raises(InvalidInput, match="needs a hosting line for shop.si"):
        check_order_lines([parse_item("backup:shop.si")])
    with pytest.raises(InvalidInput, match="needs a hosting line for shop.si"):
        check_order_lines([parse_item("hosting:mega:other.si"), parse_item("backup:shop.si")])
    check_order_lines([parse_item("hosting:mega:shop.si"), parse_item("backup:shop.si")])
    check_order_lines([parse_item("hosting:mega:shop.si:12m:renew"), parse_item("backup:shop.si")])
    check_order_lines([parse_item("backup:shop.si:12m:renew")])  # a renewal stands alone


def test_the_backup_line_plans_its_enrolment_after_the_hosting_account() -> None:
    hosting = ServiceView(1, "hosting", "mega", "shop.si", 12, "provisioning")
    backup = ServiceView(2, "backup", "backup", "shop.si", 12, "provisioning")
    view = OrderView(7, 9, "PR-1", True, (hosting, backup))
    [step] = plan_backup_line(view, backup, PlanOptions())
    assert step.kind == "backup.enroll" and step.deps == ("service:1/hosting.account",)
    assert plan_backup_line(view, ServiceView(2, "backup", "backup", "shop.si", 12, "active", "renew"),
                            PlanOptions()) == []


def _tar(tmp: Path, files: dict[str, bytes]) -> Path:
    src = tmp / "snap.tar"
    with tarfile.open(src, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o640, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("srv/hosting/a/current")
        link.type, link.linkname = tarfile.SYMTYPE, "public_html"
        tar.addfile(link)
    return src


def test_repack_keeps_every_byte_and_lists_each_file_with_its_sha256(tmp_path: Path) -> None:
    files = {"srv/hosting/a/public_html/i.php": b"<?php 1;", "/var/lib/hosting-backup/dump/a/a.sql": b"SQL",
             "srv/mail/a.si/info/Maildir/cur/1": bytes(range(256)) * 300, "srv/hosting/a/empty": b""}
    out = tmp_path / archive_name("a.si", TODAY)
    manifest = repack(_tar(tmp_path, files), out, {"domain": "a.si", "snapshot": "ab" * 32})
    assert out.name == "a.si-backup-2026-03-01.tar.gz" and out.stat().st_mode & 0o777 == 0o600
    with tarfile.open(out, "r:gz") as tar:
        names = tar.getnames()
        got = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
        assert tar.getmember("srv/hosting/a/current").linkname == "public_html"
    assert names[-1] == "MANIFEST.json"
    inside = json.loads(got.pop("MANIFEST.json"))
    assert inside == manifest
    assert got == {k.lstrip("/"): v for k, v in files.items()}
    listed = {f["path"]: f for f in manifest["files"]}
    for name, data in files.items():
        entry = listed["/" + name.lstrip("/")]
        assert (entry["size"], entry["sha256"], entry["mode"]) == (
            len(data), hashlib.sha256(data).hexdigest(), "0640")
    assert listed["/srv/hosting/a/current"] == {**listed["/srv/hosting/a/current"], "type": "symlink",
                                                "target": "public_html"}
    assert manifest["file_count"] == 4 and manifest["bytes"] == sum(map(len, files.values()))
    assert manifest["domain"] == "a.si"


def test_the_access_log_does_not_keep_the_download_links_token() -> None:
    token = "Zk3" + "q" * 40
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "POST", f"/backup/{token}", "1.1", 200), None)
    assert RedactCredentialTokens().filter(record)
    assert token not in record.getMessage() and "/backup/<redacted>" in record.getMessage()

"""The customer's backup download during the retention (issue 17 item 9;
`provisioner.pipeline.capabilities.backup_download`).

* ``GET /backup/{token}`` shows what the link offers and a button (mail scanners and link
  previews fetch GETs: nothing is used up and nothing is fetched from the node).
* ``POST /backup/{token}`` leases the link (one download at a time), builds the archive
  in a private directory (0700, under the setting ``backup_download_dir``), and streams
  it as an attachment, one chunk in memory at a time. The link is used up when the last
  chunk is handed to the connection; a download broken off before gives the lease back,
  so the link still works. The directory is removed when
  the response ends, however it ends.

A used or expired link answers 410, an unknown one 404, a link whose download is under
way 409, a node that cannot be reached 503: each a page in the customer's language and
brand (`customer_pages`), never a stack trace. The pages and the download are sent
``no-store``, ``no-referrer``, with a strict CSP. The token is taken out of the access
log (`gate.redact_access_log`). Not part of the OpenAPI spec.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import Receive, Scope, Send

from provisioner.api.customer_pages import language as page_language
from provisioner.api.customer_pages import render
from provisioner.api.deps import Clock, Db, State
from provisioner.domain.policy import get_brand
from provisioner.errors import ProvisionerError
from provisioner.pipeline.capabilities.backup_download import (
    CHUNK,
    DOWNLOAD_PATH,
    DownloadBusy,
    Lease,
    build_archive,
    finish_download,
    link_page,
    release_download,
    start_download,
)
from provisioner.pipeline.onetime import LinkOwner, LinkUnusable, owner_of
from provisioner.store.models import BackupDownloadLink

log = logging.getLogger("provisioner.backup_download")
router = APIRouter()
AcceptLanguage = Annotated[str | None, Header()]

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "Download your backup",
        "intro": "The hosting of {domain} has expired. Here you can download the backup of its "
        "website files, mailboxes and database as one archive (.tar.gz), with a list of every file "
        "and its checksum (MANIFEST.json inside the archive).",
        "once": "The link works for one complete download and until {expires}. If the download "
        "breaks off, open the link again and start it once more.",
        "button": "Download the backup",
        "after": "Preparing a large backup takes a while before the download starts; keep this page open.",
        "used_title": "This backup was already downloaded",
        "used": "This link works for one download and it was used. If you need the backup again, "
        "ask us while your data are still kept.",
        "expired_title": "This link has expired",
        "expired": "The backup could be downloaded until the date in our e-mail; the data have been "
        "deleted since or are about to be.",
        "unknown_title": "This link is not valid",
        "unknown": "We do not know this link. Check that it was copied whole from the e-mail.",
        "busy_title": "The download is under way",
        "busy": "A download of this backup is running. When it has finished, the link is used up; "
        "if it broke off, try again in a few minutes.",
        "failed_title": "The backup cannot be prepared right now",
        "failed": "We could not reach the backup. Nothing was used up: try the link again later, "
        "or write to us.",
    },
    "sl": {
        "title": "Prenesite varnostno kopijo",
        "intro": "Gostovanje {domain} je poteklo. Tu lahko prenesete varnostno kopijo datotek spletne "
        "strani, poštnih predalov in podatkovne baze v enem arhivu (.tar.gz), s seznamom vseh datotek "
        "in njihovih kontrolnih vsot (MANIFEST.json v arhivu).",
        "once": "Povezava deluje za en celoten prenos in do {expires}. Če se prenos prekine, "
        "povezavo odprite znova in ga začnite še enkrat.",
        "button": "Prenesi varnostno kopijo",
        "after": "Priprava velike varnostne kopije traja nekaj časa, preden se prenos začne; "
        "pustite stran odprto.",
        "used_title": "Ta varnostna kopija je že bila prenesena",
        "used": "Povezava deluje za en prenos in je bila uporabljena. Če kopijo potrebujete znova, "
        "nam pišite, dokler vaše podatke še hranimo.",
        "expired_title": "Ta povezava je potekla",
        "expired": "Varnostno kopijo je bilo mogoče prenesti do datuma v našem sporočilu; podatki so "
        "bili medtem izbrisani ali bodo kmalu.",
        "unknown_title": "Ta povezava ni veljavna",
        "unknown": "Te povezave ne poznamo. Preverite, ali ste jo iz e-pošte kopirali v celoti.",
        "busy_title": "Prenos že poteka",
        "busy": "Prenos te varnostne kopije že teče. Ko se konča, je povezava porabljena; "
        "če se je prekinil, poskusite znova čez nekaj minut.",
        "failed_title": "Varnostne kopije trenutno ni mogoče pripraviti",
        "failed": "Do varnostne kopije nismo mogli dostopati. Nič ni bilo porabljeno: povezavo "
        "poskusite znova pozneje ali nam pišite.",
    },
}
_STATUS = {"unknown": 404, "used": 410, "expired": 410, "busy": 409, "failed": 503}


def _brand(state: Any, owner: LinkOwner) -> str:
    return owner.brand or state.settings.brand


def _page(state: Any, owner: LinkOwner, accept: str | None, template: str, status: int = 200,
          **context: Any) -> HTMLResponse:
    langs = page_language(owner.lang, accept)
    return render(template, langs, get_brand(_brand(state, owner)), status,
                  bt=TEXT[langs[0]], BT=TEXT, **context)


def _refused(state: Any, owner: LinkOwner, reason: str, accept: str | None) -> HTMLResponse:
    return _page(state, owner, accept, "backup_link_invalid", _STATUS[reason], reason=reason)


@router.get(DOWNLOAD_PATH + "{token}", response_class=HTMLResponse, include_in_schema=False)
async def backup_confirm(token: str, factory: Db, now: Clock, state: State,
                         accept_language: AcceptLanguage = None) -> HTMLResponse:
    owner = await run_in_threadpool(owner_of, factory, BackupDownloadLink, token, now())
    if owner.state != "valid":
        return _refused(state, owner, owner.state, accept_language)
    info = await run_in_threadpool(link_page, factory, token)
    return _page(state, owner, accept_language, "backup_confirm", domain=info.domain,
                 expires=info.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
                 action=f"{DOWNLOAD_PATH}{token}")


@router.post(DOWNLOAD_PATH + "{token}", include_in_schema=False, response_model=None)
async def backup_download(token: str, factory: Db, now: Clock, state: State,
                          accept_language: AcceptLanguage = None) -> HTMLResponse | StreamingResponse:
    owner = await run_in_threadpool(owner_of, factory, BackupDownloadLink, token, now())
    try:
        lease = await run_in_threadpool(start_download, factory, token, now())
    except DownloadBusy:
        return _refused(state, owner, "busy", accept_language)
    except LinkUnusable as exc:
        return _refused(state, owner, exc.reason, accept_language)
    base = state.settings.backup_download_dir or None
    if base is not None:
        Path(base).mkdir(mode=0o700, parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="prov-backup-dl-", dir=base))  # 0700
    try:
        path, size = await run_in_threadpool(build_archive, state.provisioner.adapters.backups,
                                             lease, workdir, now())
    except ProvisionerError as exc:
        log.warning("backup download of service %s failed: %s", lease.service_id, exc)
        shutil.rmtree(workdir, ignore_errors=True)
        await run_in_threadpool(release_download, factory, lease)
        return _refused(state, owner, "failed", accept_language)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        await run_in_threadpool(release_download, factory, lease)
        raise
    return DownloadResponse(
        _stream(path, size, workdir, factory, lease, now),
        media_type="application/gzip",
        headers=download_headers(path.name, size),
    )


def download_headers(filename: str, size: int) -> dict[str, str]:
    """The attachment's headers: never cached or sniffed, no referrer, nothing it may run."""
    return {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Content-Length": str(size),
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox; frame-ancestors 'none'",
    }


async def _stream(path: Path, size: int, workdir: Path, factory: sessionmaker[Session], lease: Lease,
                  now: Callable[[], datetime]) -> AsyncIterator[bytes]:
    """The archive in chunks (one read ahead). The link is used up when its last chunk is
    handed to the connection; a download that ends before gives the lease back; the private
    directory is removed in every case."""
    completed = False
    try:
        with path.open("rb") as f:
            chunk = await run_in_threadpool(f.read, CHUNK)
            while chunk:
                ahead = await run_in_threadpool(f.read, CHUNK)
                if not ahead:  # the last chunk: with it the whole archive has gone out
                    await run_in_threadpool(finish_download, factory, lease, now(), size)
                    completed = True
                yield chunk
                chunk = ahead
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not completed:
            release_download(factory, lease)


class DownloadResponse(StreamingResponse):
    """A StreamingResponse that closes its body when it ends however it ends (a client
    that went away cancels the stream between two chunks; the generator's ``finally``
    then gives the lease back at once, not when it is garbage-collected)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            body = self.body_iterator
            if isinstance(body, AsyncGenerator):
                await body.aclose()

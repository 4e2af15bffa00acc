"""Customer pages: one-time links to a new hosting account's access data.

``GET /credentials/{token}`` shows a page with a button only (mail scanners and link
previews fetch GETs; they must not use the link up); ``POST /credentials/{token}``
shows the access data once and marks the link used. Tokens are stored as SHA-256
hashes; the data are sealed with a key derived from the token; links expire
(72 hours). The pages are not part of the OpenAPI spec.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from provisioner.api.deps import Clock, Db
from provisioner.errors import InvalidInput
from provisioner.pipeline.capabilities.hosting import open_link

_HEAD = ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">'
         '<meta name="referrer" content="no-referrer"><title>Access data</title></head><body>')
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
             "Content-Security-Policy": "default-src 'none'; form-action 'self'"}


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_HEAD + body + "</body></html>", status_code=status, headers=_NO_STORE)


def _render(data: dict[str, Any]) -> str:
    rows = []
    for section, values in data.items():
        if isinstance(values, dict):
            for k, v in values.items():
                rows.append(f"<tr><th>{html.escape(section)} {html.escape(k)}</th>"
                            f"<td><code>{html.escape(str(v))}</code></td></tr>")
        else:
            rows.append(f"<tr><th>{html.escape(section)}</th><td>{html.escape(str(values))}</td></tr>")
    return ("<h1>Your access data</h1><p>This page is shown once. Keep the passwords in a safe place; "
            "we do not keep them.</p><table>" + "".join(rows) + "</table>")


router = APIRouter()


@router.get("/credentials/{token}", response_class=HTMLResponse, include_in_schema=False)
def confirm(token: str) -> HTMLResponse:
    return _page('<h1>Your access data</h1><p>The access data can be shown once.</p>'
                 f'<form method="post" action="/credentials/{html.escape(token, quote=True)}">'
                 '<button type="submit">Show my access data</button></form>')


@router.post("/credentials/{token}", response_class=HTMLResponse, include_in_schema=False)
async def reveal(token: str, factory: Db, now: Clock) -> HTMLResponse:
    try:
        data = await run_in_threadpool(open_link, factory, token, now())
    except InvalidInput as exc:
        return _page(f"<h1>Link not valid</h1><p>{html.escape(str(exc))}</p>", 410)
    return _page(_render(data))

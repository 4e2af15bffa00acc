"""The migrated site seen from outside (issue 13, item 6): one HTTP GET of ``/`` at an
address with the site's name as the Host header, reduced to its status and ``<title>``
(what the verify step compares between the old host and our node)."""

from __future__ import annotations

import html
import http.client
import re
from dataclasses import dataclass

from provisioner.errors import InvalidInput

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}")
_ADDRESS = re.compile(r"[A-Za-z0-9.:-]{1,253}")
MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class SitePage:
    status: int | None  # None: no answer (``error`` says why)
    title: str | None
    error: str | None = None


def title_of(body: bytes) -> str | None:
    """The page's ``<title>``, entities decoded and whitespace collapsed."""
    m = _TITLE.search(body)
    if m is None:
        return None
    return " ".join(html.unescape(m.group(1).decode("utf-8", errors="replace")).split())


def fetch_page(address: str, host: str, *, port: int = 80, timeout_s: float = 10.0) -> SitePage:
    """GET http://``address``:``port``/ with ``Host: host`` (redirects not followed: their
    status is what is compared). A connection that fails is a page without a status."""
    if not _ADDRESS.fullmatch(address) or not _HOST.fullmatch(host):
        raise InvalidInput(f"bad site address {address!r} or host {host!r}")
    conn = http.client.HTTPConnection(address, port, timeout=timeout_s)
    try:
        conn.request("GET", "/", headers={"Host": host, "User-Agent": "provisioner-migration-verify"})
        resp = conn.getresponse()
        body = resp.read(MAX_BODY)
        return SitePage(resp.status, title_of(body))
    except (OSError, http.client.HTTPException) as exc:
        return SitePage(None, None, f"{type(exc).__name__}: {exc}"[:300])
    finally:
        conn.close()

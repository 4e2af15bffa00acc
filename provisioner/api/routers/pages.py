"""Customer pages behind one-time links (`provisioner.pipeline.onetime`).

* ``GET /credentials/{token}`` shows a button only (mail scanners and link previews
  fetch GETs; they must not use the link up); ``POST /credentials/{token}`` shows the
  access data once and marks the link used (`hosting.open_link`).
* ``GET /migration/{token}`` shows the migration intake form; ``POST`` validates it
  (errors beside each field, nothing stored, the link still works) and on success
  seals the old provider's access and uses the link up (`sources.submit_intake`).

Every page is in the customer's language and brand (`customer_pages`); a used or
expired link answers 410, an unknown one 404 (in the browser's language, or both), never
a stack trace. The tokens are taken out of the access log (`gate.redact_access_log`).
The pages are not part of the OpenAPI spec.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from provisioner.api.customer_pages import language as page_language
from provisioner.api.customer_pages import render
from provisioner.api.deps import Clock, Db, State
from provisioner.domain.policy import get_brand
from provisioner.pipeline.capabilities.hosting import open_link
from provisioner.pipeline.capabilities.migration.intake import (
    ERROR_TEXT,
    FIELDS,
    FLAGS,
    SECRET_FIELDS,
    SourceInvalid,
)
from provisioner.pipeline.capabilities.migration.sources import submit_intake
from provisioner.pipeline.onetime import LinkOwner, LinkUnusable, owner_of
from provisioner.store.db import transaction
from provisioner.store.hosting import CredentialLink
from provisioner.store.models import Migration, MigrationLink, Service

router = APIRouter()
AcceptLanguage = Annotated[str | None, Header()]
MAX_FORM_BYTES = 64 * 1024
_SECTION_ORDER = ("ftp", "sftp", "database", "mail", "panel")


def _brand(state: Any, owner: LinkOwner) -> str:
    return owner.brand or state.settings.brand


def _invalid(state: Any, owner: LinkOwner, reason: str, accept: str | None) -> HTMLResponse:
    langs = page_language(owner.lang, accept)
    return render(
        "link_invalid",
        langs,
        get_brand(_brand(state, owner)),
        404 if reason == "unknown" else 410,
        reason=reason,
    )


def _domain(factory: Any, service_id: int | None) -> str:
    if service_id is None:
        return ""
    with transaction(factory) as s:
        service = s.get(Service, service_id)
        return service.name if service is not None else ""


# values of the access data that are words, in Slovenian (the rest are names and numbers)
_VALUES_SL = {
    "FTPS (explicit TLS)": "FTPS (izrecni TLS)",
    "FTPS (explicit TLS, port 21)": "FTPS (izrecni TLS, vrata 21)",
}


def _sections(data: dict[str, Any], lang: str = "en") -> list[tuple[str, list[tuple[str, str]]]]:
    """The access data as (section, [(field, value)]) in a fixed order; unknown ones last."""
    keys = [k for k in _SECTION_ORDER if isinstance(data.get(k), dict)]
    keys += [k for k, v in data.items() if isinstance(v, dict) and k not in keys]
    words = _VALUES_SL if lang == "sl" else {}
    out = [(k, [(f, words.get(str(v), str(v))) for f, v in data[k].items()]) for k in keys]
    loose = [(k, str(v)) for k, v in data.items() if not isinstance(v, dict) and k != "domain"]
    if loose:
        out.append(("other", loose))
    return out


@router.get("/credentials/{token}", response_class=HTMLResponse, include_in_schema=False)
async def confirm(
    token: str, factory: Db, now: Clock, state: State, accept_language: AcceptLanguage = None
) -> HTMLResponse:
    owner = await run_in_threadpool(owner_of, factory, CredentialLink, token, now())
    if owner.state != "valid":
        return _invalid(state, owner, owner.state, accept_language)
    domain = await run_in_threadpool(_domain, factory, owner.service_id)
    return render(
        "credentials_confirm",
        page_language(owner.lang, accept_language),
        _brand(state, owner),
        domain=domain,
        action=f"/credentials/{token}",
    )


@router.post("/credentials/{token}", response_class=HTMLResponse, include_in_schema=False)
async def reveal(
    token: str, factory: Db, now: Clock, state: State, accept_language: AcceptLanguage = None
) -> HTMLResponse:
    owner = await run_in_threadpool(owner_of, factory, CredentialLink, token, now())
    try:
        data = await run_in_threadpool(open_link, factory, token, now())
    except LinkUnusable as exc:
        return _invalid(state, owner, exc.reason, accept_language)
    langs = page_language(owner.lang, accept_language)
    return render(
        "credentials_shown",
        langs,
        _brand(state, owner),
        domain=str(data.get("domain", "")),
        sections=_sections(data, langs[0]),
    )


def _form_page(
    state: Any,
    owner: LinkOwner,
    token: str,
    domain: str,
    accept: str | None,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    langs = page_language(owner.lang, accept)
    shown = {k: v for k, v in (values or {}).items() if k not in SECRET_FIELDS}
    return render(
        "migration_form",
        langs,
        _brand(state, owner),
        status,
        domain=domain,
        action=f"/migration/{token}",
        values=shown,
        errors=errors or {},
        error_text=ERROR_TEXT[langs[0]],
        known_fields=FIELDS + FLAGS,
    )


def _migration_domain(factory: Any, service_id: int | None) -> str:
    if service_id is None:
        return ""
    with transaction(factory) as s:
        domain = s.execute(select(Migration.domain).where(Migration.service_id == service_id)).scalar()
    return str(domain) if domain else _domain(factory, service_id)


@router.get("/migration/{token}", response_class=HTMLResponse, include_in_schema=False)
async def intake_form(
    token: str, factory: Db, now: Clock, state: State, accept_language: AcceptLanguage = None
) -> HTMLResponse:
    owner = await run_in_threadpool(owner_of, factory, MigrationLink, token, now())
    if owner.state != "valid":
        return _invalid(state, owner, owner.state, accept_language)
    domain = await run_in_threadpool(_migration_domain, factory, owner.service_id)
    values = {"files_protocol": "sftp", "db_via": "mysql"}
    return _form_page(state, owner, token, domain, accept_language, values)


@router.post("/migration/{token}", response_class=HTMLResponse, include_in_schema=False)
async def intake_submit(
    token: str,
    request: Request,
    factory: Db,
    now: Clock,
    state: State,
    accept_language: AcceptLanguage = None,
) -> HTMLResponse:
    owner = await run_in_threadpool(owner_of, factory, MigrationLink, token, now())
    if owner.state != "valid":
        return _invalid(state, owner, owner.state, accept_language)
    langs = page_language(owner.lang, accept_language)
    body = await request.body()
    try:
        if len(body) > MAX_FORM_BYTES:
            raise ValueError("form too large")
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            max_num_fields=len(FIELDS) + len(FLAGS) + 4,
        )
    except ValueError:  # UnicodeDecodeError is one
        return render("bad_request", langs, _brand(state, owner), 400)
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    form = {k: v for k, v in form.items() if v != "" or k in SECRET_FIELDS}
    domain = await run_in_threadpool(_migration_domain, factory, owner.service_id)
    try:
        summary = await run_in_threadpool(submit_intake, factory, state.settings, token, form, now())
    except SourceInvalid as exc:
        return _form_page(state, owner, token, domain, accept_language, form, exc.errors, 422)
    except LinkUnusable as exc:
        return _invalid(state, owner, exc.reason, accept_language)
    return render("migration_done", langs, _brand(state, owner), domain=domain, summary=summary)

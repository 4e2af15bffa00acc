"""Rendering the pages customers open from an e-mail (``templates/pages/``).

Server-rendered jinja2, autoescaped, in Slovenian or English, with the brand's name,
colour and contacts (`BrandPolicy`). No JavaScript and no outside assets: the one
stylesheet is inline and allowed by its hash in a strict Content-Security-Policy
(``default-src 'none'``); every page is sent ``no-store``, ``no-referrer`` and
``nosniff``, and may not be framed.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from provisioner.domain.policy import BrandPolicy, get_brand

LANGUAGES = ("sl", "en")

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "contact": "Questions? Write to {email} or call {phone}.",
        "access_title": "Your access data",
        "access_intro": "The access data of {domain} can be shown once. Open them when you can note "
        "them down: after that this link no longer works, and we do not keep the passwords.",
        "access_button": "Show my access data",
        "access_shown": "Note these down now: this page is shown once. Keep the passwords in a safe place.",
        "domain": "Domain",
        "ftp": "FTP (files)",
        "sftp": "SFTP (files)",
        "database": "Database",
        "mail": "Mailbox",
        "panel": "Control panel",
        "host": "Server",
        "port": "Port",
        "user": "User name",
        "password": "Password",
        "security": "Encryption",
        "name": "Database name",
        "address": "E-mail address",
        "imap_host": "Incoming mail server (IMAP)",
        "imap_port": "IMAP port",
        "imap_security": "IMAP encryption",
        "smtp_host": "Outgoing mail server (SMTP)",
        "smtp_port": "SMTP port",
        "smtp_security": "SMTP encryption",
        "url": "Address",
        "imap": "Incoming mail (IMAP)",
        "smtp": "Outgoing mail (SMTP)",
        "link_unknown_title": "This link is not valid",
        "link_unknown": "We do not know this link. Check that it was copied whole from the e-mail.",
        "link_used_title": "This link was already used",
        "link_used": "This link works once and was already used. If you did not note the data down, "
        "ask us for a new link.",
        "link_expired_title": "This link has expired",
        "link_expired": "This link is no longer valid. Ask us for a new one.",
        "mig_title": "Your free migration: access to the old provider",
        "mig_intro": "Tell us how we reach the old provider of {domain}. "
        "Fill in only what you want migrated: "
        "the website's files, its MySQL database and up to two mailboxes. What you enter is "
        "kept encrypted and deleted when the migration ends.",
        "mig_files": "Website files",
        "mig_protocol": "Protocol",
        "mig_host": "Server (host name or IP address)",
        "mig_port": "Port (empty: the protocol's default)",
        "mig_user": "User name",
        "mig_password": "Password",
        "mig_key": "Private SSH key (instead of a password, SFTP only)",
        "mig_path": "Folder of the website on the old server (e.g. public_html)",
        "mig_db": "Database (MySQL/MariaDB)",
        "mig_via": "Connection",
        "mig_via_ssh": "through SSH (the SFTP login above)",
        "mig_via_mysql": "direct MySQL connection",
        "mig_db_host": "Database server (through SSH: as seen from that server, e.g. localhost)",
        "mig_db_port": "Port (empty: 3306)",
        "mig_db_name": "Database name",
        "mig_db_user": "Database user",
        "mig_db_password": "Database password",
        "mig_mailbox": "Mailbox {n} (IMAPS)",
        "mig_mail_port": "Port (empty: 993)",
        "mig_options": "Options",
        "mig_plain_ftp": "Plain FTP allowed (the password travels unencrypted)",
        "mig_skip_verify": "Do not verify the old provider's TLS certificate (reported to us)",
        "mig_submit": "Send securely",
        "mig_errors": "Some fields need another look; nothing was saved yet.",
        "mig_error": "Error",
        "mig_done_title": "Thank you: we have the access to your old provider",
        "mig_done": "We received it for {domain} and keep it encrypted. We will write to you when the "
        "migration has been checked; the access data are deleted when it ends.",
        "mig_received": "Received",
        "bad_request_title": "The form could not be read",
        "bad_request": "Please open the link from the e-mail again and send the form once more.",
    },
    "sl": {
        "contact": "Vprašanja? Pišite na {email} ali pokličite {phone}.",
        "access_title": "Vaši podatki za dostop",
        "access_intro": "Podatke za dostop za {domain} lahko prikažemo enkrat. Odprite jih, ko si jih lahko "
        "zapišete: potem ta povezava ne deluje več, gesel pa ne hranimo.",
        "access_button": "Prikaži moje podatke za dostop",
        "access_shown": "Zapišite si jih zdaj: ta stran se prikaže enkrat. Gesla hranite na varnem.",
        "domain": "Domena",
        "ftp": "FTP (datoteke)",
        "sftp": "SFTP (datoteke)",
        "database": "Podatkovna baza",
        "mail": "Poštni predal",
        "panel": "Nadzorna plošča",
        "host": "Strežnik",
        "port": "Vrata",
        "user": "Uporabniško ime",
        "password": "Geslo",
        "security": "Šifriranje",
        "name": "Ime podatkovne baze",
        "address": "E-poštni naslov",
        "imap_host": "Strežnik dohodne pošte (IMAP)",
        "imap_port": "Vrata IMAP",
        "imap_security": "Šifriranje IMAP",
        "smtp_host": "Strežnik odhodne pošte (SMTP)",
        "smtp_port": "Vrata SMTP",
        "smtp_security": "Šifriranje SMTP",
        "url": "Naslov",
        "imap": "Dohodna pošta (IMAP)",
        "smtp": "Odhodna pošta (SMTP)",
        "link_unknown_title": "Ta povezava ni veljavna",
        "link_unknown": "Te povezave ne poznamo. Preverite, ali ste jo iz e-pošte kopirali v celoti.",
        "link_used_title": "Ta povezava je že bila uporabljena",
        "link_used": "Povezava deluje enkrat in je že bila uporabljena. Če si podatkov niste zapisali, "
        "nas prosite za novo povezavo.",
        "link_expired_title": "Ta povezava je potekla",
        "link_expired": "Ta povezava ni več veljavna. Prosite nas za novo.",
        "mig_title": "Vaša brezplačna selitev: dostop do starega ponudnika",
        "mig_intro": "Povejte nam, kako dostopamo do starega ponudnika za {domain}. "
        "Izpolnite samo, kar želite "
        "preseliti: datoteke spletne strani, njeno podatkovno bazo MySQL in do dva poštna predala. "
        "Vpisano hranimo šifrirano in izbrišemo, ko je selitev končana.",
        "mig_files": "Datoteke spletne strani",
        "mig_protocol": "Protokol",
        "mig_host": "Strežnik (ime ali naslov IP)",
        "mig_port": "Vrata (prazno: privzeta za protokol)",
        "mig_user": "Uporabniško ime",
        "mig_password": "Geslo",
        "mig_key": "Zasebni ključ SSH (namesto gesla, samo SFTP)",
        "mig_path": "Mapa spletne strani na starem strežniku (npr. public_html)",
        "mig_db": "Podatkovna baza (MySQL/MariaDB)",
        "mig_via": "Povezava",
        "mig_via_ssh": "prek SSH (zgornja prijava SFTP)",
        "mig_via_mysql": "neposredna povezava MySQL",
        "mig_db_host": "Strežnik baze (prek SSH: kot ga vidi tisti strežnik, npr. localhost)",
        "mig_db_port": "Vrata (prazno: 3306)",
        "mig_db_name": "Ime baze",
        "mig_db_user": "Uporabnik baze",
        "mig_db_password": "Geslo baze",
        "mig_mailbox": "Poštni predal {n} (IMAPS)",
        "mig_mail_port": "Vrata (prazno: 993)",
        "mig_options": "Možnosti",
        "mig_plain_ftp": "Navadni FTP dovoljen (geslo potuje nešifrirano)",
        "mig_skip_verify": "Ne preverjaj potrdila TLS starega ponudnika (o tem bomo obveščeni)",
        "mig_submit": "Varno pošlji",
        "mig_errors": "Nekatera polja je treba popraviti; nič še ni shranjeno.",
        "mig_error": "Napaka",
        "mig_done_title": "Hvala: dostop do starega ponudnika smo prejeli",
        "mig_done": "Za {domain} smo ga prejeli in ga hranimo šifriranega. Pisali vam bomo, ko bo selitev "
        "preverjena; podatki za dostop se izbrišejo, ko se konča.",
        "mig_received": "Prejeto",
        "bad_request_title": "Obrazca ni bilo mogoče prebrati",
        "bad_request": "Povezavo iz e-pošte odprite znova in obrazec pošljite še enkrat.",
    },
}

_CSS = """
:root{--brand:%(colour)s}
*{box-sizing:border-box}
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;
font-size:1.05rem;line-height:1.5;color:#1a1a1a;background:#ffffff}
header{background:var(--brand);color:#ffffff;padding:.75rem 1rem}
header .brand{font-weight:700;font-size:1.2rem;color:#ffffff}
main{max-width:42rem;margin:0 auto;padding:1rem}
h1{font-size:1.4rem;line-height:1.25;margin:.5rem 0 1rem}
h2{font-size:1.1rem;margin:1.25rem 0 .5rem}
table{border-collapse:collapse;width:100%%;margin:.5rem 0 1rem}
th,td{text-align:left;vertical-align:top;padding:.45rem .5rem;border-bottom:1px solid #c8c8c8}
th{font-weight:600;width:45%%}
code{font-family:"DejaVu Sans Mono",Consolas,monospace;font-size:1rem;word-break:break-all;
background:#f1f1f1;padding:.1rem .25rem;border-radius:3px}
fieldset{border:1px solid #8c8c8c;border-radius:4px;margin:0 0 1rem;padding:.5rem .9rem 1rem}
legend{font-weight:700;padding:0 .3rem}
label{display:block;font-weight:600;margin:.7rem 0 .2rem}
label.check{font-weight:400;display:flex;gap:.5rem;align-items:flex-start}
input[type=text],input[type=password],input[type=number],select,textarea{width:100%%;font:inherit;
padding:.5rem;border:1px solid #595959;border-radius:4px;background:#ffffff;color:#1a1a1a}
textarea{min-height:6rem;font-family:"DejaVu Sans Mono",Consolas,monospace;font-size:.9rem}
input[type=checkbox]{width:1.25rem;height:1.25rem;margin-top:.15rem}
button{font:inherit;font-weight:700;background:var(--brand);color:#ffffff;border:0;border-radius:4px;
padding:.75rem 1.25rem;min-height:44px;cursor:pointer}
a{color:var(--brand)}
:focus-visible{outline:3px solid #ffbf47;outline-offset:2px}
.error{color:#b00020;font-weight:600;margin:.2rem 0 0}
.alert{border-left:4px solid #b00020;background:#fdecee;padding:.6rem .8rem;margin:0 0 1rem}
.note{border-left:4px solid var(--brand);background:#f3f6f9;padding:.6rem .8rem;margin:0 0 1rem}
[aria-invalid=true]{border:2px solid #b00020}
footer{max-width:42rem;margin:1.5rem auto 2rem;padding:1rem;border-top:1px solid #c8c8c8;font-size:.95rem}
section+section{margin-top:1.5rem}
"""


@lru_cache(maxsize=16)
def stylesheet(colour: str) -> tuple[str, str]:
    """The page CSS in the brand's colour and its CSP source (``'sha256-...'``)."""
    css = _CSS % {"colour": colour}
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    return css, f"'sha256-{digest}'"


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("provisioner", "templates/pages"),
        autoescape=select_autoescape(["html", "html.j2"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def headers(style_hash: str) -> dict[str, str]:
    return {
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": (
            f"default-src 'none'; style-src {style_hash}; form-action 'self'; "
            "base-uri 'none'; frame-ancestors 'none'"
        ),
    }


def language(lang: str | None, accept_language: str | None) -> tuple[str, ...]:
    """The page's language(s): the customer's; without one, the browser's first of ours;
    else both (Slovenian first)."""
    if lang in LANGUAGES:
        return (str(lang),)
    for part in (accept_language or "").split(",")[:20]:
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGUAGES:
            return (code,)
    return LANGUAGES


def render(
    template: str, langs: tuple[str, ...], brand: BrandPolicy | str, status: int = 200, **context: Any
) -> HTMLResponse:
    """``templates/pages/{template}.html.j2`` in ``langs`` (one, or both one after the
    other), with the brand, as an HTML response with the pages' headers."""
    policy = get_brand(brand) if isinstance(brand, str) else brand
    css, style_hash = stylesheet(policy.colour)
    body = (
        _environment()
        .get_template(f"{template}.html.j2")
        .render(
            langs=langs,
            lang=langs[0],
            T=TEXT,
            t=TEXT[langs[0]],
            css=css,
            brand=policy,
            brand_name=policy.display_name or policy.name,
            **context,
        )
    )
    return HTMLResponse(body, status_code=status, headers=headers(style_hash))

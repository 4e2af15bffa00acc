"""Customer e-mails: rendering (Slovenian and English) and delivery over SMTP.

Rendering and sending are apart, like the rest of the adapters: ``render_mail`` is
pure (templates in ``provisioner/templates/mail/{sl,en}/``), ``Mailer.send`` holds
all the smtplib I/O and turns every library exception into our own errors:

* connection refused, timeouts, dropped connections and 4xx answers -> TransientError;
* a 5xx answer to MAIL FROM / RCPT TO / DATA -> InvalidInput (carries the answer);
* a refused login, a missing STARTTLS or a bad TLS certificate -> ConfigurationError.

Templates (``name``: context variables; every template also receives ``lang``):

* ``proforma``: customer {name, company?}, proforma {number, issued_on, due_date,
  lines [{description, net, vat, gross}], net, vat, gross, reference, iban,
  recipient, vat_rate?}, pay_url?, company?
* ``payment_confirmation``: customer, proforma {number}, payment {amount, method,
  received_on}, company?
* ``invoice``: customer, invoice {number, issued_on, proforma_number, lines, net,
  vat, gross, vat_rate?}, invoice_url?, company?
* ``ops_alert`` (always English, text only): step_key, order_id, detail, attempts

Money is formatted exactly from ``Decimal`` (``{{ x | eur(lang) }}``): "1.234,56 EUR"
in Slovenian, "EUR 1,234.56" in English.
"""

from __future__ import annotations

import hashlib
import re
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from provisioner.config import Settings
from provisioner.errors import ConfigurationError, InvalidInput, TransientError

LANGUAGES = ("sl", "en")
CUSTOMER_TEMPLATES = ("proforma", "payment_confirmation", "invoice", "renewal_reminder",
                      "service_shutdown", "over_quota")
# customer mails whose context is not a proforma's (the access-data link, a domain refused)
SERVICE_TEMPLATES: tuple[str, ...] = ("credentials", "domain_failed", "migration_intake")
# the lapse of an unpaid new order, a withdrawal's credit note (issue 17, items 2 and 3)
SERVICE_TEMPLATES += ("order_lapsed", "credit_note")
SERVICE_TEMPLATES += ("backup_download",)  # the backup download link (issue 17, item 9)
SERVICE_TEMPLATES += ("migration_over_cap",)  # the migration survey's stop (issue 13, item 3)
SERVICE_TEMPLATES += ("vps_credentials",)  # a VPS's one-time access-data link (issue 14)
# the migration copy's stop at a cap, its reconciliation report, its cut-over (issue 13 items 5-7)
SERVICE_TEMPLATES += ("migration_stopped", "migration_report", "migration_cutover")
# English, subject and text only
OPS_TEMPLATES: tuple[str, ...] = ("ops_alert", "ops_lapsed_payment", "ops_refund")
OPS_TEMPLATES += ("ops_breach",)  # an open personal-data breach (issue 17, item 10)
OPS_TEMPLATES += ("ops_migration_over_cap",)  # a migration stopped at its survey (issue 13)
OPS_TEMPLATES += ("ops_migration_stopped",)  # a migration's copy stopped at a cap (issue 13)
OPS_TEMPLATES += ("ops_vps_reconcile",)  # the VPS reconciler's findings (issue 14)
TEMPLATES = CUSTOMER_TEMPLATES + SERVICE_TEMPLATES + OPS_TEMPLATES

SMTP_TIMEOUT_S = 10.0

_CENT = Decimal("0.01")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # printable ASCII without ':' (RFC 5322 ftext)
_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")
_URL = re.compile(r"^https?://[^\s\x00-\x1f\x7f]+$")
_URL_KEYS = ("pay_url", "invoice_url", "website_url")  # rendered as links in the HTML mails
_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_ADDRESS_FORBIDDEN = re.compile(r"[\s<>(),;:\"\\\[\]\x00-\x1f\x7f]")
# Headers the Mailer sets itself; callers may not override them through ``headers``.
_RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "auto-submitted",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "sender",
        "return-path",
    }
)

_METHOD_LABELS: dict[str, dict[str, str]] = {
    "sl": {
        "card": "plačilna kartica",
        "stripe": "plačilna kartica",
        "braintree": "plačilna kartica",
        "paypal": "PayPal",
        "moneta": "Moneta",
        "bank": "bančno nakazilo (UPN)",
        "bank_transfer": "bančno nakazilo (UPN)",
        "cash": "gotovina",
    },
    "en": {
        "card": "card",
        "stripe": "card",
        "braintree": "card",
        "paypal": "PayPal",
        "moneta": "Moneta",
        "bank": "bank transfer",
        "bank_transfer": "bank transfer",
        "cash": "cash",
    },
}


@dataclass(frozen=True)
class RenderedMail:
    subject: str  # one line, no CR/LF
    text: str
    html: str | None  # None for text-only mails (ops_alert)


# --- formatting filters ---------------------------------------------------------


def _check_lang(lang: object) -> str:
    if lang not in LANGUAGES:
        raise InvalidInput(f"unsupported language {lang!r}; expected one of {LANGUAGES}")
    return str(lang)


def format_eur(value: Decimal | int, lang: str) -> str:
    """Exact money formatting: ``Decimal("1234.56")`` -> "1.234,56 EUR" / "EUR 1,234.56".

    Floats are refused (they are not exact) and so are fractions of a cent (a money
    amount that reaches a customer must already be rounded by the domain code).
    """
    lang = _check_lang(lang)
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise InvalidInput(f"money amount must be Decimal or int, not {type(value).__name__}")
    amount = Decimal(value)
    if not amount.is_finite():
        raise InvalidInput(f"money amount must be finite, not {amount}")
    try:
        cents = amount.quantize(_CENT)
    except InvalidOperation as exc:
        raise InvalidInput(f"money amount out of range: {amount}") from exc
    if cents != amount:
        raise InvalidInput(f"money amount {amount} is not a whole number of cents")
    sign = "-" if cents < 0 else ""
    digits = f"{abs(cents):,.2f}"  # "1,234.56"; Decimal formatting is exact
    if lang == "sl":
        digits = digits.replace(",", " ").replace(".", ",").replace(" ", ".")
        return f"{sign}{digits} EUR"
    return f"EUR {sign}{digits}"


def format_percent(value: Decimal | int, lang: str) -> str:
    """``22`` -> "22 %" / "22%"; ``Decimal("9.5")`` -> "9,5 %" / "9.5%".

    A rate below 1 is a fraction, as stored on proforma lines: ``Decimal("0.2200")``
    is 22 % (no VAT rate lies between 0 % and 1 %).
    """
    lang = _check_lang(lang)
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise InvalidInput(f"rate must be Decimal or int, not {type(value).__name__}")
    rate = Decimal(value)
    if 0 < rate < 1:
        rate *= 100
    text = format(rate.normalize(), "f")
    if lang == "sl":
        return f"{text.replace('.', ',')} %"
    return f"{text}%"


_EN_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def format_date(value: date | str, lang: str) -> str:
    """``date(2026, 11, 22)`` -> "22. 11. 2026" / "22 November 2026" (ISO strings too)."""
    lang = _check_lang(lang)
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value)
        except ValueError as exc:
            raise InvalidInput(f"not an ISO date: {value!r}") from exc
    if isinstance(value, datetime):
        value = value.date()
    if not isinstance(value, date):
        raise InvalidInput(f"expected a date, not {type(value).__name__}")
    if lang == "sl":
        return f"{value.day}. {value.month}. {value.year}"
    return f"{value.day} {_EN_MONTHS[value.month - 1]} {value.year}"


def format_method(value: str, lang: str) -> str:
    """Payment method or provider ("stripe", "bank", "manual-cash", ...) -> a label.

    Unknown codes are shown as they are.
    """
    lang = _check_lang(lang)
    code = str(value).lower().removeprefix("manual-")
    return _METHOD_LABELS[lang].get(code, str(value))


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def format_buyer(customer: Any) -> str:
    """The customer as named on a document: "Janez Novak" or "Janez Novak, Firma d.o.o."."""
    name, company = _field(customer, "name"), _field(customer, "company")
    if not name:
        raise InvalidInput("customer.name is missing")
    return f"{name}, {company}" if company else str(name)


# --- rendering ------------------------------------------------------------------


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("provisioner", "templates/mail"),
        # Template files end in ".html.j2": select_autoescape(["html"]) alone would
        # NOT match them (it tests the end of the name), so both are listed.
        autoescape=select_autoescape(["html", "html.j2"], default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["eur"] = format_eur
    env.filters["percent"] = format_percent
    env.filters["day"] = format_date
    env.filters["method"] = format_method
    env.filters["buyer"] = format_buyer
    return env


def _one_line(text: str) -> str:
    """Collapse every kind of line break and whitespace run; drop control characters."""
    return _CONTROL.sub("", " ".join(text.split()))


def render_mail(template: str, lang: str, context: Mapping[str, Any]) -> RenderedMail:
    """Render ``{lang}/{template}.{subject,txt,html}.j2``.

    ``lang`` must be "sl" or "en" (InvalidInput otherwise); ``ops_alert`` is always
    rendered in English. A missing context variable or a bad value (a float amount)
    is the caller's fault: InvalidInput.
    """
    lang = _check_lang(lang)
    if template not in TEMPLATES:
        raise InvalidInput(f"unknown mail template {template!r}; expected one of {TEMPLATES}")
    if template in OPS_TEMPLATES:
        lang = "en"
    for key in _URL_KEYS:
        url = context.get(key)
        if url and not (isinstance(url, str) and _URL.match(url)):
            raise InvalidInput(f"{key} must be an http(s) URL, not {url!r}")
    env = _environment()
    values = {**context, "lang": lang}
    try:
        subject = env.get_template(f"{lang}/{template}.subject.j2").render(values)
        text = env.get_template(f"{lang}/{template}.txt.j2").render(values)
        html = None
        if template not in OPS_TEMPLATES:
            html = env.get_template(f"{lang}/{template}.html.j2").render(values)
    except jinja2.UndefinedError as exc:
        raise InvalidInput(f"mail {template}/{lang}: missing or bad context: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise ConfigurationError(f"mail {template}/{lang}: broken template: {exc}") from exc
    return RenderedMail(subject=_one_line(subject), text=text, html=html)


# --- sending --------------------------------------------------------------------


def make_message_id(key: str, domain: str) -> str:
    """Deterministic Message-ID ``<sha256(key)[:32]@domain>``: a re-sent mail keeps it."""
    if not _DOMAIN.match(domain) or ".." in domain:
        raise InvalidInput(f"not a domain for a Message-ID: {domain!r}")
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def normalize_address(address: str) -> str:
    """Validate a bare recipient address (``local@domain``) and IDNA-encode the domain.

    Raises InvalidInput for CR/LF or other control characters, display names, lists,
    a missing or repeated "@" and domains that cannot be encoded.
    """
    if not isinstance(address, str):
        raise InvalidInput(f"e-mail address must be a string, not {type(address).__name__}")
    if _ADDRESS_FORBIDDEN.search(address) or address.count("@") != 1:
        raise InvalidInput(f"not a single e-mail address: {address!r}")
    local, _, domain = address.partition("@")
    if not local or not domain:
        raise InvalidInput(f"not a single e-mail address: {address!r}")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise InvalidInput(f"bad domain in e-mail address {address!r}: {exc}") from exc
    if not _DOMAIN.match(ascii_domain) or ".." in ascii_domain:
        raise InvalidInput(f"bad domain in e-mail address {address!r}")
    return f"{local}@{ascii_domain}"


def sender_address(sender: str) -> tuple[str, str]:
    """``(From header, envelope sender)`` of a sender such as ``"FCB <billing@fcb.si>"``;
    ConfigurationError when it names no usable address (a brand's sender is configuration)."""
    _, address = parseaddr(sender)
    if not isinstance(sender, str) or "@" not in address or _CONTROL.search(sender):
        raise ConfigurationError(f"sender has no usable address: {sender!r}")
    return sender, address


class Mailer:
    """Sends a RenderedMail through the configured SMTP relay, one connection per mail."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout: float = SMTP_TIMEOUT_S,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if not settings.smtp_host:
            raise ConfigurationError("smtp_host is empty")
        _, envelope_from = parseaddr(settings.mail_from)
        if "@" not in envelope_from or _CONTROL.search(settings.mail_from):
            raise ConfigurationError(f"mail_from has no usable address: {settings.mail_from!r}")
        if settings.smtp_password and not settings.smtp_user:
            raise ConfigurationError("smtp_password is set but smtp_user is empty")
        self._settings = settings
        self._timeout = timeout
        self._tls_context = tls_context
        self.envelope_from = envelope_from
        self.domain = envelope_from.rpartition("@")[2]

    def message_id(self, key: str) -> str:
        """``make_message_id(key, <domain of mail_from>)``."""
        return make_message_id(key, self.domain)

    def build_message(
        self,
        *,
        to: str,
        rendered: RenderedMail,
        message_id: str,
        headers: Mapping[str, str] | None = None,
        sender: str | None = None,
    ) -> EmailMessage:
        """The message ``send`` would deliver; validates everything, no network.
        ``sender``: the From (a brand's `mail_from`); None: the installation's."""
        recipient = normalize_address(to)
        sender_header = self._settings.mail_from if sender is None else sender_address(sender)[0]
        if not _MESSAGE_ID.match(message_id):
            raise InvalidInput(f"not a Message-ID: {message_id!r}")
        extra = dict(headers or {})
        for name, value in extra.items():
            if not _HEADER_NAME.match(name):
                raise InvalidInput(f"bad header name {name!r}")
            if name.lower() in _RESERVED_HEADERS:
                raise InvalidInput(f"header {name!r} is set by the mailer")
            if _CONTROL.search(value):
                raise InvalidInput(f"header {name!r} contains control characters")
        msg = EmailMessage()
        msg["Subject"] = _one_line(rendered.subject)
        msg["From"] = sender_header
        msg["To"] = recipient
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = message_id
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Auto-Response-Suppress"] = "All"
        for name, value in extra.items():
            msg[name] = value
        msg.set_content(rendered.text)
        if rendered.html is not None:
            msg.add_alternative(rendered.html, subtype="html")
        return msg

    def send(
        self,
        *,
        to: str,
        rendered: RenderedMail,
        message_id: str,
        headers: Mapping[str, str] | None = None,
        sender: str | None = None,
    ) -> None:
        msg = self.build_message(to=to, rendered=rendered, message_id=message_id, headers=headers,
                                 sender=sender)
        recipient = str(msg["To"])
        envelope_from = self.envelope_from if sender is None else sender_address(sender)[1]
        settings = self._settings
        where = f"{settings.smtp_host}:{settings.smtp_port}"
        stage = "connect"
        try:
            smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=self._timeout)
            try:
                if settings.smtp_starttls:
                    stage = "starttls"
                    smtp.starttls(context=self._tls_context or ssl.create_default_context())
                if settings.smtp_user:
                    stage = "login"
                    smtp.login(settings.smtp_user, settings.smtp_password)
                stage = "send"
                smtp.send_message(msg, from_addr=envelope_from, to_addrs=[recipient])
            except BaseException:
                smtp.close()
                raise
            _quit_quietly(smtp)
        except smtplib.SMTPRecipientsRefused as exc:
            code, answer = exc.recipients.get(recipient, (-1, b"recipient refused"))
            raise _answer_error(stage, where, code, answer) from exc
        except smtplib.SMTPResponseException as exc:
            raise _answer_error(stage, where, exc.smtp_code, exc.smtp_error) from exc
        except smtplib.SMTPServerDisconnected as exc:
            raise TransientError(f"SMTP {where}: connection lost during {stage}: {exc}") from exc
        except smtplib.SMTPNotSupportedError as exc:
            if stage == "send":  # SMTPUTF8 needed for this address, relay cannot do it
                raise InvalidInput(f"SMTP {where} cannot deliver to {recipient!r}: {exc}") from exc
            raise ConfigurationError(f"SMTP {where}: {stage} not supported: {exc}") from exc
        except smtplib.SMTPException as exc:
            raise ConfigurationError(f"SMTP {where}: {stage} failed: {exc}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise ConfigurationError(f"SMTP {where}: TLS certificate rejected: {exc}") from exc
        except OSError as exc:  # refused, timeout, reset, TLS handshake broken off
            raise TransientError(f"SMTP {where}: {stage}: {exc}") from exc


def _quit_quietly(smtp: smtplib.SMTP) -> None:
    """QUIT, but a bad answer to QUIT must not turn a delivered mail into a failure."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _answer_error(stage: str, where: str, code: int, answer: bytes | str) -> Exception:
    text = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else str(answer)
    message = f"SMTP {where} answered {code} {text} during {stage}"
    if 500 <= code < 600:
        if stage in ("connect", "starttls", "login"):
            return ConfigurationError(message)
        return InvalidInput(message)
    return TransientError(message)

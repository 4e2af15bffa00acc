"""Customer e-mails end to end: render (sl/en), send through Mailer to a real SmtpSink."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from provisioner.adapters.mail import (
    CUSTOMER_TEMPLATES,
    LANGUAGES,
    Mailer,
    RenderedMail,
    format_eur,
    make_message_id,
    render_mail,
)
from provisioner.config import Settings
from provisioner.devstack.smtp_sink import SmtpSink, read_maildir
from provisioner.errors import ConfigurationError, InvalidInput, TransientError

HOSTILE_NAME = 'Janez <script>alert("x")</script> & Co'
HOSTILE_DOMAIN = "<img src=x onerror=alert(1)>.si"
REFERENCE = "SI12 20260001-8"
ISSUED = dt.date(2026, 11, 22)
DUE = dt.date(2026, 12, 6)


def _line(description: str, net: str, vat: str, gross: str) -> dict[str, Any]:
    return {
        "description": description,
        "net": Decimal(net),
        "vat": Decimal(vat),
        "gross": Decimal(gross),
    }


LINES = [
    _line("Gostovanje Giga 5, 12 mesecev", "1000.00", "220.00", "1220.00"),
    _line(f"Domena {HOSTILE_DOMAIN}, 1 leto", "11.93", "2.63", "14.56"),
]
TOTALS = {"net": Decimal("1011.93"), "vat": Decimal("222.63"), "gross": Decimal("1234.56")}
GROSS = {"sl": "1.234,56 EUR", "en": "EUR 1,234.56"}
NET = {"sl": "1.011,93 EUR", "en": "EUR 1,011.93"}
VAT = {"sl": "222,63 EUR", "en": "EUR 222.63"}


def _context(template: str, name: str = HOSTILE_NAME) -> dict[str, Any]:
    customer = {"name": name, "email": "janez@example.com"}
    proforma = {
        "number": "2026-0001",
        "issued_on": ISSUED,
        "due_date": DUE,
        "lines": LINES,
        **TOTALS,
        "reference": REFERENCE,
        "iban": "SI56 1910 0000 0123 438",
        "recipient": "FCB d.o.o., Ljubljana",
    }
    if template == "proforma":
        return {"customer": customer, "proforma": proforma, "pay_url": "https://pay.example/p/1"}
    if template == "payment_confirmation":
        payment = {"amount": Decimal("1234.56"), "method": "bank", "received_on": DUE}
        return {"customer": customer, "proforma": proforma, "payment": payment}
    if template == "invoice":
        invoice = {
            "number": "2026-0042",
            "issued_on": DUE,
            "proforma_number": "2026-0001",
            "lines": LINES,
            **TOTALS,
        }
        return {"customer": customer, "invoice": invoice}
    raise AssertionError(template)


SUBJECTS = {
    ("proforma", "sl"): "Predračun 2026-0001, rok plačila 6. 12. 2026",
    ("proforma", "en"): "Proforma invoice 2026-0001, due 6 December 2026",
    ("payment_confirmation", "sl"): "Potrdilo o plačilu predračuna 2026-0001",
    ("payment_confirmation", "en"): "Payment confirmation for proforma invoice 2026-0001",
    ("invoice", "sl"): "Račun 2026-0042",
    ("invoice", "en"): "Invoice 2026-0042",
}

# Words each mail must contain (subject plus its text, subject plus its HTML part).
WORDING = {
    ("proforma", "sl"): ["Predračun", "Rok plačila", "Sklic", "DDV 22 %", "Za plačilo"],
    ("proforma", "en"): ["Proforma invoice", "Due date", "Reference", "VAT 22%", "Amount due"],
    ("payment_confirmation", "sl"): ["Potrdilo o plačilu", "Način plačila", "bančno nakazilo"],
    ("payment_confirmation", "en"): ["Payment confirmation", "Payment method", "bank transfer"],
    ("invoice", "sl"): ["Račun", "DDV 22 %", "Skupaj z DDV", "2026-0001"],
    ("invoice", "en"): ["Invoice", "VAT 22%", "Total incl. VAT", "2026-0001"],
}

#: The billing mails (a proforma's or an invoice's lines and totals); the clock's
#: notices (renewal reminder, shutdown, over quota) are tested apart below.
BILLING = ("proforma", "payment_confirmation", "invoice")
CASES = [(t, lang) for t in BILLING for lang in LANGUAGES]
NOTICES = tuple(t for t in CUSTOMER_TEMPLATES if t not in BILLING)


# --- rendering ----------------------------------------------------------------


@pytest.mark.parametrize(("template", "lang"), CASES)
def test_subject(template: str, lang: str) -> None:
    assert render_mail(template, lang, _context(template)).subject == SUBJECTS[template, lang]


@pytest.mark.parametrize(("template", "lang"), CASES)
@pytest.mark.parametrize("part", ["text", "html"])
def test_wording(template: str, lang: str, part: str) -> None:
    rendered = render_mail(template, lang, _context(template))
    body = rendered.subject + "\n" + getattr(rendered, part)
    for words in WORDING[template, lang]:
        assert words in body


@pytest.mark.parametrize(("template", "lang"), CASES)
@pytest.mark.parametrize("part", ["text", "html"])
def test_amounts_formatted_exactly(template: str, lang: str, part: str) -> None:
    body = getattr(render_mail(template, lang, _context(template)), part)
    assert GROSS[lang] in body
    if template != "payment_confirmation":
        assert NET[lang] in body
        assert VAT[lang] in body
        assert ("14,56 EUR" if lang == "sl" else "EUR 14.56") in body


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("part", ["text", "html"])
def test_proforma_carries_payment_reference(lang: str, part: str) -> None:
    body = getattr(render_mail("proforma", lang, _context("proforma")), part)
    assert REFERENCE in body
    assert "SI56 1910 0000 0123 438" in body
    assert "https://pay.example/p/1" in body


@pytest.mark.parametrize("lang", LANGUAGES)
def test_proforma_without_pay_url(lang: str) -> None:
    context = _context("proforma")
    del context["pay_url"]
    rendered = render_mail("proforma", lang, context)
    assert "pay.example" not in rendered.text
    assert rendered.html is not None and "<a " not in rendered.html


@pytest.mark.parametrize(("template", "lang"), CASES)
def test_html_escapes_customer_strings(template: str, lang: str) -> None:
    rendered = render_mail(template, lang, _context(template))
    assert rendered.html is not None
    assert "<script" not in rendered.html
    assert "&lt;script&gt;" in rendered.html
    assert "&amp; Co" in rendered.html
    assert "<img" not in rendered.html
    # The text part is plain text: shown as the customer typed it.
    assert HOSTILE_NAME in rendered.text


@pytest.mark.parametrize(("template", "lang"), CASES)
def test_subject_cannot_carry_headers(template: str, lang: str) -> None:
    context = _context(template)
    number = "2026-0001\r\nBcc: victim@example.com\n\u2028X: y"
    for key in ("proforma", "invoice"):
        if key in context:
            context[key] = {**context[key], "number": number}
    subject = render_mail(template, lang, context).subject
    assert "\r" not in subject and "\n" not in subject and "\u2028" not in subject
    assert "Bcc: victim@example.com" in subject  # harmless once on the same line


def test_ops_alert_is_english_text_only() -> None:
    context = {
        "step_key": "order-7/hosting",
        "order_id": 7,
        "detail": "ssh: timeout",
        "attempts": 5,
    }
    for lang in LANGUAGES:
        rendered = render_mail("ops_alert", lang, context)
        assert rendered.subject == (
            "[provisioner] Step order-7/hosting failed for order 7 (5 attempts)"
        )
        assert "ssh: timeout" in rendered.text
        assert "Attempts: 5" in rendered.text
        assert rendered.html is None


@pytest.mark.parametrize(("template", "lang"), CASES)
def test_company_is_named_and_escaped(template: str, lang: str) -> None:
    context = _context(template, name="Janez Novak")
    context["customer"]["company"] = "Novak & <Sinovi> d.o.o."
    rendered = render_mail(template, lang, context)
    assert "Janez Novak, Novak & <Sinovi> d.o.o." in rendered.text
    assert rendered.html is not None
    assert "Janez Novak, Novak &amp; &lt;Sinovi&gt; d.o.o." in rendered.html


@pytest.mark.parametrize(
    ("method", "sl", "en"),
    [
        ("bank", "bančno nakazilo (UPN)", "bank transfer"),
        ("stripe", "plačilna kartica", "card"),
        ("manual-cash", "gotovina", "cash"),
        ("manual-moneta", "Moneta", "Moneta"),
        ("paypal", "PayPal", "PayPal"),
        ("barter", "barter", "barter"),
    ],
)
def test_payment_method_label(method: str, sl: str, en: str) -> None:
    context = _context("payment_confirmation")
    context["payment"]["method"] = method
    assert f"Način plačila: {sl}\n" in render_mail("payment_confirmation", "sl", context).text
    assert f"Payment method: {en}\n" in render_mail("payment_confirmation", "en", context).text


@pytest.mark.parametrize(
    ("rate", "sl", "en"),
    [(Decimal("0.2200"), "DDV 22 %", "VAT 22%"), (Decimal("9.5"), "DDV 9,5 %", "VAT 9.5%")],
)
def test_vat_rate(rate: Decimal, sl: str, en: str) -> None:
    context = _context("invoice")
    context["invoice"]["vat_rate"] = rate
    assert sl in render_mail("invoice", "sl", context).text
    assert en in render_mail("invoice", "en", context).text


def test_amounts_as_read_from_the_database() -> None:
    # Numeric columns may come back with a longer scale; a sum over nothing is int 0.
    context = _context("payment_confirmation")
    context["payment"]["amount"] = Decimal("1234.5600000000")
    assert "1.234,56 EUR" in render_mail("payment_confirmation", "sl", context).text
    context["payment"]["amount"] = 0
    assert "EUR 0.00" in render_mail("payment_confirmation", "en", context).text


@pytest.mark.parametrize("lang", ["de", "", "SL", None])
def test_unknown_language_is_refused(lang: Any) -> None:
    with pytest.raises(InvalidInput):
        render_mail("proforma", lang, _context("proforma"))


def test_unknown_template_is_refused() -> None:
    with pytest.raises(InvalidInput):
        render_mail("../en/proforma", "en", _context("proforma"))


def test_missing_context_is_refused() -> None:
    context = _context("invoice")
    del context["invoice"]["proforma_number"]
    with pytest.raises(InvalidInput):
        render_mail("invoice", "sl", context)


def test_pay_url_must_be_http() -> None:
    context = {**_context("proforma"), "pay_url": "javascript:alert(1)"}
    with pytest.raises(InvalidInput):
        render_mail("proforma", "en", context)


@pytest.mark.parametrize(
    ("amount", "sl", "en"),
    [
        (Decimal("0"), "0,00 EUR", "EUR 0.00"),
        (Decimal("5.5"), "5,50 EUR", "EUR 5.50"),
        (Decimal("1234.56"), "1.234,56 EUR", "EUR 1,234.56"),
        (Decimal("1234567.80"), "1.234.567,80 EUR", "EUR 1,234,567.80"),
        (Decimal("-12.30"), "-12,30 EUR", "EUR -12.30"),
        (Decimal("99999999999999.99"), "99.999.999.999.999,99 EUR", "EUR 99,999,999,999,999.99"),
        (7, "7,00 EUR", "EUR 7.00"),
    ],
)
def test_eur(amount: Decimal | int, sl: str, en: str) -> None:
    assert format_eur(amount, "sl") == sl
    assert format_eur(amount, "en") == en


@pytest.mark.parametrize("amount", [1.1, Decimal("0.005"), Decimal("NaN"), "12.00", True])
def test_eur_refuses_inexact_amounts(amount: Any) -> None:
    with pytest.raises(InvalidInput):
        format_eur(amount, "sl")


def test_make_message_id_is_deterministic() -> None:
    first = make_message_id("proforma:2026-0001:sent", "provider.example")
    assert first == make_message_id("proforma:2026-0001:sent", "provider.example")
    assert first != make_message_id("proforma:2026-0002:sent", "provider.example")
    assert first.startswith("<") and first.endswith("@provider.example>")
    assert len(first.split("@")[0]) == 33  # "<" + 32 hex digits


@pytest.mark.parametrize("domain", ["", "a b", "x>\r\nBcc: y", "a@b"])
def test_make_message_id_refuses_bad_domain(domain: str) -> None:
    with pytest.raises(InvalidInput):
        make_message_id("k", domain)


# --- sending through a real local SMTP server ------------------------------------


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    with SmtpSink(tmp_path / "Maildir") as running:
        yield running


def _settings(port: int, **overrides: Any) -> Settings:
    return Settings().with_overrides(smtp_host="127.0.0.1", smtp_port=port, **overrides)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_sink_binds_a_real_port_when_asked_for_0(sink: SmtpSink) -> None:
    assert sink.port > 0
    with socket.create_connection(("127.0.0.1", sink.port), timeout=5) as conn:
        assert conn.recv(100).startswith(b"220 ")


def test_read_maildir_without_maildir(tmp_path: Path) -> None:
    assert read_maildir(tmp_path / "nothing") == []


@pytest.mark.parametrize("lang", LANGUAGES)
def test_send_proforma_to_sink(sink: SmtpSink, lang: str) -> None:
    mailer = Mailer(_settings(sink.port))
    rendered = render_mail("proforma", lang, _context("proforma"))
    message_id = mailer.message_id("proforma:2026-0001")
    mailer.send(
        to="janez@example.com",
        rendered=rendered,
        message_id=message_id,
        headers={"X-Provisioner-Proforma": "2026-0001"},
    )

    [msg] = read_maildir(sink.maildir)
    assert msg["From"] == "Provisioner <billing@provider.example>"
    assert msg["To"] == "janez@example.com"
    assert msg["Message-ID"] == message_id
    assert message_id == make_message_id("proforma:2026-0001", "provider.example")
    assert msg["Subject"] == SUBJECTS["proforma", lang]
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Provisioner-Proforma"] == "2026-0001"
    assert msg["Date"] is not None
    assert msg["Delivered-To"] == "janez@example.com"
    assert msg["Return-Path"] == "<billing@provider.example>"
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    assert text.get_content() == rendered.text
    assert html.get_content() == rendered.html
    assert REFERENCE in text.get_content()


def test_resent_mail_keeps_its_message_id(sink: SmtpSink) -> None:
    mailer = Mailer(_settings(sink.port))
    rendered = render_mail("invoice", "sl", _context("invoice"))
    for _ in range(2):
        mailer.send(to="janez@example.com", rendered=rendered, message_id=mailer.message_id("i:42"))
    first, second = read_maildir(sink.maildir)
    assert first["Message-ID"] == second["Message-ID"] == mailer.message_id("i:42")


def test_send_ops_alert_is_plain_text(sink: SmtpSink) -> None:
    settings = _settings(sink.port)
    rendered = render_mail(
        "ops_alert", "en", {"step_key": "s", "order_id": 1, "detail": "d", "attempts": 3}
    )
    Mailer(settings).send(
        to=settings.ops_email, rendered=rendered, message_id="<a1@provider.example>"
    )
    [msg] = read_maildir(sink.maildir)
    assert msg.get_content_type() == "text/plain"
    assert msg["To"] == "ops@provider.example"


def test_idn_recipient_domain_is_encoded(sink: SmtpSink) -> None:
    rendered = RenderedMail(subject="Test", text="Zdravo\n", html=None)
    Mailer(_settings(sink.port)).send(
        to="janez@šola.si", rendered=rendered, message_id="<idn@provider.example>"
    )
    [msg] = read_maildir(sink.maildir)
    assert msg["To"] == "janez@xn--ola-zza.si"
    assert msg["Delivered-To"] == "janez@xn--ola-zza.si"


def test_utf8_local_part_uses_smtputf8(sink: SmtpSink) -> None:
    rendered = RenderedMail(subject="Zadeva č", text="Zdravo\n", html=None)
    Mailer(_settings(sink.port)).send(
        to="jože@example.si", rendered=rendered, message_id="<u8@provider.example>"
    )
    [msg] = read_maildir(sink.maildir)
    assert msg["To"] == "jože@example.si"
    assert msg["Subject"] == "Zadeva č"


def test_sink_into_an_existing_empty_directory(tmp_path: Path) -> None:
    rendered = RenderedMail(subject="s", text="t\n", html=None)
    with SmtpSink(tmp_path) as empty_dir_sink:
        Mailer(_settings(empty_dir_sink.port)).send(
            to="janez@example.com", rendered=rendered, message_id="<e@provider.example>"
        )
    assert len(read_maildir(tmp_path)) == 1


def test_nothing_listening_is_transient() -> None:
    mailer = Mailer(_settings(_closed_port()))
    rendered = render_mail("invoice", "en", _context("invoice"))
    with pytest.raises(TransientError):
        mailer.send(to="janez@example.com", rendered=rendered, message_id="<x@provider.example>")


class _Answer:
    """A sink handler that answers RCPT TO or DATA with a fixed reply."""

    def __init__(self, command: str, reply: str) -> None:
        self.command = command
        self.reply = reply

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.command == "RCPT":
            return self.reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return self.reply if self.command == "DATA" else "250 OK"


@pytest.mark.parametrize(
    ("command", "reply", "error"),
    [
        ("RCPT", "550 5.1.1 <janez@example.com>: Recipient address rejected", InvalidInput),
        ("RCPT", "451 4.3.0 Try again later", TransientError),
        ("DATA", "554 5.7.1 Message rejected as spam", InvalidInput),
        ("DATA", "452 4.3.1 Insufficient system storage", TransientError),
    ],
)
def test_server_answers_map_to_errors(
    tmp_path: Path, command: str, reply: str, error: type[Exception]
) -> None:
    rendered = render_mail("proforma", "sl", _context("proforma"))
    with SmtpSink(tmp_path / "Maildir", handler=_Answer(command, reply)) as refusing:
        mailer = Mailer(_settings(refusing.port))
        with pytest.raises(error) as caught:
            mailer.send(
                to="janez@example.com", rendered=rendered, message_id="<r@provider.example>"
            )
    assert reply.split(" ", 1)[1] in str(caught.value)
    assert reply.split(" ", 1)[0] in str(caught.value)


@pytest.mark.parametrize(
    "address",
    [
        "janez@example.com\r\nBcc: victim@example.com",
        "janez@example.com\n",
        "janez.example.com",
        "janez@",
        "@example.com",
        "a@b@example.com",
        "Janez <janez@example.com>",
        "janez@example.com, other@example.com",
        "",
    ],
)
def test_bad_recipient_is_refused_before_any_network(address: str) -> None:
    # Nothing listens on the port: reaching the network would be a TransientError.
    mailer = Mailer(_settings(_closed_port()))
    rendered = RenderedMail(subject="s", text="t\n", html=None)
    with pytest.raises(InvalidInput):
        mailer.send(to=address, rendered=rendered, message_id="<b@provider.example>")


@pytest.mark.parametrize(
    ("headers", "message_id"),
    [
        ({"X-Order": "1\r\nBcc: victim@example.com"}, "<h@provider.example>"),
        ({"Bad Name": "1"}, "<h@provider.example>"),
        ({"Bcc": "victim@example.com"}, "<h@provider.example>"),
        ({"message-id": "<other@provider.example>"}, "<h@provider.example>"),
        (None, "no-angle-brackets@provider.example"),
        (None, "<h@provider.example>\r\nBcc: victim@example.com"),
    ],
)
def test_bad_headers_are_refused_before_any_network(
    headers: dict[str, str] | None, message_id: str
) -> None:
    mailer = Mailer(_settings(_closed_port()))
    rendered = RenderedMail(subject="s", text="t\n", html=None)
    with pytest.raises(InvalidInput):
        mailer.send(
            to="janez@example.com", rendered=rendered, message_id=message_id, headers=headers
        )


def test_subject_with_line_breaks_is_flattened_when_sending(sink: SmtpSink) -> None:
    rendered = RenderedMail(subject="Hello\r\nBcc: victim@example.com", text="t\n", html=None)
    Mailer(_settings(sink.port)).send(
        to="janez@example.com", rendered=rendered, message_id="<f@provider.example>"
    )
    [msg] = read_maildir(sink.maildir)
    assert msg["Subject"] == "Hello Bcc: victim@example.com"
    assert msg["Bcc"] is None


def test_bad_mail_from_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        Mailer(_settings(25, mail_from="Provisioner"))


# --- login and STARTTLS ---------------------------------------------------------


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"relay-user",
        b"relay-secret",
    )
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535


@pytest.mark.parametrize(("password", "delivered"), [("relay-secret", True), ("wrong", False)])
def test_login(tmp_path: Path, password: str, delivered: bool) -> None:
    options = {"authenticator": _authenticator, "auth_require_tls": False}
    with SmtpSink(tmp_path / "Maildir", smtp_options=options) as auth_sink:
        mailer = Mailer(_settings(auth_sink.port, smtp_user="relay-user", smtp_password=password))
        rendered = RenderedMail(subject="s", text="t\n", html=None)
        if delivered:
            mailer.send(to="janez@example.com", rendered=rendered, message_id="<l@p.example>")
        else:
            with pytest.raises(ConfigurationError, match="535"):
                mailer.send(to="janez@example.com", rendered=rendered, message_id="<l@p.example>")
        assert len(auth_sink.messages()) == (1 if delivered else 0)


def test_starttls_not_offered_is_a_configuration_error(sink: SmtpSink) -> None:
    mailer = Mailer(_settings(sink.port, smtp_starttls=True))
    rendered = RenderedMail(subject="s", text="t\n", html=None)
    with pytest.raises(ConfigurationError, match="starttls"):
        mailer.send(to="janez@example.com", rendered=rendered, message_id="<t@p.example>")
    assert sink.messages() == []


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_starttls_with_login(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert_file, key_file)
    client_tls = ssl.create_default_context(cafile=str(cert_file))
    options = {
        "tls_context": server_tls,
        "require_starttls": True,
        "authenticator": _authenticator,
    }
    with SmtpSink(tmp_path / "Maildir", smtp_options=options) as tls_sink:
        settings = _settings(
            tls_sink.port, smtp_starttls=True, smtp_user="relay-user", smtp_password="relay-secret"
        )
        rendered = render_mail("invoice", "sl", _context("invoice"))
        Mailer(settings, tls_context=client_tls).send(
            to="janez@example.com", rendered=rendered, message_id="<tls@provider.example>"
        )
        [msg] = tls_sink.messages()
    assert msg["Subject"] == "Račun 2026-0042"

    # Without trusting the sink's certificate the relay is refused as misconfigured.
    with SmtpSink(tmp_path / "Maildir2", smtp_options=options) as tls_sink:
        settings = _settings(tls_sink.port, smtp_starttls=True)
        with pytest.raises(ConfigurationError, match="certificate"):
            Mailer(settings).send(
                to="janez@example.com", rendered=rendered, message_id="<tls@provider.example>"
            )


# --- the sink as a process (CI and demo scripts) -----------------------------------


def test_sink_process_runs_until_sigterm(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    port = _closed_port()
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "provisioner.devstack.smtp_sink",
            "--maildir",
            str(maildir),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"listening on 127.0.0.1:{port}")
        rendered = render_mail("payment_confirmation", "en", _context("payment_confirmation"))
        Mailer(_settings(port)).send(
            to="janez@example.com", rendered=rendered, message_id="<proc@provider.example>"
        )
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert stderr == ""
    [msg] = read_maildir(maildir)
    assert msg["Message-ID"] == "<proc@provider.example>"


# --- the clock's notices ------------------------------------------------------------
HOSTILE_SITE = '<script>alert("x")</script>.example'


def _notice(template: str, site: str = HOSTILE_SITE) -> dict[str, Any]:
    base = _context("proforma")
    service = {"name": site, "kind": "hosting", "expires_on": dt.date(2027, 3, 31)}
    if template == "renewal_reminder":
        return {**base, "service": service, "days": 7}
    if template == "service_shutdown":
        return {**base, "service": service, "deletion_on": dt.date(2027, 5, 30),
                "website_url": "https://www.fcb.si"}
    if template == "over_quota":
        return {"customer": base["customer"], "deadline": dt.date(2027, 4, 7),
                "account": {"domain": site, "plan": "Mega", "used_mb": 2100, "quota_mb": 2000,
                            "database_over": True, "database_max_mb": 1024}}
    raise AssertionError(template)


NOTICE_WORDING = {
    ("renewal_reminder", "en"): ["Reminder", "31 March 2027", "2026-0001", REFERENCE, "EUR 1,234.56"],
    ("renewal_reminder", "sl"): ["Opomnik", "31. 3. 2027", "2026-0001", REFERENCE, "1.234,56 EUR"],
    ("service_shutdown", "en"): ["switched off", "30 May 2027", "reactivation fee", REFERENCE],
    ("service_shutdown", "sl"): ["izklopljena", "30. 5. 2027", "ponovni vklop", REFERENCE],
    ("over_quota", "en"): ["2100 MB", "2000 MB", "7 April 2027", "no free backups", "1024 MB"],
    ("over_quota", "sl"): ["2100 MB", "2000 MB", "7. 4. 2027", "brezplačnih varnostnih kopij"],
}


def test_every_notice_template_is_tested() -> None:
    assert {t for t, _ in NOTICE_WORDING} == set(NOTICES)


@pytest.mark.parametrize(("template", "lang"), [(t, lang) for t in NOTICES for lang in LANGUAGES])
@pytest.mark.parametrize("part", ["text", "html"])
def test_notice_wording(template: str, lang: str, part: str) -> None:
    rendered = render_mail(template, lang, _notice(template))
    body = rendered.subject + "\n" + getattr(rendered, part)
    for words in NOTICE_WORDING[template, lang]:
        assert words in body, words


@pytest.mark.parametrize(("template", "lang"), [(t, lang) for t in NOTICES for lang in LANGUAGES])
def test_notice_escapes_the_site_name_and_keeps_headers_out(template: str, lang: str) -> None:
    rendered = render_mail(template, lang, _notice(template))
    assert rendered.html is not None and "<script" not in rendered.html
    assert "&lt;script&gt;" in rendered.html
    hostile = render_mail(template, lang, _notice(template, "a.example\r\nBcc: victim@example.com"))
    assert "\r" not in hostile.subject and "\n" not in hostile.subject


def test_shutdown_notice_refuses_a_non_http_link() -> None:
    context = {**_notice("service_shutdown"), "website_url": "javascript:alert(1)"}
    with pytest.raises(InvalidInput):
        render_mail("service_shutdown", "en", context)

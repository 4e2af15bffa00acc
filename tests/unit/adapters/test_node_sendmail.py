"""The node's sendmail (roles/hosting_node's hosting-sendmail): what it makes of the
sendmail(1) interface for a hosting account before it speaks SMTP to the node's Postfix
(which counts the message for the account: tests/e2e/test_mail_limits.py). Loaded in
this process as the node runs it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from provisioner.devstack.net import free_port
from tests.unit.adapters.node_code import ROLES, load_file

SENDMAIL = ROLES / "hosting_node" / "files" / "usr" / "local" / "sbin" / "hosting-sendmail"


@pytest.fixture(scope="module")
def sendmail() -> Any:
    return load_file("hosting_sendmail", SENDMAIL)


def test_phps_call_extracts_the_recipients_and_drops_bcc(sendmail: Any) -> None:
    mode, sender, rcpts, extract, stop_at_dot = sendmail.parse(["-t", "-i", "-f", "web@shop.si"])
    assert (mode, sender, rcpts, extract, stop_at_dot) == ("m", "web@shop.si", [], True, False)
    raw = (b"To: A <a@x.si>, b@y.si\nCc: c@z.si\nBcc: hidden@q.si,\n  other@q.si\n"
           b"Subject: hi\n\n.\nbody\n")
    message = sendmail.read_message(io.BytesIO(raw), stop_at_dot)
    found, sent = sendmail.extract_recipients(message)
    assert found == ["a@x.si", "b@y.si", "c@z.si", "hidden@q.si", "other@q.si"]
    assert b"hidden" not in sent and b"Bcc" not in sent
    assert sent == b"To: A <a@x.si>, b@y.si\r\nCc: c@z.si\r\nSubject: hi\r\n\r\n.\r\nbody\r\n"


def test_a_lone_dot_ends_the_message_unless_i_is_given(sendmail: Any) -> None:
    raw = b"Subject: x\n\nfirst\n.\nafter\n"
    assert sendmail.read_message(io.BytesIO(raw), True) == b"Subject: x\r\n\r\nfirst\r\n"
    assert sendmail.parse(["-oi", "a@x.si"])[2:] == (["a@x.si"], False, False)


@pytest.mark.parametrize("args", [["-bv", "a@x.si"], ["-bi"], ["-q"], ["-Z"]])
def test_other_modes_are_refused(sendmail: Any, args: list[str]) -> None:
    with pytest.raises(sendmail.Usage):
        sendmail.parse(args)


def test_smtp_on_standard_input_is_a_mode_of_its_own(sendmail: Any) -> None:
    assert sendmail.parse(["-bs"])[0] == "s"


def test_root_and_system_users_are_not_accounts(sendmail: Any) -> None:
    assert sendmail.is_account(0) is False
    assert sendmail.is_account(65534) is False  # nobody is in no "hosting" group


class Server:
    """An SMTP server that takes a message, or refuses it at end of data like the node's
    policy past the hourly limit."""

    def __init__(self) -> None:
        self.got: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if b"61st" in envelope.original_content:
            return "450 4.7.1 Hourly sending limit of 60 messages reached"
        self.got.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


@pytest.fixture
def smtp_server(sendmail: Any, monkeypatch: Any) -> Iterator[Server]:
    handler = Server()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        monkeypatch.setattr(sendmail, "SERVER", ("127.0.0.1", port))
        yield handler
    finally:
        controller.stop()


def test_a_refused_message_is_a_failure_never_tempfail(sendmail: Any, smtp_server: Server,
                                                       capsys: Any) -> None:
    assert sendmail.send("shop", None, ["a@x.si"], b"Subject: 60th\r\n\r\nx\r\n") == 0
    assert smtp_server.got == [("shop", ["a@x.si"], b"Subject: 60th\r\n\r\nx\r\n")]
    status = sendmail.send("shop", "web@shop.si", ["a@x.si"], b"Subject: 61st\r\n\r\nx\r\n")
    # PHP's mail() takes EX_TEMPFAIL (75) for "queued": nothing is queued here.
    assert status == sendmail.EX_UNAVAILABLE != 75
    assert "Hourly sending limit of 60" in capsys.readouterr().err
    assert len(smtp_server.got) == 1


def test_no_server_is_a_failure(sendmail: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(sendmail, "SERVER", ("127.0.0.1", free_port()))
    assert sendmail.send("shop", None, ["a@x.si"], b"x\r\n") == sendmail.EX_UNAVAILABLE

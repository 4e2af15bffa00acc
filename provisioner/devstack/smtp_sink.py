"""A local SMTP sink for the demo and the tests: every message lands in a Maildir.

Built on aiosmtpd's threaded ``Controller``. Messages are written with
``mailbox.Maildir`` (tmp/ then rename into new/), so another process can read them
at any time with ``read_maildir``.

    python -m provisioner.devstack.smtp_sink --maildir DIR --port 8025

runs it in the foreground until SIGTERM or SIGINT (CI and demo scripts). It prints
``listening on HOST:PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import mailbox
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from email.message import EmailMessage
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

SERVER_HOSTNAME = "smtp-sink.invalid"  # banner name; avoids a getfqdn() lookup
_BIND_ATTEMPTS = 5


class MaildirHandler:
    """aiosmtpd handler: store each message as received, plus Return-Path/Delivered-To."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = Path(maildir)
        # Maildir(create=True) only creates tmp/new/cur when the root is missing too.
        for sub in ("tmp", "new", "cur"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        self._mailbox = mailbox.Maildir(self.maildir, create=False)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        trace = [f"Return-Path: <{envelope.mail_from or ''}>"]
        trace += [f"Delivered-To: {rcpt}" for rcpt in envelope.rcpt_tos]
        data = "\n".join(trace).encode("utf-8") + b"\n" + content.replace(b"\r\n", b"\n")
        key = self._mailbox.add(data)
        return f"250 OK queued as {key}"


class _Sessions:
    """How many SMTP connections are open right now (a test's "nothing in flight")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.open += n


class _CountingSMTP(SMTP):
    def __init__(self, handler: Any, *, sessions: _Sessions, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._sessions = sessions

    def connection_made(self, transport: Any) -> None:
        self._sessions.add(1)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self._sessions.add(-1)


class _Controller(Controller):
    def __init__(self, handler: Any, *, sessions: _Sessions, **kwargs: Any) -> None:
        self._sessions = sessions
        super().__init__(handler, **kwargs)

    def factory(self) -> SMTP:
        return _CountingSMTP(self.handler, sessions=self._sessions, **self.SMTP_kwargs)


def _probe_port(host: str, port: int) -> int:
    """Bind ``host:port`` once (0: let the kernel choose) and return the port.

    aiosmtpd needs a concrete port, and when binding fails inside its thread it only
    reports so after ``ready_timeout``; probing first fails fast instead.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
        probe.bind((host, port))
        return int(probe.getsockname()[1])


class SmtpSink:
    """SMTP server on ``host:port`` (port 0: a free port, see ``.port``) into ``maildir``.

    ``handler`` replaces the Maildir handler (tests use it to answer 4xx/5xx);
    ``smtp_options`` are passed to aiosmtpd's ``SMTP`` (e.g. ``authenticator``).
    """

    def __init__(
        self,
        maildir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        handler: Any = None,
        smtp_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.maildir = Path(maildir)
        self.host = host
        self._requested_port = port
        self._port: int | None = port or None
        self.handler = handler if handler is not None else MaildirHandler(self.maildir)
        self._smtp_options = dict(smtp_options or {})
        self._controller: Controller | None = None
        self._sessions = _Sessions()

    @property
    def open_sessions(self) -> int:
        """SMTP connections open now: 0 means no message is on its way in."""
        return self._sessions.open

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("SmtpSink: no port yet; call start() first")
        return self._port

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        if self._controller is not None:
            raise RuntimeError("SmtpSink already running")
        attempts = 1 if self._requested_port else _BIND_ATTEMPTS
        for attempt in range(attempts):
            port = _probe_port(self.host, self._requested_port)
            controller = _Controller(
                self.handler,
                sessions=self._sessions,
                hostname=self.host,
                port=port,
                server_hostname=SERVER_HOSTNAME,
                ready_timeout=10.0,
                **self._smtp_options,
            )
            try:
                controller.start()
            except OSError:
                # The port was taken between probing and binding; the thread has
                # ended, only its event loop is left to close.
                controller.loop.close()
                if attempt == attempts - 1:
                    raise
                continue
            self._controller = controller
            self._port = port
            return

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def messages(self) -> list[EmailMessage]:
        return read_maildir(self.maildir)


def read_maildir(maildir: Path) -> list[EmailMessage]:
    """Every delivered message (new/ and cur/), oldest first; [] if there is no Maildir."""
    root = Path(maildir)
    files: list[Path] = []
    for sub in ("new", "cur"):
        folder = root / sub
        if folder.is_dir():
            files += [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
    return [
        cast(EmailMessage, email.message_from_bytes(p.read_bytes(), policy=email.policy.default))
        for p in files
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m provisioner.devstack.smtp_sink",
        description="Local SMTP sink: stores every received message in a Maildir.",
    )
    parser.add_argument("--maildir", type=Path, required=True, help="Maildir to deliver into")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8025, help="port; 0 picks a free one")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    sink = SmtpSink(args.maildir, host=args.host, port=args.port)
    try:
        sink.start()
    except OSError as exc:
        print(f"smtp sink: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"listening on {sink.host}:{sink.port}, maildir {sink.maildir}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

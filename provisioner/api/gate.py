"""The front door of the HTTP interface, before anything reads a request's body.

`Gate` is the outermost ASGI layer of the app (`create_app`). For every request it

* refuses a path that is not public without a valid bearer token, at once (401), so an
  unauthenticated caller never gets a body read, parsed or validated (a malformed body
  is a 401, not a 422; 60 MB are not read before the answer);
* caps every body at ``max_body_bytes``: a Content-Length above it is a 413 at once, and
  a body sent without one (chunked) is cut when it passes the cap.

Public are the signed webhooks, ``/health``, the customer's credentials link, and the API
docs when ``api_docs_public`` says so. Everything else, unknown paths included, needs
``Authorization: Bearer <token>``. The routes' own `deps.require_token` checks the token
again and names the caller for the audit log. The reverse proxy in front (nginx's
``client_max_body_size``) should cap bodies too, so that oversized uploads never reach
the API process at all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Collection

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_TOKEN_ROUTES = ("/credentials/", "/migration/", "/backup/")  # customer pages under a one-time token
UNAUTHORIZED = "a valid bearer token is required"


def bearer_actor(expected: str, authorization: str | None) -> str | None:
    """The caller as an audit actor (``api:`` and a hash prefix of its token) when
    ``authorization`` is ``Bearer <expected>`` (the scheme's case does not matter,
    RFC 7235); None for anything else, a bare token included, or when no token is set."""
    scheme, _, given = (authorization or "").partition(" ")
    if not expected or scheme.lower() != "bearer" or not given:
        return None
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return None
    return "api:" + hashlib.sha256(given.encode()).hexdigest()[:8]


class BodyCut(HTTPException):
    """Raised from `Gate`'s ``receive`` when a streamed body passes the cap. An
    HTTPException, so FastAPI's body parsing lets it through to its 413 answer."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is over the {limit}-byte limit")


def route_path(scope: Scope) -> str:
    """The path the app routes on (without the prefix it is mounted under)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):]
    return path


class Gate:
    def __init__(self, app: ASGIApp, *, token: str, max_body: int, public: Collection[str],
                 docs_public: bool) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.public = frozenset(public) | (DOCS_PATHS if docs_public else frozenset())

    def is_public(self, path: str) -> bool:
        return path in self.public or any(path.startswith(p) and "/" not in path[len(p):]
                                          for p in _TOKEN_ROUTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = declared = None
        for name, value in scope["headers"]:  # ASGI header names are lower case
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                declared = value.decode("latin-1")
        if not self.is_public(route_path(scope)) and bearer_actor(self.token, authorization) is None:
            await _answer(send, 401, {"detail": UNAUTHORIZED}, [(b"www-authenticate", b"Bearer")])
            return
        if declared is not None:
            if not declared.isdigit():
                await _answer(send, 400, {"error": "InvalidInput",
                                          "detail": "Content-Length is not a number"})
                return
            if int(declared) > self.max_body:
                await _answer(send, 413, {"error": "BodyTooLarge", "detail":
                                          f"body of {declared} bytes is over the {self.max_body}-byte limit"})
                return
        received = 0
        started = False

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyCut(self.max_body)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, watched_send)
        except BodyCut as exc:  # not turned into a response on the way out
            if started:
                raise
            await _answer(send, 413, {"error": "BodyTooLarge", "detail": exc.detail})


async def _answer(send: Send, status: int, payload: dict[str, str],
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *(extra or [])]})
    await send({"type": "http.response.body", "body": data})


# -- the access log ------------------------------------------------------------------------
_TOKEN_IN_PATH = re.compile(r"(/(?:credentials|migration|backup)/)[^/?#\s\"]+")


class RedactCredentialTokens(logging.Filter):
    """Takes the one-time token out of ``/credentials/<token>`` in uvicorn's access log
    (its record's arguments are client, method, path, HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
                isinstance(a, str) and any(p in a for p in _TOKEN_ROUTES) for a in record.args):
            record.args = tuple(_TOKEN_IN_PATH.sub(r"\1<redacted>", a) if isinstance(a, str) else a
                                for a in record.args)
        elif any(p in str(record.msg) for p in _TOKEN_ROUTES):
            record.msg = _TOKEN_IN_PATH.sub(r"\1<redacted>", str(record.msg))
        return True


_REDACTION = RedactCredentialTokens()


def redact_access_log() -> None:
    """Install the filter on ``uvicorn.access`` (once per process)."""
    logger = logging.getLogger("uvicorn.access")
    if _REDACTION not in logger.filters:
        logger.addFilter(_REDACTION)

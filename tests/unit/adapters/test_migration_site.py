"""The site check of the migration's verify (`adapters.migration_copy.site`): the page's
status and ``<title>`` at an address with the site's name as the Host header (a local
HTTP server answers by Host, as a node's nginx does)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from provisioner.adapters.migration_copy.site import fetch_page, title_of
from provisioner.errors import InvalidInput


class _ByHost(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        host = self.headers.get("Host", "")
        if host == "shop.si":
            body = "<html><head><TITLE>\n  Stara &amp; nova  trgovina čšž </TITLE></head></html>".encode()
            self.send_response(200)
        else:
            body = b"<title>default</title>"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ByHost)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_title_is_decoded_and_its_whitespace_collapsed() -> None:
    assert title_of(b"<title a='b'>A\n  &lt;B&gt;</title>") == "A <B>"
    assert title_of(b"<html>no title</html>") is None


def test_the_page_is_asked_for_with_the_sites_host_header(server: int) -> None:
    page = fetch_page("127.0.0.1", "shop.si", port=server)
    assert (page.status, page.title, page.error) == (200, "Stara & nova trgovina čšž", None)
    other = fetch_page("127.0.0.1", "other.si", port=server)
    assert (other.status, other.title) == (404, "default")


def test_no_answer_is_a_page_without_a_status() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        page = fetch_page("127.0.0.1", "shop.si", port=port, timeout_s=2)
    assert page.status is None and page.title is None and page.error


@pytest.mark.parametrize("address,host", [("127.0.0.1", "shop.si\r\nX: y"), ("127.0.0.1", "shop.si\n"),
                                          ("a b", "shop.si")])
def test_a_bad_address_or_host_is_refused(address: str, host: str) -> None:
    with pytest.raises(InvalidInput):
        fetch_page(address, host)

"""The pure parts of the mailbox copy's node program (``migration_copy/node/mail.py``),
loaded by path as the node runs it: folder names (modified UTF-7, separators, the
personal namespace), imaplib's FETCH data in the orders servers send it, and which
messages are copied, skipped as already here, or named as over the limit."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

NODE = Path(__file__).resolve().parents[3] / "provisioner" / "adapters" / "migration_copy" / "node"
NAME = "migration_node_mail"


@pytest.fixture(scope="module")
def mail() -> Iterator[Any]:
    """The program as the node loads it (it puts its own directory on sys.path for
    ``common``); sys.path and sys.modules are as before afterwards."""
    saved_path, saved_common = list(sys.path), sys.modules.get("common")
    spec = importlib.util.spec_from_file_location(NAME, NODE / "mail.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module  # its dataclass looks itself up there, as __main__ on the node
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(NAME, None)
        sys.path[:] = saved_path
        if saved_common is None:
            sys.modules.pop("common", None)
        else:
            sys.modules["common"] = saved_common


def test_folder_names_are_decoded_from_modified_utf7(mail: Any) -> None:
    assert mail.decode_mutf7("Ra&AQ0-uni 2024") == "Računi 2024"
    assert mail.decode_mutf7("Tom &- Jerry") == "Tom & Jerry"
    assert mail.decode_mutf7("&ZeVnLIqe-") == "日本語"
    assert mail.decode_mutf7("INBOX") == "INBOX"


def test_list_lines_give_name_separator_and_whether_selectable(mail: Any) -> None:
    data = [b'(\\HasNoChildren) "." INBOX', b'(\\HasNoChildren) "/" "Ra&AQ0-uni 2024"',
            b'(\\Noselect \\HasChildren) "." "Arhiv"', (b'(\\HasNoChildren) "." {9}', b'a "b" \\ c'),
            b'(\\HasNoChildren) NIL "Flat"', b'(\\HasNoChildren) "\\\\" "A\\\\B"']
    assert mail.parse_list(data) == [
        ("INBOX", ".", True), ("Ra&AQ0-uni 2024", "/", True), ("Arhiv", ".", False),
        ('a "b" \\ c', ".", True), ("Flat", None, True), ("A\\B", "\\", True)]
    assert mail.parse_namespace([b'(("INBOX." ".")) NIL NIL']) == "INBOX."
    assert mail.parse_namespace([b'(("" ".")) NIL NIL']) == ""


@pytest.mark.parametrize(("raw", "delim", "prefix", "expected"), [
    ("inbox", ".", "", ("INBOX", False)),
    ("Arhiv/2023", "/", "", ("Arhiv.2023", False)),
    ("INBOX.Sent", ".", "INBOX.", ("Sent", False)),
    ("INBOX/Sub", "/", "", ("INBOX.Sub", False)),
    ("v1.2/notes", "/", "", ("v1_2.notes", True)),  # our separator inside a level
    ("a/b.c", ".", "", ("a_b.c", True)),  # a '/' a Maildir cannot hold
    ("Ra&AQ0-uni 2024", "/", "", ("Ra&AQ0-uni 2024", False)),  # modified UTF-7 kept as sent
    ("flat", None, "", ("flat", False)),
])
def test_old_folder_names_map_to_ours(mail: Any, raw: str, delim: str | None, prefix: str,
                                      expected: tuple[str, bool]) -> None:
    assert mail.target_name(raw, delim, prefix, ".") == expected


def test_fetch_data_is_read_whatever_the_order_of_its_items(mail: Any) -> None:
    header = b"Message-ID: <a@x>\r\nSubject: =?utf-8?q?Ra=C4=8Dun?=\r\n\r\n"
    data = [
        (b'1 (UID 7 FLAGS (\\Seen \\Recent $Label1) INTERNALDATE "05-Mar-2024 10:30:00 +0000" '
         b'RFC822.SIZE 120 BODY[HEADER.FIELDS (MESSAGE-ID DATE FROM SUBJECT)] {48}', header),
        b")",
        (b"2 (BODY[HEADER.FIELDS (MESSAGE-ID DATE FROM SUBJECT)] {2}", b"\r\n"),  # UID after the literal
        b' UID 9 RFC822.SIZE 33 FLAGS () INTERNALDATE " 1-Jan-2020 00:00:00 +0100")',
        b"3 (UID 10 RFC822.SIZE 5 FLAGS (\\Flagged) BODY[HEADER.FIELDS (MESSAGE-ID)] \"\")",
        b"4 (FLAGS (\\Deleted))",  # an unsolicited flag change: not a listed message
    ]
    msgs = mail.parse_messages(data)
    assert [(m.uid, m.size, m.flags, m.date) for m in msgs] == [
        (7, 120, ["\\Seen", "$Label1"], "05-Mar-2024 10:30:00 +0000"),
        (9, 33, [], " 1-Jan-2020 00:00:00 +0100"),
        (10, 5, ["\\Flagged"], "")]
    assert (msgs[0].message_id, msgs[0].subject, msgs[0].key) == ("<a@x>", "Račun", ("<a@x>", 120))
    # without a Message-ID: a hash of Date/From/Subject, the same for the same headers
    assert msgs[1].key[0].startswith("h:") and msgs[1].key == msgs[2].key[:1] + (33,)


def test_what_is_copied_already_here_or_over_the_limit(mail: Any) -> None:
    def msg(uid: int, key: str, size: int) -> Any:
        return mail.Message(uid, size, key=(key, size))

    source = [msg(1, "<a>", 10), msg(2, "<a>", 10), msg(3, "<b>", 10), msg(4, "<c>", 500), msg(5, "<b>", 11)]
    copy, over, there = mail.to_copy(source, Counter({("<a>", 10): 1, ("<b>", 10): 1}), limit=100)
    # one of the two identical <a> is here already, the other is copied (a multiset)
    assert [m.uid for m in copy] == [2, 5]
    assert [m.uid for m in over] == [4] and there == 2
    copy, _, there = mail.to_copy(source, Counter(), limit=100)
    assert [m.uid for m in copy] == [1, 2, 3, 5] and there == 0


def test_batches_bound_the_bytes_of_one_fetch(mail: Any) -> None:
    msgs = [mail.Message(i, mail.BATCH_BYTES // 3) for i in range(7)]
    assert [len(b) for b in mail._batches(msgs)] == [3, 3, 1]
    assert [len(b) for b in mail._batches([mail.Message(1, mail.BATCH_BYTES * 2)])] == [1]


def test_shown_names_escape_control_characters(mail: Any) -> None:
    assert mail.shown("a\nb\x1b[31m") == "a\\nb\\x1b[31m"
    assert mail.quote('a "b" \\c') == '"a \\"b\\" \\\\c"'


def test_subjects_in_raw_utf8_or_encoded_words_read_the_same(mail: Any) -> None:
    raw = mail.header_key(b"Subject: Ra\xc4\x8dun 1\r\nMessage-ID: <m@x>\r\n\r\n", 10)
    encoded = mail.header_key(b"Subject: =?utf-8?b?UmHEjXVuIDE=?=\r\n\r\n", 10)
    assert raw[1] == encoded[1] == "Račun 1"
    assert raw[3] == ("<m@x>", 10) and encoded[3][0].startswith("h:")


def test_the_deadline_timer_interrupts_a_blocked_read(mail: Any) -> None:
    """A source that stops sending mid-message cannot hold the part past its deadline."""
    read_fd, write_fd = os.pipe()
    previous = signal.getsignal(signal.SIGALRM)
    try:
        mail._arm(0.05)
        with pytest.raises(mail.OutOfTime):
            os.read(read_fd, 1)  # nothing ever comes
    finally:
        mail._disarm()
        signal.signal(signal.SIGALRM, previous)
        os.close(read_fd)
        os.close(write_fd)


def test_a_batch_is_one_multiappend_with_non_synchronising_literals(mail: Any) -> None:
    ours = object.__new__(mail.Ours)  # the wire format only: no Dovecot process
    ours.tagpre, ours.tagnum, ours.tagged_commands, ours._encoding = b"TAG", 7, {}, "ascii"
    sent: list[bytes] = []
    ours.send = sent.append
    ours._command_complete = lambda name, tag: ("OK", [tag])
    msgs = [mail.Message(1, 5, ["\\Seen", "$Work"], "05-Mar-2024 10:30:00 +0000", body=b"a\nb"),
            mail.Message(2, 3, [], "", body=b"xyz")]
    assert ours.append_many("Ra&AQ0-uni 2024", msgs) == ("OK", [b"TAG7"])
    assert sent == [b'TAG7 APPEND "Ra&AQ0-uni 2024" (\\Seen $Work) "05-Mar-2024 10:30:00 +0000" {4+}\r\n'
                    b"a\r\nb {3+}\r\nxyz\r\n"]


@pytest.mark.parametrize(("address", "expected"), [
    ("ana@example.si", ("ana@example_si", True)),  # '.' is our hierarchy separator
    ("ana+racuni@example-shop.si", ("ana+racuni@example-shop_si", True)),
    ("ana_b@x", ("ana_b@x", False)),
    ("../a/b@x", ("___a_b@x", True)),  # a separator of either kind, a path climb
    ("~a%*&-\nINBOX", ("_a___-_INBOX", True)),  # Dovecot's '~', LIST wildcards, mUTF-7 '&', control
    ("Ana ž@x", ("Ana__@x", True)),  # not ASCII: not sent as modified UTF-7, replaced
    ("inbox", ("inbox_", True)),  # a login named like our INBOX lands beside it, not in it
])
def test_the_folder_prefix_is_one_safe_level(mail: Any, address: str, expected: tuple[str, bool]) -> None:
    assert mail.prefix_level(address) == expected
    assert len(mail.prefix_level("a" * 300)[0]) == mail.PREFIX_MAX


class _Listing:
    """An old mailbox's NAMESPACE and LIST answers (only what `source_folders` asks)."""

    capabilities = ("IMAP4REV1", "NAMESPACE")

    def namespace(self) -> tuple[str, list[bytes]]:
        return "OK", [b'(("INBOX." ".")) NIL NIL']

    def list(self) -> tuple[str, list[bytes]]:
        return "OK", [b'(\\HasNoChildren) "." INBOX', b'(\\HasNoChildren) "." "INBOX.Ra&AQ0-uni 2024"',
                      b'(\\HasNoChildren) "." "INBOX.a/b"', b'(\\Noselect) "." "INBOX.Arhiv"']


def test_a_prefixed_mailbox_keeps_its_folders_under_the_prefix_inbox_included(mail: Any) -> None:
    top, _ = mail.prefix_level("ana@example.si")
    assert mail.source_folders(_Listing(), ".", top) == [
        ("INBOX", "ana@example_si.INBOX", "ana@example_si.INBOX", False),
        ("INBOX.Ra&AQ0-uni 2024", "ana@example_si.Ra&AQ0-uni 2024", "ana@example_si.Računi 2024", False),
        ("INBOX.a/b", "ana@example_si.a_b", "ana@example_si.a_b", True)]
    # without a prefix (mailbox1): the root, INBOX first, as before
    assert [f[1] for f in mail.source_folders(_Listing(), ".")] == ["INBOX", "Ra&AQ0-uni 2024", "a_b"]
    # a hostile prefix cannot add a level or climb out: one level under the root
    hostile, renamed = mail.prefix_level("x.y/../INBOX@z")
    assert renamed and mail.under(hostile, "INBOX", ".").split(".") == ["x_y____INBOX@z", "INBOX"]

"""The old provider adapter's parsing (issue 13 item 3): IMAP LIST lines (quoted, literal,
\\Noselect), whether a symlink's target leaves the tree, and errors that never carry a
secret. The I/O itself runs against a real old host in tests/e2e/test_migration_survey.py."""

from __future__ import annotations

import pytest

from provisioner.adapters.migration_source import _dead, _folder_names, _outside


def test_imap_list_lines_give_the_selectable_folders_as_the_server_names_them() -> None:
    listing = [
        b'(\\HasNoChildren) "." INBOX',
        b'(\\HasNoChildren \\Sent) "." "Sent Items"',
        b'(\\Noselect \\HasChildren) "." Archive',
        b'(\\HasNoChildren) "/" "Ra&AQ0-uni 2024"',
        b'(\\HasNoChildren) NIL "say \\"hi\\""',
        (b'(\\HasNoChildren) "." {11}', b"Odd\r\nFolder"),
        (b'(\\NonExistent) "." {4}', b"Gone"),
    ]
    assert _folder_names(listing) == ["INBOX", "Sent Items", "Ra&AQ0-uni 2024", 'say "hi"', "Odd\r\nFolder"]


@pytest.mark.parametrize(("link_dir", "target", "outside"), [
    ("/home/old/www", "/etc", True),
    ("/home/old/www", "../../../etc/passwd", True),
    ("/home/old/www/img", "../index.php", False),
    ("/home/old/www", "img/logo.png", False),
    ("/home/old/www", "/home/old/www/img", False),
    ("/home/old/www", "/home/old/www2/x", True),  # a sibling that shares the prefix
])
def test_a_symlink_is_outside_when_its_target_leaves_the_root(link_dir: str, target: str,
                                                              outside: bool) -> None:
    assert _outside("/home/old/www", link_dir, target) is outside


def test_an_unreachable_source_is_transient_and_never_shows_the_secret() -> None:
    err = _dead("database", "shop@db.example.net:3306/shop", OSError("auth with s3cret-Pass failed"),
                ["s3cret-Pass"])
    assert "s3cret-Pass" not in str(err) and "***" in str(err)
    assert "the old provider's database (shop@db.example.net:3306/shop) did not answer" in str(err)

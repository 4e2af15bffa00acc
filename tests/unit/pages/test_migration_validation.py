"""The migration intake's validation (`migration.intake`): every field strictly, hostile
input refused with a code per field, secrets never in an error."""

from __future__ import annotations

import pytest

from provisioner.pipeline.capabilities.migration.intake import ERROR_TEXT, SourceInvalid, from_json, validate

GOOD = {
    "files_protocol": "sftp",
    "files_host": "old.example.net",
    "files_user": "olduser",
    "files_password": "p@ss w0rd \"'<>;$(x)",
    "files_path": "/home/old/public_html",
}
KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def _errors(form: dict[str, object]) -> dict[str, str]:
    with pytest.raises(SourceInvalid) as bad:
        validate(form)
    return bad.value.errors


def test_a_good_source_is_kept_as_given_passwords_byte_for_byte() -> None:
    src = validate({**GOOD, "files_host": "Old.Example.NET."})
    assert src.values["files_host"] == "old.example.net" and src.values["files_port"] == 22
    assert src.values["files_password"] == GOOD["files_password"]
    assert src.sections() == ["files"]
    assert "files_password" not in str(src.summary()) and GOOD["files_password"] not in str(src.summary())


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "127.0.0.1",
        "::1",
        "0.0.0.0",
        "169.254.169.254",
        "224.0.0.1",
        "fe80::1",
        "a..b",
        "-bad.example",
        "bad-.example",
        "x" * 64 + ".example",
        "host",
        "exa mple.com",
        "example.com/evil",
        "example.com:22",
        "ex\nample.com",
        "evil.localhost",
        "1.2.3",
        "$(reboot).example",
        "a.b;rm -rf /",
        "[::1]",
    ],
)
def test_hostile_or_unusable_hosts_are_refused(host: str) -> None:
    assert _errors({**GOOD, "files_host": host})["files_host"] in ("host", "control")


@pytest.mark.parametrize(
    ("port", "code"),
    [
        ("0", "port"),
        ("65536", "port"),
        ("-1", "port"),
        ("22 ", None),
        ("2e3", "port"),
        ("０２２", "port"),
        ("999999", "port"),
    ],
)
def test_ports(port: str, code: str | None) -> None:
    form = {**GOOD, "files_port": port}
    if code is None:
        assert validate(form).values["files_port"] == 22
    else:
        assert _errors(form)["files_port"] == code


@pytest.mark.parametrize(
    "path", ["../etc", "public_html/../../x", "a\nb", "a\x00b", "$(id)", "a;b", "a`b`", "x" * 300]
)
def test_hostile_paths_are_refused(path: str) -> None:
    assert _errors({**GOOD, "files_path": path})["files_path"] in ("path", "control", "too_long")


@pytest.mark.parametrize("user", ["a b", "a\nb", "-oProxyCommand=x", "a;b", "a$b", "x" * 129, "ü"])
def test_hostile_user_names_are_refused(user: str) -> None:
    code = _errors({**GOOD, "files_user": user})["files_user"]
    assert code in ("user", "too_long")


def test_control_characters_in_a_password_are_refused_and_never_echoed() -> None:
    secret = "secret-\r\nQUIT"
    with pytest.raises(SourceInvalid) as bad:
        validate({**GOOD, "files_password": secret})
    assert bad.value.errors == {"files_password": "control"}
    assert secret not in str(bad.value) and "secret-" not in str(bad.value)


def test_plain_ftp_needs_its_flag_and_is_reported() -> None:
    form = {**GOOD, "files_protocol": "ftp"}
    assert _errors(form) == {"files_protocol": "plain_ftp"}
    src = validate({**form, "allow_plain_ftp": "1", "skip_cert_verify": "on"})
    assert src.values["files_port"] == 21 and src.allow_plain_ftp and src.skip_cert_verify
    assert len(src.summary()["warnings"]) == 2


def test_keys_only_for_sftp_and_only_private_keys_in_pem_form() -> None:
    assert validate({**GOOD, "files_password": "", "files_key": KEY}).summary()["files"]["auth"] == "key"
    assert _errors({**GOOD, "files_protocol": "ftps", "files_key": KEY}) == {"files_key": "key_sftp"}
    assert _errors({**GOOD, "files_key": "ssh-rsa AAAAB3Nza... me@host"}) == {"files_key": "key"}
    public = KEY.replace("OPENSSH PRIVATE KEY", "PUBLIC KEY")
    assert _errors({**GOOD, "files_key": public}) == {"files_key": "key"}
    assert _errors({**GOOD, "files_password": "", "files_key": ""}) == {"files_password": "secret"}


def test_the_database_through_ssh_needs_sftp_and_direct_needs_a_host() -> None:
    db = {"db_name": "shop", "db_user": "shop", "db_password": "x"}
    assert validate({**GOOD, **db, "db_via": "ssh"}).values["db_host"] == "localhost"
    assert _errors({**GOOD, **db, "files_protocol": "ftps", "db_via": "ssh"})["db_via"] == "ssh_needs_sftp"
    assert _errors({**db, "db_via": "mysql"}) == {"db_host": "required"}
    assert _errors({**db, "db_via": "mysql", "db_host": "localhost"}) == {"db_host": "host"}
    assert (
        _errors({**db, "db_via": "mysql", "db_host": "db.example.net", "db_name": "x;drop"})["db_name"]
        == "db_name"
    )
    assert validate({**db, "db_via": "mysql", "db_host": "203.0.113.5"}).values["db_port"] == 3306


def test_up_to_two_mailboxes_and_every_error_at_once() -> None:
    boxes = {
        f"mail{i}_{k}": v
        for i in (1, 2)
        for k, v in (("host", "imap.example.net"), ("user", f"u{i}@old.si"), ("password", "x"))
    }
    assert validate(boxes).sections() == ["mailbox1", "mailbox2"]
    errors = _errors(
        {
            "mail1_host": "imap.example.net",
            "mail1_port": "99999",
            "mail2_user": "bad user",
            "mail3_host": "imap.example.net",
        }
    )
    assert errors == {
        "mail1_port": "port",
        "mail1_user": "required",
        "mail1_password": "secret",
        "mail2_host": "required",
        "mail2_user": "user",
        "mail2_password": "secret",
        "mail3_host": "unknown",
    }
    assert _errors({}) == {"files_host": "nothing"}


@pytest.mark.parametrize(
    "data",
    [
        [],
        "x",
        {"files": {"host": "a.example"}, "extra": 1},
        {"mailboxes": [{}, {}, {}]},
        {"files": "sftp://x"},
    ],
)
def test_a_json_file_of_another_shape_is_refused(data: object) -> None:
    with pytest.raises(SourceInvalid):
        validate(from_json(data))


@pytest.mark.parametrize("value", [["a"], {"a": 1}, 1.5, True])
def test_values_of_the_wrong_type_are_refused(value: object) -> None:
    assert _errors({**GOOD, "files_host": value}) == {"files_host": "choice"}


def test_every_error_code_has_a_text_in_both_languages() -> None:
    assert set(ERROR_TEXT["sl"]) == set(ERROR_TEXT["en"])

"""The migration survey's pure core (issue 13 item 3): the collation mapping (also from a
MySQL 8 dump's header), IMAP folder names, hostile names, the projection and the verdict
against the caps."""

from __future__ import annotations

import json

import pytest

from provisioner.domain.migration_survey import (
    DatabaseMeasure,
    FilesMeasure,
    FolderMeasure,
    Limits,
    MailboxMeasure,
    Measures,
    Sample,
    build_report,
    collation_map,
    decode_imap_utf7,
    dump_header_collations,
    encode_imap_utf7,
    is_hostile,
    map_collation,
    project,
    shown_name,
)

MIB = 1024 * 1024
LIMITS = Limits(cap_bytes=2048 * MIB, cap_seconds=3600.0, max_message_bytes=50 * MIB,
                sample_bytes=4 * MIB, node_php="8.2", node_mariadb="10.11")

# The head of a dump from MySQL 8.0 (mysqldump 8.0.36), as customers bring them.
MYSQL8_DUMP = """-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)
/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!50503 SET NAMES utf8mb4 */;
/*!40103 SET TIME_ZONE='+00:00' */;
DROP TABLE IF EXISTS `posts`;
/*!50503 SET character_set_client = utf8mb4 */;
CREATE TABLE `posts` (
  `id` int NOT NULL AUTO_INCREMENT,
  `title` varchar(200) COLLATE utf8mb4_0900_ai_ci NOT NULL,
  `slug` varchar(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_as_cs NOT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_ai_ci;
CREATE TABLE `imena` (`ime` varchar(50)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_sl_0900_ai_ci;
CREATE TABLE `stara` (`v` varchar(50)) ENGINE=MyISAM DEFAULT CHARSET=latin1;
/*!50003 SET collation_connection  = utf8mb4_0900_ai_ci */ ;
"""


@pytest.mark.parametrize(("name", "mapped"), [
    ("utf8mb4_0900_ai_ci", "utf8mb4_unicode_520_ci"),
    ("UTF8MB4_0900_AI_CI", "utf8mb4_unicode_520_ci"),
    ("utf8mb4_0900_as_ci", "utf8mb4_unicode_520_ci"),
    ("utf8mb4_0900_as_cs", "utf8mb4_bin"),
    ("utf8mb4_0900_bin", "utf8mb4_bin"),
    ("utf8mb4_sl_0900_ai_ci", "utf8mb4_slovenian_ci"),
    ("utf8mb4_de_pb_0900_ai_ci", "utf8mb4_german2_ci"),
    ("utf8mb4_ja_0900_as_cs", "utf8mb4_bin"),
    ("utf8mb4_zh_0900_as_cs", "utf8mb4_bin"),
    ("utf8mb4_xx_0900_ai_ci", "utf8mb4_unicode_520_ci"),  # a language MariaDB has no collation for
    ("utf8mb4_general_ci", None),
    ("utf8mb4_unicode_ci", None),
    ("utf8mb3_general_ci", None),
    ("latin1_swedish_ci", None),
])
def test_collations_mariadb_cannot_load_map_explicitly_and_the_rest_stay(name: str,
                                                                        mapped: str | None) -> None:
    assert map_collation(name) == mapped


def test_a_mysql8_dump_header_names_every_collation_to_map() -> None:
    charsets, collations = dump_header_collations(MYSQL8_DUMP)
    assert {"utf8mb4", "latin1"} <= charsets
    assert {"utf8mb4_0900_ai_ci", "utf8mb4_0900_as_cs", "utf8mb4_sl_0900_ai_ci"} <= collations
    assert collation_map(collations) == {
        "utf8mb4_0900_ai_ci": "utf8mb4_unicode_520_ci",
        "utf8mb4_0900_as_cs": "utf8mb4_bin",
        "utf8mb4_sl_0900_ai_ci": "utf8mb4_slovenian_ci",
    }


@pytest.mark.parametrize(("raw", "decoded"), [
    ("INBOX", "INBOX"),
    ("Ra&AQ0-uni", "Računi"),
    ("&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-", "Отправленные"),
    ("Tom &- Jerry", "Tom & Jerry"),
    ("&ZeVnLIqe-", "日本語"),
    ("Archiv/2024/&AWEBfg-", "Archiv/2024/šž"),
])
def test_imap_folder_names_in_modified_utf7_are_decoded_and_encoded_back(raw: str, decoded: str) -> None:
    assert decode_imap_utf7(raw) == decoded
    assert encode_imap_utf7(decoded) == raw


def test_a_malformed_folder_name_is_kept_as_it_is() -> None:
    assert decode_imap_utf7("Broken&AQ0") == "Broken&AQ0"
    assert decode_imap_utf7("Bad&!!!-") == "Bad&!!!-"


@pytest.mark.parametrize("name", ["a\nb", "$(rm -rf ~)", "x;y", "-rf", "..", "back`tick`", "tab\there",
                                  "bad\udcff"])
def test_names_a_shell_or_a_path_must_not_see_raw_are_hostile(name: str) -> None:
    assert is_hostile(name)


@pytest.mark.parametrize("name", ["index.php", ".htaccess", "Računi 2024.pdf", "a-b_c.d", "wp-content"])
def test_ordinary_names_are_not_hostile(name: str) -> None:
    assert not is_hostile(name)


def test_a_name_is_shown_with_its_control_characters_escaped() -> None:
    assert shown_name("a\nb\x1b[31m") == "a\\nb\\x1b[31m"
    assert "\n" not in json.dumps(shown_name("x\ny"))[1:-1].replace("\\\\", "")


def test_the_projection_is_bytes_at_the_sampled_rate_plus_the_items_overhead() -> None:
    part = project("files", 100 * MIB, 1000, Sample(10 * MIB, 2.0, 0.01))
    assert part.rate == pytest.approx(5 * MIB)
    assert part.seconds == pytest.approx(20.0 + 10.0)
    assert project("empty", 0, 0, Sample(0, 0.0)).seconds == 0.0


def _files(size: int, *, php: str | None = "8.1", outside: bool = True) -> FilesMeasure:
    return FilesMeasure(
        protocol="sftp", root="/home/old/public_html", bytes=size, inodes=12, files=8, dirs=3, dotfiles=2,
        symlinks=[{"path": "escape", "target": "/etc", "outside": outside}], specials=["fifo"],
        hostile=["bad\\nname"], unreadable=[], largest=size, php_version=php,
        sample=Sample(4 * MIB, 0.5, 0.001), counts={"hostile": 1})


def _db(**kw: object) -> DatabaseMeasure:
    values: dict[str, object] = {
        "via": "ssh", "name": "shop", "server": "MySQL", "version": "8.0.36", "bytes": 300 * MIB,
        "tables": 40, "engines": {"InnoDB": 39, "MyISAM": 1}, "charsets": ["latin1", "utf8mb4"],
        "collations": ["latin1_swedish_ci", "utf8mb4_0900_ai_ci"],
        "collation_map": {"utf8mb4_0900_ai_ci": "utf8mb4_unicode_520_ci"}, "sample": Sample(4 * MIB, 0.4)}
    values.update(kw)
    return DatabaseMeasure(**values)  # type: ignore[arg-type]


def _box(index: int, messages: int, size: int, over: list[dict[str, object]] | None = None) -> MailboxMeasure:
    folder = FolderMeasure("Računi", "Ra&AQ0-uni", messages, size, size // max(messages, 1))
    return MailboxMeasure(index, f"user{index}@shop.si", "imap.example.net", [folder], messages, size,
                          folder.largest, list(over or []), Sample(2 * MIB, 0.5, 0.02))


def test_a_source_within_the_caps_fits_and_lists_what_is_not_copied() -> None:
    big = {"folder": "INBOX", "uid": 7, "bytes": 60 * MIB, "subject": "video"}
    boxes = [_box(1, 300, 80 * MIB, [big]), _box(2, 10, MIB)]
    report = build_report(Measures(_files(500 * MIB), _db(), boxes, []), LIMITS, survey_seconds=3.0)
    assert report.fits and report.blocking == []
    assert report.total_bytes == 500 * MIB + 300 * MIB + 80 * MIB + MIB
    # the 60 MB message is named (folder, uid, subject), never skipped silently
    assert any("message 7 in INBOX" in e and "'video'" in e for e in report.excluded)
    assert any("symlink escape -> /etc" in e for e in report.excluded)
    assert any("special file fifo" in e for e in report.excluded)
    assert "database: collation utf8mb4_0900_ai_ci is mapped to utf8mb4_unicode_520_ci" in report.warnings
    assert report.projected_seconds == pytest.approx(sum(p.seconds for p in report.parts) + 3.0, abs=0.01)
    data = report.to_json()
    assert json.loads(json.dumps(data))["mailboxes"][0]["folders"][0]["name"] == "Računi"


def test_a_source_over_the_data_cap_does_not_fit_and_says_its_sizes() -> None:
    report = build_report(Measures(_files(1900 * MIB), _db(), [], []), LIMITS)
    assert not report.fits
    assert report.blocking[0].startswith(
        "data: 2.1 GB is over the 2.0 GB cap (files 1.9 GB, database 300.0 MB)")


def test_a_source_that_cannot_be_copied_within_the_hour_does_not_fit() -> None:
    slow = Sample(100 * 1024, 1.0, 0.5)  # 100 kB/s, half a second a file
    files = FilesMeasure("ftps", "/", 300 * MIB, 5000, 5000, 0, 0, [], [], [], [], MIB, None, slow)
    report = build_report(Measures(files, None, [], []), LIMITS)
    assert not report.fits
    assert report.blocking[0].startswith("time: the copy is projected to take ")
    assert report.projected_seconds > LIMITS.cap_seconds


@pytest.mark.parametrize(("db", "reason"), [
    ({"engines": {"InnoDB": 3, "ROCKSDB": 1}},
     "database: table engine(s) ROCKSDB are not supported by MariaDB"),
    ({"server": "MariaDB", "version": "11.8.2"}, "database: MariaDB 11.8.2 is newer than ours (10.11)"),
    ({"version": "9.1.0"}, "database: MySQL 9.1.0 is newer than MySQL 8, which we import"),
])
def test_incompatible_database_software_does_not_fit(db: dict[str, object], reason: str) -> None:
    report = build_report(Measures(None, _db(**db), [], []), LIMITS)
    assert not report.fits and reason in report.blocking


def test_the_site_php_is_compared_with_the_nodes() -> None:
    newer = build_report(Measures(_files(MIB, php="8.4.1"), None, [], []), LIMITS)
    assert "site: PHP 8.4.1 is newer than ours (8.2)" in newer.blocking
    older = build_report(Measures(_files(MIB, php="7.4.33"), None, [], []), LIMITS)
    assert older.fits and any(w.startswith("site: PHP 7.4.33 on the old host") for w in older.warnings)
    unknown = build_report(Measures(_files(MIB, php=None), None, [], []), LIMITS)
    assert unknown.fits and unknown.compatibility["site_php"] is None

"""The database part's statement splitting and DDL rewriting (issue 13), on the node
program itself (loaded by path, as the node runs it): every mapping of the survey's
collation map applied to the clauses that name collations, string literals and data rows
never touched, latin1 kept, definers stripped, MySQL 8-only comments dropped, a collation
nobody maps refused by name, a stream that is not a dump refused before any statement."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from typing import Any

import pytest

from provisioner.domain.migration_survey import _LANG, collation_map

NODE = Path(__file__).resolve().parents[3] / "provisioner" / "adapters" / "migration_copy" / "node"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("migration_node_database", NODE / "database.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


db = _load()

ALL_0900 = [f"utf8mb4_{lang + '_' if lang else ''}0900_{kind}"
            for lang, kind in itertools.product([None, *_LANG], ["ai_ci", "as_ci", "as_cs", "bin"])]
MAP = collation_map(ALL_0900)
# what a MariaDB 10.11 node has, as far as these tests need it: every target of the map
SERVER = {*MAP.values(), "latin1_swedish_ci", "latin1_bin", "utf8mb4_unicode_ci", "utf8mb4_general_ci",
          "utf8mb3_general_ci"}
CHARSETS = {"utf8mb4", "utf8mb3", "utf8", "latin1", "binary"}

MYSQL8_DUMP = b"""-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)
--
-- Host: localhost    Database: shop
-- ------------------------------------------------------
-- Server version\t8.0.36

/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!50503 SET NAMES utf8mb4 */;
/*!40103 SET @OLD_TIME_ZONE=@@TIME_ZONE */;
SET @MYSQLDUMP_TEMP_LOG_BIN = @@SESSION.SQL_LOG_BIN;
SET @@SESSION.SQL_LOG_BIN= 0;
SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ 'a1b2:1-5';

--
-- Table structure for table `posts`
--

DROP TABLE IF EXISTS `posts`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
/*!50503 SET character_set_client = utf8mb4 */;
CREATE TABLE `posts` (
  `id` int NOT NULL AUTO_INCREMENT,
  `title` varchar(200) COLLATE utf8mb4_0900_as_cs DEFAULT 'COLLATE utf8mb4_0900_ai_ci',
  `body` text CHARACTER SET utf8mb4 COLLATE utf8mb4_sl_0900_ai_ci,
  `note` varchar(20) /*!80023 INVISIBLE */,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB AUTO_INCREMENT=3 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_ai_ci;
/*!40101 SET character_set_client = @saved_cs_client */;

LOCK TABLES `posts` WRITE;
INSERT INTO `posts` VALUES (1,'utf8mb4_0900_ai_ci; COLLATE=utf8mb4_0900_ai_ci',\
'\xc4\x8d\xc5\xa1\xc5\xbe \xf0\x9f\x99\x82',NULL),(2,'a;\\nb','x\\'y',NULL);
UNLOCK TABLES;
CREATE TABLE `legacy` (
  `v` varchar(50) DEFAULT NULL
) ENGINE=MyISAM DEFAULT CHARSET=latin1;
INSERT INTO `legacy` VALUES ('\xc4\x8d\xc5\xa1\xc5\xbe');
/*!50003 SET collation_connection  = utf8mb4_0900_ai_ci */ ;
DELIMITER ;;
/*!50003 CREATE*/ /*!50017 DEFINER=`shop`@`%`*/ /*!50003 TRIGGER `t_ins` BEFORE INSERT ON `posts` \
FOR EACH ROW BEGIN SET NEW.note = 'a;;b'; END */;;
DELIMITER ;
/*!50001 CREATE ALGORITHM=UNDEFINED */
/*!50013 DEFINER=`shop`@`localhost` SQL SECURITY DEFINER */
/*!50001 VIEW `v_posts` AS select `posts`.`id` AS `id` from `posts` */;
SET @@SESSION.SQL_LOG_BIN = @MYSQLDUMP_TEMP_LOG_BIN;
/*!40101 SET CHARACTER_SET_CLIENT=@OLD_CHARACTER_SET_CLIENT */;

-- Dump completed on 2026-11-30 10:00:00
"""


def _split(data: bytes, chunk: int) -> tuple[list[bytes], Any]:
    splitter = db.Splitter()
    out: list[bytes] = []
    for start in range(0, len(data), chunk):
        out.extend(splitter.feed(data[start:start + chunk]))
    out.extend(splitter.finish())
    return out, splitter


def _rewriter() -> Any:
    return db.Rewriter(dict(MAP), set(SERVER), set(CHARSETS))


def test_the_survey_maps_every_mysql8_collation_it_knows() -> None:
    assert set(MAP) == set(ALL_0900)  # every UCA 9.0.0 collation of the survey's list is mapped


@pytest.mark.parametrize(("source", "target"), sorted(MAP.items()))
def test_each_mapping_rewrites_the_table_and_column_clauses(source: str, target: str) -> None:
    ddl = ("CREATE TABLE `t` (`a` varchar(9) CHARACTER SET utf8mb4 COLLATE {c} DEFAULT '{s}', "
           "`b` text COLLATE '{c}') ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={c}")
    out = _rewriter().statement(ddl.format(c=source, s=source).encode()).decode()
    assert out == ddl.format(c=target, s=source)


def test_a_mysql8_dump_is_split_and_rewritten_whatever_the_chunks() -> None:
    expected = None
    for chunk in (1, 7, 64, 4096, len(MYSQL8_DUMP)):
        statements, splitter = _split(MYSQL8_DUMP, chunk)
        assert splitter.completed
        if expected is None:
            expected = statements
        assert statements == expected  # the same statements whatever the chunking
    assert expected is not None
    rewriter = _rewriter()
    loaded = [s for s in (rewriter.statement(x) for x in expected) if s is not None]
    text = b"\n".join(loaded)
    # data rows: byte for byte, even where they spell a collation or hold a delimiter
    inserts = [s for s in loaded if s.startswith(b"INSERT")]
    assert inserts == [s for s in expected if s.startswith(b"INSERT")]
    assert inserts[0].startswith(b"INSERT INTO `posts` VALUES (1,'utf8mb4_0900_ai_ci; "
                                 b"COLLATE=utf8mb4_0900_ai_ci',")
    assert "čšž 🙂".encode() in inserts[0] and inserts[1] == "INSERT INTO `legacy` VALUES ('čšž')".encode()
    # the DDL: mapped explicitly; the DEFAULT literal that spells a collation untouched
    create = next(s for s in loaded if s.startswith(b"CREATE TABLE `posts`"))
    assert b"COLLATE utf8mb4_bin DEFAULT 'COLLATE utf8mb4_0900_ai_ci'" in create
    assert b"COLLATE utf8mb4_slovenian_ci" in create
    assert create.endswith(b"DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci")
    assert b"INVISIBLE" not in create and b"/*!80023" not in create  # MySQL 8-only comment dropped
    assert rewriter.mapped == {"utf8mb4_0900_as_cs": 1, "utf8mb4_sl_0900_ai_ci": 1, "utf8mb4_0900_ai_ci": 2}
    # latin1 kept as it is
    assert b"ENGINE=MyISAM DEFAULT CHARSET=latin1" in text
    # replication statements skipped; definers gone; the trigger whole with its ';;' literal
    assert b"SQL_LOG_BIN" not in text and b"GTID_PURGED" not in text
    assert b"DEFINER=" not in text and b"SQL SECURITY DEFINER" in text
    trigger = next(s for s in loaded if b"TRIGGER `t_ins`" in s)
    assert trigger.endswith(b"SET NEW.note = 'a;;b'; END */")
    assert b"SET collation_connection  = utf8mb4_unicode_520_ci" in text


def test_a_collation_nobody_maps_is_refused_by_name() -> None:
    statement = b"CREATE TABLE `t` (`a` text) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_ja_0900_as_cs_ks"
    with pytest.raises(db.DumpRefused, match="utf8mb4_ja_0900_as_cs_ks"):
        _rewriter().statement(statement)
    with pytest.raises(db.DumpRefused, match="character set 'gb18030'"):
        _rewriter().statement(b"CREATE TABLE `t` (`a` text) DEFAULT CHARSET=gb18030")
    # without the server's list, MySQL 8's 0900 family unmapped is still refused
    with pytest.raises(db.DumpRefused, match="utf8mb4_0900_ai_ci"):
        db.Rewriter({}).statement(b"CREATE TABLE `t` (`a` text) COLLATE utf8mb4_0900_ai_ci")


def test_identifiers_and_literals_that_look_like_clauses_are_not_rewritten() -> None:
    statement = (b"CREATE TABLE `COLLATE utf8mb4_0900_ai_ci` (`charset` varchar(5) DEFAULT "
                 b"\"CHARSET=koi8r\", `names` int COMMENT 'COLLATE=utf8mb4_0900_bin') "
                 b"COLLATE utf8mb4_0900_bin")
    out = _rewriter().statement(statement)
    assert out == statement.replace(b") COLLATE utf8mb4_0900_bin", b") COLLATE utf8mb4_bin")


@pytest.mark.parametrize("stream", [
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head></html>\n",
    b"Warning: mysqldump: Deprecated program name\n-- MySQL dump 10.13\n",
    b"",
    b"\x1f\x8b\x08\x00compressed",
])
def test_a_stream_that_is_not_a_dump_is_refused_before_any_statement(stream: bytes) -> None:
    splitter = db.Splitter()
    with pytest.raises(db.DumpRefused, match="not a mysqldump dump"):
        list(splitter.feed(stream + b"\n" * 300))
        list(splitter.finish())


def test_a_cut_dump_is_seen() -> None:
    cut = MYSQL8_DUMP[:MYSQL8_DUMP.index(b"UNLOCK TABLES")]
    statements, splitter = _split(cut, 50)
    assert not splitter.completed and statements[-1].startswith(b"INSERT INTO `posts`")
    inside = MYSQL8_DUMP[:MYSQL8_DUMP.index(b"'x\\'y'") + 3]
    with pytest.raises(db.DumpRefused, match="cut short"):
        _split(inside, 50)


def test_the_mariadb_sandbox_line_is_accepted_and_definers_of_every_form_stripped() -> None:
    stream = (b"/*M!999999\\- enable the sandbox mode */ \n-- MariaDB dump 10.19-11.4\n"
              b"/*!50013 DEFINER='a'@'%' SQL SECURITY INVOKER */ SELECT 1;\n"
              b"CREATE DEFINER = CURRENT_USER() PROCEDURE p() SELECT 2;\n"
              b"CREATE DEFINER=root@localhost EVENT e ON SCHEDULE EVERY 1 DAY DO SELECT 3;\n"
              b"-- Dump completed on 2026-12-01\n")
    statements, splitter = _split(stream, 9)
    assert splitter.completed
    out = [_rewriter().statement(s) for s in statements]
    assert out[0].endswith(b"/*!50013  SQL SECURITY INVOKER */ SELECT 1")
    assert out[1:] == [b"CREATE  PROCEDURE p() SELECT 2",
                       b"CREATE  EVENT e ON SCHEDULE EVERY 1 DAY DO SELECT 3"]


def test_credentials_go_to_an_option_file_escaped() -> None:
    text = db.client_section({"db_user": "u", "db_password": 'p"a\\ss#;', "db_host": "db.example",
                              "db_port": 3307})
    assert text == '[client]\nuser="u"\npassword="p\\"a\\\\ss#;"\nhost="db.example"\nport=3307\n'
    with pytest.raises(ValueError, match="line break"):
        db.client_section({"db_user": "u", "db_password": "a\nhost=evil"})


def test_verify_names_each_table_that_differs() -> None:
    assert db.differences({"a": 1, "b": 2, "c\n": 3}, {"a": 1, "b": 1, "d": 0}) == [
        "table b: 2 rows at the source, 1 here",
        "table c\\n: missing here (3 rows at the source)",
        "table d: not at the source (0 rows here)",
    ]
    assert db.differences({"a": 1}, {"a": 1}) == []

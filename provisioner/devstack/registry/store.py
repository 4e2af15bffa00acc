"""Persistent state of the sandbox registry: one SQLite file, one lock."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS registrars (id TEXT PRIMARY KEY, password TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS domains (
  name TEXT PRIMARY KEY, roid TEXT NOT NULL, tld TEXT NOT NULL, registrant TEXT,
  contacts TEXT NOT NULL DEFAULT '{}', ns TEXT NOT NULL DEFAULT '[]',
  statuses TEXT NOT NULL DEFAULT '[]', cl_id TEXT NOT NULL, cr_id TEXT NOT NULL,
  cr_date TEXT NOT NULL, up_date TEXT, ex_date TEXT NOT NULL, tr_date TEXT,
  auth_pw TEXT NOT NULL DEFAULT '', auth_set_at TEXT, state TEXT NOT NULL DEFAULT 'active',
  deleted_at TEXT, ns_set_at TEXT);
CREATE INDEX IF NOT EXISTS ix_domains_ex ON domains (state, ex_date);
CREATE TABLE IF NOT EXISTS contacts (
  id TEXT PRIMARY KEY, roid TEXT NOT NULL, cl_id TEXT NOT NULL, data TEXT NOT NULL,
  auth_pw TEXT NOT NULL, cr_date TEXT NOT NULL, up_date TEXT);
CREATE TABLE IF NOT EXISTS hosts (
  name TEXT PRIMARY KEY, roid TEXT NOT NULL, cl_id TEXT NOT NULL,
  addrs TEXT NOT NULL DEFAULT '[]', cr_date TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transfers (
  name TEXT PRIMARY KEY, status TEXT NOT NULL, re_id TEXT NOT NULL, re_date TEXT NOT NULL,
  ac_id TEXT NOT NULL, ac_date TEXT NOT NULL, period INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY AUTOINCREMENT, cl_id TEXT NOT NULL, qdate TEXT NOT NULL,
  msg TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS seq (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS charges (
  id INTEGER PRIMARY KEY AUTOINCREMENT, cl_id TEXT NOT NULL, name TEXT NOT NULL,
  op TEXT NOT NULL, years INTEGER NOT NULL DEFAULT 0, at TEXT NOT NULL);
"""
#: columns added after the first release: (table, column, definition)
ADDED_COLUMNS = (("domains", "delete_at_expiry", "INTEGER NOT NULL DEFAULT 0"),)

JSON_COLUMNS = frozenset({"contacts", "ns", "statuses", "data", "addrs"})


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lock = threading.RLock()
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        for table, column, definition in ADDED_COLUMNS:  # a data dir from an older sandbox
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    @staticmethod
    def _decode(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        out = dict(row)
        for key in JSON_COLUMNS & out.keys():
            out[key] = json.loads(out[key])
        return out

    def get(self, table: str, key: str, value: str) -> dict[str, Any] | None:
        return self._decode(self.db.execute(
            f"SELECT * FROM {table} WHERE {key} = ?", (value,)).fetchone())  # noqa: S608

    def all(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [d for d in (self._decode(r) for r in self.db.execute(sql, args)) if d]

    def put(self, table: str, row: dict[str, Any]) -> None:
        values = {k: json.dumps(v) if k in JSON_COLUMNS else v for k, v in row.items()}
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        self.db.execute(f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})",  # noqa: S608
                        tuple(values.values()))

    def delete(self, table: str, key: str, value: str) -> None:
        self.db.execute(f"DELETE FROM {table} WHERE {key} = ?", (value,))  # noqa: S608

    def next(self, name: str) -> int:
        self.db.execute("INSERT OR IGNORE INTO seq (name, value) VALUES (?, 0)", (name,))
        self.db.execute("UPDATE seq SET value = value + 1 WHERE name = ?", (name,))
        return int(self.db.execute("SELECT value FROM seq WHERE name = ?", (name,)).fetchone()[0])

    def execute(self, sql: str, *args: Any) -> None:
        self.db.execute(sql, args)

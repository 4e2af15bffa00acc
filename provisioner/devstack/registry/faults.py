"""Fault switches of the sandbox registry, kept in ``faults.json`` in its data dir so a
test, the demo or ops (``provisioner registry-sandbox --fault ...``) can flip them on a
running server:

``{"delay_s": 0.5,                       # every answer is this late
   "delay": {"domain:info": 2.0},         # per command
   "drop_before": {"domain:check": 1},    # close the connection, command not executed (n times)
   "drop_after": {"domain:create": 1},    # execute, then close without answering (n times)
   "fail": {"domain:create": [2400, 2]},  # answer this code without executing (n times)
   "clock_offset_days": 0}``              # move the registry's clock

Counters go down as faults fire; the file is rewritten then.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any


class Faults:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._data: dict[str, Any] = {}

    def _load(self) -> dict[str, Any]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._data, self._mtime = {}, None
            return self._data
        if mtime != self._mtime:
            try:
                self._data = json.loads(self.path.read_text() or "{}")
            except (OSError, ValueError):
                self._data = {}
            self._mtime = mtime
        return self._data

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._data, indent=1))
        tmp.replace(self.path)
        self._mtime = self.path.stat().st_mtime_ns

    def set(self, **changes: Any) -> None:
        with self._lock:
            self._load()
            self._data.update(changes)
            self._save()

    def clear(self) -> None:
        with self._lock:
            self._data = {}
            self._save()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._load())

    def delay(self, command: str) -> float:
        with self._lock:
            data = self._load()
            return float(data.get("delay", {}).get(command, data.get("delay_s", 0)) or 0)

    def clock_offset_days(self) -> int:
        with self._lock:
            return int(self._load().get("clock_offset_days", 0) or 0)

    def take(self, kind: str, command: str) -> int | bool:
        """Consume one firing of a fault. ``fail`` returns the code to answer, the drops
        return True; 0/False when nothing fires."""
        with self._lock:
            data = self._load()
            table = data.get(kind) or {}
            entry = table.get(command)
            if not entry:
                return 0
            if kind == "fail":
                code, left = int(entry[0]), int(entry[1])
                if left <= 0:
                    return 0
                table[command] = [code, left - 1]
                self._save()
                return code
            left = int(entry)
            if left <= 0:
                return False
            table[command] = left - 1
            self._save()
            return True

"""What the host-based benchmarks share: root over SSH to a throwaway host, timings,
and the JSON result (rounded, printed and written)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from provisioner.devstack.hosts.ssh import ssh_exec  # noqa: E402


class Host:
    """Root on a throwaway host: ``sh`` fails loudly with the command's stderr tail."""

    def __init__(self, info: Any) -> None:
        self.info = info

    def sh(self, command: str, timeout_s: float = 3600) -> str:
        key = Path(self.info.ssh_key)
        status, out = ssh_exec(self.info.name, self.info.address, key,
                               f"( {command}\n) 2>/var/tmp/bench.err", timeout_s=timeout_s)
        if status != 0:
            _, err = ssh_exec(self.info.name, self.info.address, key, "tail -c 1500 /var/tmp/bench.err")
            raise RuntimeError(f"{self.info.name}: {command[:200]!r} failed ({status}): {out[-800:]} {err}")
        return out

    def timed(self, command: str) -> tuple[float, str]:
        started = time.monotonic()
        out = self.sh(command)
        return time.monotonic() - started, out


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    started = time.monotonic()
    value = fn(*args, **kwargs)
    return time.monotonic() - started, value


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def write_result(result: dict[str, Any], out: Path) -> None:
    text = json.dumps(rounded(result), indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    sys.stdout.write(text + "\n")

"""Benchmark of the EPP client against the sandbox registry (issue 6).

The sandbox runs as its own process (``python -m provisioner.devstack.registry``, TLS on
127.0.0.1, state in a fresh SQLite file). N round trips of ``domain:check`` +
``domain:create`` + ``domain:info`` (each name new) are made

* over one kept-alive session (login once), and
* with a new session per command (TCP + TLS handshake + greeting + login + command +
  logout each time: what a client without keep-alive pays),

and the commands per second of each are reported. Every create is verified by the info
that follows it. It prints one JSON document and writes it to ``--out``::

    .venv/bin/python bench/epp.py --n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provisioner.adapters.registry import EppClient, RegistryConfig, RegistryContact  # noqa: E402

NS = ["ns1.provider.example", "ns2.provider.example"]


def run_mode(config: RegistryConfig, n: int, prefix: str) -> dict[str, Any]:
    client = EppClient(config)
    start = time.perf_counter()
    for i in range(n):
        name = f"{prefix}{i:05d}.si"
        assert client.check_domains([name])[name].available
        client.create_domain(name, 1, "PVBENCH1", {"admin": "PVBENCH1", "tech": "PVBENCH1"}, NS)
        info = client.info_domain(name)
        assert info.sponsor == config.login and info.nameservers == tuple(NS)
    elapsed = time.perf_counter() - start
    client.close()
    commands = 3 * n
    return {
        "round_trips": n,
        "commands": commands,
        "seconds": round(elapsed, 3),
        "commands_per_s": round(commands / elapsed, 1),
        "round_trips_per_s": round(n / elapsed, 1),
        "ms_per_command": round(1000 * elapsed / commands, 3),
        "sessions_opened": client.stats["connects"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="check+create+info round trips per mode")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "epp.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="epp-bench-") as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "provisioner.devstack.registry", "--data-dir", tmp, "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
        )
        try:
            assert proc.stdout is not None
            started = json.loads(proc.stdout.readline())
            config = RegistryConfig(started["host"], started["port"], "provisioner", "sandbox-pw-1",
                                    ca_file=started["ca_file"], timeout_s=30)
            with EppClient(config) as setup:
                setup.create_contact(RegistryContact("PVBENCH1", "Bench Mark", "b@example.si", "S 1",
                                                     "Ljubljana", "1000", "SI", "+386.41123456"),
                                     "si", "bench-pw-1")
                for host in NS:
                    setup.create_host(host)
            kept = run_mode(config, args.n, "keep")
            fresh = run_mode(RegistryConfig(**{**config.__dict__, "keep_alive": False}), args.n, "new")
        finally:
            proc.terminate()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
    report = {
        "benchmark": "epp",
        "what": "domain:check + domain:create + domain:info per round trip, sandbox registry over "
                "TLS on 127.0.0.1 in its own process (SQLite WAL state)",
        "keep_alive": kept,
        "session_per_command": fresh,
        "speedup_keep_alive": round(kept["commands_per_s"] / fresh["commands_per_s"], 2),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

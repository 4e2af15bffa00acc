"""Benchmark throwaway hosts: up -> first SSH answer, node from cache vs fresh convergence.

    .venv/bin/python bench/hosts.py [--count 10] [--skip-fresh] [--hosts-dir DIR]

Writes JSON to stdout and to bench/results/hosts.json. Targets: SSH answers in under
5 s (p50), a converged node from the cached image in under 15 s. Image builds are
timed too when the cache is cold (use an empty --hosts-dir to measure them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import timed, write_result  # noqa: E402

from provisioner.devstack.hosts import NODE, NspawnHosts  # noqa: E402
from provisioner.devstack.hosts.node import converge, ensure_node_image, node_layer  # noqa: E402
from provisioner.devstack.hosts.ssh import ssh_exec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "hosts.json"


def _services_ready(info: Any, timeout_s: float = 60) -> None:
    status, out = ssh_exec(info.name, info.address, Path(info.ssh_key),
                           "systemctl is-system-running --wait", timeout_s=timeout_s)
    if out.strip() not in ("running", "degraded"):
        raise RuntimeError(f"{info.name}: system is {out.strip()!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="hosts for the SSH p50")
    parser.add_argument("--skip-fresh", action="store_true", help="skip fresh convergence")
    parser.add_argument("--hosts-dir", type=Path, default=None)
    args = parser.parse_args()

    hosts = NspawnHosts(args.hosts_dir)
    result: dict[str, Any] = {"hosts_dir": str(hosts.dir)}

    result["image_base_build_s"], _ = timed(hosts.ensure_image)
    result["image_node_packages_build_s"], _ = timed(lambda: hosts.ensure_image(NODE))
    cached = hosts.images.is_ready(node_layer(hosts))
    result["image_converged_build_s"], layer = timed(lambda: ensure_node_image(hosts))
    result["image_converged_was_cached"] = cached

    ups: list[float] = []
    downs: list[float] = []
    names = [f"bench-{i}" for i in range(args.count)]
    try:
        for name in names:
            t, _ = timed(lambda n=name: hosts.up(n))
            ups.append(t)
    finally:
        for name in names:
            t, _ = timed(lambda n=name: hosts.down(n))
            downs.append(t)
    result["up_to_ssh_s"] = {
        "count": len(ups), "p50": statistics.median(ups), "max": max(ups),
        "min": min(ups), "all": [round(u, 3) for u in ups], "target_p50": 5.0,
    }
    result["down_s"] = {"p50": statistics.median(downs), "max": max(downs)}

    try:
        t_up, info = timed(lambda: hosts.up("bench-node", layer=layer))
        t_ready, _ = timed(lambda: _services_ready(info))
        result["node_from_cache_s"] = {"up_to_ssh": t_up, "up_to_all_services": t_up + t_ready,
                                       "target": 15.0}
        t_conv, run = timed(lambda: converge(info))
        result["node_from_cache_reconverge_s"] = t_conv
        result["node_from_cache_reconverge_changed"] = run.changed
    finally:
        hosts.down("bench-node")

    if not args.skip_fresh:
        try:
            t_up, info = timed(lambda: hosts.up("bench-fresh", layer=NODE))
            t_conv, run = timed(lambda: converge(info))
            result["node_fresh_convergence_s"] = {"up": t_up, "converge": t_conv,
                                                  "total": t_up + t_conv,
                                                  "status": run.status, "changed": run.changed}
        finally:
            hosts.down("bench-fresh")

    write_result(result, RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

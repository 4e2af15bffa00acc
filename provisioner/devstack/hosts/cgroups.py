"""cgroups for throwaway hosts: the recipe lives in production code
(provisioner/adapters/vps/cgroups.py, shared with the VPS driver); this name stays for
the harness and its tests."""

from __future__ import annotations

from provisioner.adapters.vps.cgroups import (
    CGROUP_ROOT,
    V1_CONTROLLERS,
    enter,
    hierarchies,
    kill_all,
    machine_dirs,
    mode,
    pids,
    prepare,
    remove,
)

__all__ = ["CGROUP_ROOT", "V1_CONTROLLERS", "enter", "hierarchies", "kill_all", "machine_dirs",
           "mode", "pids", "prepare", "remove"]

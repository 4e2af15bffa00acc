"""The VPS stack (stacks/vps) under Pulumi's mocks: no Pulumi CLI, no Proxmox. Each plan
maps to its sizes and limits on the VM Proxmox would get; a missing config key is an
error naming it; a plan change that would shrink the disk is refused before any
resource is registered."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import runpy
import sys
from pathlib import Path
from typing import Any

import pulumi
import pytest

from provisioner.domain.catalog import DEFAULT_CATALOG

STACK = Path(__file__).resolve().parents[3] / "stacks" / "vps"
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's marker of a secret value
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHs5cH9wFJ0bPv4mWqzU4wT9+bo2k7i6VtWTfYgWkq8Q ops@example"


class Recorder(pulumi.runtime.Mocks):
    """Pulumi's mock engine: every resource the program registers, with its inputs."""

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}

    def vms(self) -> list[dict[str, Any]]:
        return [r.inputs for r in self.resources if r.typ == "proxmoxve:index/vmLegacy:VmLegacy"]


def _load_component() -> Any:
    sys.path.insert(0, str(STACK))  # the program imports its component as `vps`
    spec = importlib.util.spec_from_file_location("vps", STACK / "vps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["vps"] = module
    spec.loader.exec_module(module)
    return module


vps = _load_component()


def _config(**over: object) -> dict[str, str]:
    values: dict[str, object] = {
        "serviceId": 42, "vmId": 1042, "hostname": "vps42.example.si", "plan": "vps-m",
        "image": "debian-12", "templates": json.dumps({"debian-12": 9000, "ubuntu-24.04": 9001}),
        "node": "pve1", "address": "192.0.2.42/24", "gateway": "192.0.2.1",
        "sshKeys": json.dumps([KEY]), "password": "correct horse battery staple",
    }
    values.update(over)
    return {f"vps:{k}": str(v) for k, v in values.items() if v is not None}


@pytest.fixture
def mocks() -> Recorder:
    # Pulumi's runtime asks asyncio for the thread's current loop, which a test that ran
    # asyncio.run() earlier in the same process leaves unset: give the thread one again.
    policy = asyncio.get_event_loop_policy()
    try:
        policy.get_event_loop()
    except RuntimeError:
        policy.set_event_loop(policy.new_event_loop())
    recorder = Recorder()
    pulumi.runtime.set_mocks(recorder, project="vps", stack="test", preview=False)
    return recorder


def _run_program(config: dict[str, str]) -> dict[str, Any]:
    pulumi.runtime.set_all_config(config, secret_keys=["vps:password"])
    return runpy.run_path(str(STACK / "__main__.py"), run_name="__main__")


@pytest.mark.parametrize("code", sorted(DEFAULT_CATALOG.vps))
def test_every_plan_maps_to_its_sizes_and_limits(mocks: Recorder, code: str) -> None:
    plan = DEFAULT_CATALOG.vps_plan(code)

    exported: list[int] = []

    @pulumi.runtime.test
    def check() -> Any:
        program = _run_program(_config(plan=code, vmId=1000 + len(code)))
        return program["machine"].disk_gb.apply(exported.append)

    check()
    assert exported == [plan.disk_gb]
    (vm,) = mocks.vms()
    assert vm["cpu"]["cores"] == plan.vcpus
    assert vm["memory"]["dedicated"] == plan.memory_mb
    (disk,) = vm["disks"]
    assert disk["size"] == plan.disk_gb
    assert disk["speed"] == {"iopsRead": plan.iops_read, "iopsWrite": plan.iops_write,
                             "read": plan.disk_read_mbps, "write": plan.disk_write_mbps}
    (nic,) = vm["networkDevices"]
    assert nic["rateLimit"] == plan.bandwidth_mbit / 8  # MB/s
    assert sorted(vm["tags"]) == ["provisioner", "service-42"]
    assert vm["protection"] is True and vm["started"] is True and vm["onBoot"] is True
    assert vm["clone"]["vmId"] == 9000 and vm["clone"]["full"] is True
    init = vm["initialization"]
    assert SECRET_SIG in init  # the password makes cloud-init's block a secret in the state
    account = init["value"]["userAccount"]
    assert account["username"] == "root" and account["keys"] == [KEY]


def test_a_suspended_vps_is_stopped_and_not_started_at_boot(mocks: Recorder) -> None:
    @pulumi.runtime.test
    def check() -> Any:
        return _run_program(_config(suspended="true"))["machine"].vm_id

    check()
    (vm,) = mocks.vms()
    assert vm["started"] is False and vm["onBoot"] is False


@pytest.mark.parametrize("missing", ["plan", "vmId", "serviceId", "password", "templates"])
def test_a_missing_config_key_is_an_error_naming_it(mocks: Recorder, missing: str) -> None:
    with pytest.raises(pulumi.ConfigMissingError, match=f"vps:{missing}"):
        _run_program(_config(**{missing: None}))
    assert mocks.resources == []


def test_a_plan_change_that_would_shrink_the_disk_is_refused_before_any_call(mocks: Recorder) -> None:
    with pytest.raises(vps.VpsConfigError, match="cannot shrink"):
        _run_program(_config(plan="vps-s", appliedDiskGb=80))
    assert mocks.resources == []


def test_growing_the_disk_is_allowed(mocks: Recorder) -> None:
    @pulumi.runtime.test
    def check() -> Any:
        return _run_program(_config(plan="vps-l", appliedDiskGb=80))["machine"].disk_gb

    check()
    assert mocks.vms()[0]["disks"][0]["size"] == 160


@pytest.mark.parametrize(("key", "value", "message"), [
    ("hostname", "bad_host;rm", "not a host name"),
    ("image", "windows-2000", "not offered"),
    ("image", "debian-13", "no template"),
    ("address", "192.0.2.300/24", "vps:address"),
    ("gateway", "198.51.100.1", "not in"),
    ("vmId", "99", "range"),
    ("sshKeys", json.dumps(["ssh-ed25519 AAAA\nrm -rf /"]), "not an SSH public key"),
    ("templates", "[1]", "JSON object"),
])
def test_bad_config_is_refused_before_any_call(mocks: Recorder, key: str, value: str, message: str) -> None:
    with pytest.raises(vps.VpsConfigError, match=message):
        _run_program(_config(**{key: value}))
    assert mocks.resources == []

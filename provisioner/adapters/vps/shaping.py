"""A VPS's network bandwidth, shaped on its host side with tc.

The machine's veth has its host end ``vb-vps-<id>`` on the VPS bridge (validate.veth_name).
What leaves the host through it is what the machine receives: a token bucket (tbf) as the
veth's root qdisc holds the machine's download to the plan's rate. What the machine sends
arrives on the veth's ingress, where nothing can be queued: an ingress qdisc with a
catch-all u32 filter redirects it (mirred) to an ifb device of the machine's own,
``vi-vps-<id>``, whose root tbf holds the upload to the same rate. (No ``police`` action:
this kernel has no act_police, and a policer drops where a queue delays, which TCP takes
badly at a few Mbit/s.) Everything is on host-side devices: nothing inside the machine
can change it.

The commands run as the machine's unit's ExecStartPost (after systemd-nspawn reports the
machine ready, so the veth exists; they hold across host reboots like the rest of the
unit) and again when a plan change sets another rate. The veth goes with the machine's
network namespace when it stops; the ifb is removed by the unit's ExecStopPost.
"""

from __future__ import annotations

import json

from provisioner.adapters.vps import validate
from provisioner.adapters.vps.runner import CommandRunner
from provisioner.errors import InvalidInput

Argv = tuple[str, ...]
LATENCY = "50ms"  # how long a packet may wait in the bucket's queue before it is dropped
MIN_BURST = 32 * 1024


def burst_bytes(mbit: int) -> int:
    """The bucket's size: 10 ms at the rate, at least 32 KiB (a few full-size frames)."""
    return max(MIN_BURST, mbit * 1_000_000 // 8 // 100)


def _tbf(dev: str, mbit: int) -> Argv:
    return ("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{mbit}mbit",
            "burst", str(burst_bytes(mbit)), "latency", LATENCY)


def _mbit(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInput(f"bandwidth must be a whole number of Mbit/s >= 1, not {value!r}")
    return value


def start_commands(vps_id: int, mbit: int) -> tuple[Argv, ...]:
    """From a fresh veth (the machine just started) to both directions shaped. A leading
    ``-`` is systemd's "a failure here is fine" (a leftover ifb from a crash)."""
    veth, ifb = validate.veth_name(vps_id), validate.ifb_name(vps_id)
    mbit = _mbit(mbit)
    return (
        ("-ip", "link", "del", "dev", ifb),
        ("ip", "link", "add", "name", ifb, "type", "ifb"),
        ("ip", "link", "set", "dev", ifb, "up"),
        _tbf(ifb, mbit),
        _tbf(veth, mbit),
        ("tc", "qdisc", "replace", "dev", veth, "handle", "ffff:", "ingress"),
        ("tc", "filter", "replace", "dev", veth, "parent", "ffff:", "protocol", "all", "prio", "1",
         "handle", "800::1", "u32", "match", "u32", "0", "0",
         "action", "mirred", "egress", "redirect", "dev", ifb),
    )


def stop_commands(vps_id: int) -> tuple[Argv, ...]:
    return (("-ip", "link", "del", "dev", validate.ifb_name(vps_id)),)


def change_commands(vps_id: int, mbit: int | None) -> tuple[Argv, ...]:
    """A running machine to another rate (None: unshaped)."""
    veth = validate.veth_name(vps_id)
    clear = (("-tc", "qdisc", "del", "dev", veth, "root"), ("-tc", "qdisc", "del", "dev", veth, "ingress"),
             *stop_commands(vps_id))
    return clear if mbit is None else (*clear, *start_commands(vps_id, mbit)[1:])


def run_all(runner: CommandRunner, commands: tuple[Argv, ...]) -> None:
    """Run unit-style commands through a host's runner (``-`` prefix: failure allowed)."""
    for argv in commands:
        ok_to_fail = argv[0].startswith("-")
        runner.run((argv[0].lstrip("-"), *argv[1:]), check=not ok_to_fail)


def rates(runner: CommandRunner, vps_id: int) -> dict[str, int | None]:
    """The rates the kernel holds the machine to, in Mbit/s: ``down`` (the veth's root
    tbf), ``up`` (the ifb's root tbf, and only if the veth's ingress really goes there)."""
    veth, ifb = validate.veth_name(vps_id), validate.ifb_name(vps_id)
    up = _tbf_mbit(runner, ifb)
    if up is not None:
        filters = runner.run(["tc", "filter", "show", "dev", veth, "ingress"], check=False).stdout
        if f"to device {ifb})" not in filters:
            up = None
    return {"bandwidth_down_mbit": _tbf_mbit(runner, veth), "bandwidth_up_mbit": up}


def _tbf_mbit(runner: CommandRunner, dev: str) -> int | None:
    done = runner.run(["tc", "-j", "qdisc", "show", "dev", dev, "root"], check=False)
    try:
        qdiscs = json.loads(done.stdout) if done.rc == 0 and done.stdout.strip() else []
    except ValueError:
        return None
    for q in qdiscs:
        if q.get("kind") == "tbf" and isinstance(q.get("options", {}).get("rate"), int):
            return round(q["options"]["rate"] * 8 / 1_000_000)
    return None

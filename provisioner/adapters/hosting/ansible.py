"""Run a playbook through ansible-runner: a failed run is a result, not an exception.

Each run gets its own temporary ``private_data_dir``; the SSH key is passed by path;
SSH master connections are shared between runs (``ControlPersist``, sockets in a
private directory of this user), so a run against a node used in the last minute
skips the SSH handshake; runs that check host keys differently never share a master
(ssh checks the key only when it opens one); with pipelining and no fact gathering a
task is one round trip; host keys are checked strictly (``StrictHostKeyChecking=yes``
against the ``known_hosts`` file given, else the user's) unless every target's record
says it is a throwaway host, and an unknown host key is a ConfigurationError naming
the node and the key's fingerprint, not a failed run; a dead or unreachable host ends
the run within ``timeout_s`` (ansible's connection ``timeout`` + SSH keep-alives +
runner's own ``timeout``), never a hang.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.adapters.ssh import changed_host_key, host_key_fingerprint, unknown_host_key
from provisioner.errors import ConfigurationError, StepFailed, TransientError

REPO_ROOT = Path(__file__).resolve().parents[3]
PLAYBOOKS_DIR = REPO_ROOT / "playbooks"
ROLES_DIR = REPO_ROOT / "roles"

CONTROL_PERSIST_S = 60  # an idle shared SSH master connection ends after this
STAT_KEYS = ("ok", "changed", "failures", "unreachable", "skipped", "rescued", "ignored")


@dataclass(frozen=True)
class Target:
    """One inventory host: its name in the inventory, address and SSH settings."""

    name: str
    address: str
    user: str = "root"
    port: int = 22
    vars: Mapping[str, Any] = field(default_factory=dict)
    # from the node's record (`hosting_nodes.throwaway`): a throwaway host of this
    # machine's devstack, whose host key is not checked. Never inferred.
    throwaway: bool = False


@dataclass(frozen=True)
class RunResult:
    status: str  # successful | failed | timeout | canceled
    rc: int
    stats: dict[str, dict[str, int]]
    errors: dict[str, str] = field(default_factory=dict)  # host -> first error message
    duration_s: float = 0.0
    # host -> the names of the tasks that changed (or, in check mode, would change) it
    changes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0

    @property
    def changed(self) -> int:
        return sum(s.get("changed", 0) for s in self.stats.values())

    def failed_hosts(self) -> list[str]:
        return sorted(h for h, s in self.stats.items()
                      if s.get("failures", 0) or s.get("unreachable", 0))

    def raise_for_status(self, step_key: str = "ansible") -> None:
        """Turn a failed run into StepFailed naming the hosts (for callers that want that)."""
        if self.ok:
            return
        hosts = self.failed_hosts() or sorted(self.stats) or ["<no host>"]
        detail = "; ".join(f"{h}: {self.errors.get(h, 'failed')}" for h in hosts)
        raise StepFailed(step_key, f"{self.status} rc={self.rc}: {detail}",
                         {"stats": self.stats, "status": self.status})


def build_inventory(targets: list[Target], ssh_key: Path | None) -> dict[str, Any]:
    hosts: dict[str, Any] = {}
    for t in targets:
        hv: dict[str, Any] = {"ansible_host": t.address, "ansible_user": t.user,
                              "ansible_port": t.port,
                              "ansible_python_interpreter": "/usr/bin/python3"}
        if ssh_key is not None:
            hv["ansible_ssh_private_key_file"] = str(ssh_key)
        hv.update(t.vars)
        hosts[t.name] = hv
    return {"all": {"hosts": hosts}}


def run_playbook(playbook: str, hosts: list[Target] | Mapping[str, Any],
                 extravars: Mapping[str, Any] | None = None, *, timeout_s: float = 900,
                 ssh_key: Path | None = None, throwaway: bool | None = None,
                 known_hosts: Path | None = None, connect_timeout_s: int = 10,
                 limit: str | None = None, check: bool = False) -> RunResult:
    """Run ``playbook`` (a name in ``playbooks/`` or a path) against ``hosts``.

    ``hosts`` is a list of :class:`Target` or a ready Ansible inventory dict. Host keys
    are checked against ``known_hosts`` (default: the user's known_hosts) unless
    ``throwaway`` is true; left at None it is true only when every target is a
    throwaway host (a ready inventory is checked strictly unless told otherwise).
    With ``check`` the run is Ansible's check mode: nothing changes, and ``changes`` names
    the tasks that would change each host (drift).
    """
    import ansible_runner  # local import: only the adapter needs ansible

    path = Path(playbook)
    if not path.is_absolute():
        path = PLAYBOOKS_DIR / (playbook if playbook.endswith(".yml") else f"{playbook}.yml")
    if not path.is_file():
        raise ConfigurationError(f"playbook {path} does not exist")
    inventory = (build_inventory(hosts, ssh_key) if isinstance(hosts, list) else dict(hosts))
    if throwaway is None:
        throwaway = isinstance(hosts, list) and bool(hosts) and all(t.throwaway for t in hosts)
    ssh_args = (f"-o ConnectTimeout={connect_timeout_s} -o ServerAliveInterval=2 "
                f"-o ServerAliveCountMax=3 -o ControlMaster=auto -o ControlPersist={CONTROL_PERSIST_S}s "
                "-o BatchMode=yes -o PasswordAuthentication=no")
    if throwaway:
        ssh_args += " -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
    else:
        if known_hosts is not None and not known_hosts.is_file():
            raise ConfigurationError(f"node_known_hosts {known_hosts} does not exist")
        ssh_args += " -o StrictHostKeyChecking=yes"
        if known_hosts is not None:
            ssh_args += f" -o UserKnownHostsFile={known_hosts} -o GlobalKnownHostsFile=/dev/null"
    bindir = str(Path(sys.executable).parent)
    envvars = {
        "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        "ANSIBLE_ROLES_PATH": str(ROLES_DIR),
        "ANSIBLE_HOST_KEY_CHECKING": "False" if throwaway else "True",
        "ANSIBLE_TIMEOUT": str(connect_timeout_s),
        "ANSIBLE_SSH_ARGS": ssh_args,
        "ANSIBLE_SSH_RETRIES": "0",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_FORCE_COLOR": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "ANSIBLE_GATHERING": "explicit",  # no facts unless a play asks for them
        "ANSIBLE_INVENTORY_ENABLED": "yaml",  # runner writes the inventory as JSON: skip the probing
        "ANSIBLE_TASK_TIMEOUT": str(int(timeout_s)),
    }
    tmp = Path(tempfile.mkdtemp(prefix="prov-ansible-"))
    envvars["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(control_dir(_control_group(throwaway, known_hosts)))
    envvars["ANSIBLE_LOCAL_TEMP"] = str(tmp / "tmp")
    errors: dict[str, str] = {}
    changes: dict[str, list[str]] = {}

    def on_event(event: dict[str, Any]) -> bool:
        if event.get("event") == "runner_on_ok":
            data = event.get("event_data", {})
            if (data.get("res") or {}).get("changed"):
                changes.setdefault(data.get("host", "?"), []).append(str(data.get("task", "")))
        if event.get("event") in ("runner_on_failed", "runner_on_unreachable"):
            data = event.get("event_data", {})
            host = data.get("host", "?")
            if data.get("ignore_errors"):
                return True
            errors.setdefault(host, f"{data.get('task', '')}: {_error_text(data.get('res'))}")
        return True

    # Extra variables go into the run's private env/extravars file (mode 0600), which
    # ansible-runner hands over as `-e @file`; a dict given to ansible_runner.run would
    # land on ansible-playbook's command line, readable by anyone with `ps`.
    (tmp / "env").mkdir(mode=0o700)
    extravars_file = tmp / "env" / "extravars"
    fd = os.open(extravars_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(dict(extravars or {}), handle)
    started = time.monotonic()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = ansible_runner.run(
                private_data_dir=str(tmp), playbook=str(path), inventory=inventory,
                envvars=envvars, limit=limit, cmdline="--check" if check else None,
                quiet=True, timeout=int(timeout_s), event_handler=on_event,
                suppress_env_files=True)
        stats: dict[str, dict[str, int]] = {}
        raw = r.stats or {}
        for key in STAT_KEYS:
            source = "dark" if key == "unreachable" else key  # runner's name for it
            for host, n in (raw.get(source) or {}).items():
                stats.setdefault(host, {k: 0 for k in STAT_KEYS})[key] = int(n)
        for host in _inventory_hosts(inventory):
            stats.setdefault(host, {k: 0 for k in STAT_KEYS})
        if r.status == "timeout":
            for host, s in stats.items():
                if not s["failures"] and not s["unreachable"]:
                    errors.setdefault(host, f"run timed out after {timeout_s:.0f}s")
        if r.status != "successful" and not errors:
            try:
                tail = (r.stdout.read() if r.stdout else "")[-800:]
            except (OSError, ValueError):
                tail = ""
            for host in stats:
                errors[host] = f"ansible-playbook rc={r.rc}: {tail.strip() or r.status}"
        if not throwaway:
            _refuse_unknown_host_keys(inventory, errors, known_hosts)
        elapsed = round(time.monotonic() - started, 2)
        return RunResult(status=str(r.status), rc=int(r.rc if r.rc is not None else -1),
                         stats=stats, errors=errors, duration_s=elapsed, changes=changes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_HOST_KEY_FAILED = "Host key verification failed"
_HOST_KEY_CHANGED = "REMOTE HOST IDENTIFICATION HAS CHANGED"  # ssh's banner (the line above may be cut)


def _refuse_unknown_host_keys(inventory: Mapping[str, Any], errors: Mapping[str, str],
                              known_hosts: Path | None) -> None:
    """A host ssh refused for its host key is a configuration error for ops (add the
    key after checking it), not a failed run to retry: raise it, naming the node and
    the fingerprint its sshd presents (also when it differs from the known one)."""
    hostvars = (inventory.get("all") or {}).get("hosts") or {}
    for host, message in errors.items():
        changed = _HOST_KEY_CHANGED in message
        if not changed and _HOST_KEY_FAILED not in message:
            continue
        hv = hostvars.get(host) or {}
        address, port = str(hv.get("ansible_host", host)), int(hv.get("ansible_port", 22))
        where = f"node {host} ({address})"
        try:
            key_name, key_fingerprint = host_key_fingerprint(address, port)
        except TransientError as exc:
            raise ConfigurationError(f"{where}: its host key is not in known_hosts ({exc})") from None
        refuse = changed_host_key if changed else unknown_host_key
        raise refuse(where, key_name, key_fingerprint, known_hosts)


def _control_group(throwaway: bool, known_hosts: Path | None) -> str:
    """The socket directory for runs that check host keys the same way. ssh checks the
    host key only when a master connection is opened, and a later run reuses a master
    without checking again: a checked run must never reuse one opened without the check
    (a throwaway run against the same address) or against another known_hosts file."""
    if throwaway:
        return "unchecked"
    source = str(known_hosts.resolve()) if known_hosts is not None else "-"
    return "checked-" + hashlib.sha256(source.encode()).hexdigest()[:16]


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if not path.is_dir() or path.is_symlink() or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ConfigurationError(f"{path} must be a directory of this user, mode 0700")
    return path


def control_dir(group: str | None = None) -> Path:
    """This user's private directory of shared SSH master sockets (created 0700), or its
    subdirectory for one way of checking host keys (`_control_group`)."""
    path = _private_dir(Path(tempfile.gettempdir()) / f"prov-ssh-{os.getuid()}")
    return _private_dir(path / group) if group else path


def close_masters() -> None:
    """Stop the shared SSH master connections (they also end by themselves when idle)."""
    for sock in control_dir().rglob("*"):
        if sock.is_socket():
            subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={sock}", "unused"],
                           capture_output=True, timeout=10, check=False)


def _error_text(res: Any) -> str:
    """The useful part of a failed task's result: its message and the command's stderr."""
    if not isinstance(res, Mapping):
        return "failed"
    items = [r for r in res.get("results") or [] if isinstance(r, Mapping) and r.get("failed")]
    if items:  # a loop: the first failed item says more than "One or more items failed"
        res = items[0]
    msg = str(res.get("msg") or res.get("reason") or "failed").strip()
    stderr = str(res.get("stderr") or "").strip()
    if stderr and stderr not in msg:
        msg = f"{msg}: {stderr[-400:]}"
    return msg[:800]


def _inventory_hosts(inventory: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for group in inventory.values():
        if isinstance(group, Mapping):
            out.extend((group.get("hosts") or {}).keys())
            for child in (group.get("children") or {}).values():
                if isinstance(child, Mapping):
                    out.extend((child.get("hosts") or {}).keys())
    return out

"""The migration copy on the node (issue 13, items 4-6): the node pulls from the old
provider with well-kept tools (rsync or lftp, mysqldump and mysql, Dovecot's doveadm),
driven over SSH from here; nothing passes through the controller.

`NodeJobs` pushes the part programs (``node/*.py``, standard library only; their
contract is in ``node/common.py``) into ``/run/hosting-migrate/<job>/bin`` on the node
(tmpfs, 0700, root), runs one with the job as JSON on stdin (the only place its secrets
travel: never argv, never the environment), turns its JSON-line events into a
`PartOutcome`, and removes everything of the job from the node in `cleanup` (the
migration's wipe). A refused login is `CredentialRefused` naming the credential; a dead
node or source is a TransientError (the step retries and the program resumes from its
checkpoint); any text that leaves here is scrubbed of the job's secrets first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.adapters.migration_source import CredentialRefused
from provisioner.adapters.ssh import node_client, paramiko_module
from provisioner.adapters.tls_targets.node import NodeAccess
from provisioner.errors import StepFailed, TransientError

NODE_PROGRAMS = Path(__file__).parent / "node"
RUN_ROOT = "/run/hosting-migrate"
STATE_ROOT = "/var/lib/hosting/migrate"
PROGRAM = {"files": "files.py", "database": "database.py", "mailbox1": "mail.py", "mailbox2": "mail.py"}
MODES = ("copy", "verify")
_JOB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
RESULT_STATES = ("done", "cap_reached", "budget_exhausted", "failed")


@dataclass(frozen=True)
class PartOutcome:
    """What one run of a part program reported (no secret)."""

    part: str
    mode: str
    state: str  # done | cap_reached | budget_exhausted | failed
    bytes: int
    items: int
    counts: dict[str, Any] = field(default_factory=dict)
    named: list[dict[str, Any]] = field(default_factory=list)  # the ``item`` events, in order
    error: str | None = None


def _secrets(job: Mapping[str, Any]) -> list[str]:
    source = job.get("source") or {}
    found = [str(v) for k, v in source.items() if ("password" in k or k.endswith("_key")) and v]
    # a key's body lines are what could leak in a message, not its armour
    return sorted({line for s in found for line in s.splitlines() if len(line) >= 8} | set(found),
                  key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class NodeJobs:
    """Runs the migration part programs on a node as root over SSH (paramiko)."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s

    def run_part(self, node: NodeAccess, job: Mapping[str, Any],
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> PartOutcome:
        """Push the programs, run ``job['part']`` in ``job['mode']``, follow its events."""
        job_id, part, mode = str(job.get("job", "")), str(job.get("part", "")), str(job.get("mode", ""))
        if not _JOB_ID.match(job_id) or part not in PROGRAM or mode not in MODES:
            raise ValueError(f"bad migration job: job={job_id!r} part={part!r} mode={mode!r}")
        secrets = _secrets(job)
        where = f"migration {job_id} {part} on {node.name}"
        with node_client(node.address, where=where, port=node.port, user=node.user, key_path=node.key_path,
                         timeout_s=self.timeout_s, throwaway=node.throwaway,
                         known_hosts=node.known_hosts) as client:
            self._push(client, job_id)
            # the program's path in its argv: `cleanup` finds the job's programs by it
            command = f"cd {RUN_ROOT}/{job_id} && exec python3 -I {RUN_ROOT}/{job_id}/bin/{PROGRAM[part]}"
            try:
                stdin, stdout, stderr = client.exec_command(command)  # noqa: S601 (fixed, validated)
                stdin.write(json.dumps(dict(job)).encode())
                stdin.channel.shutdown_write()
                events = self._follow(stdout, on_event)
                code = stdout.channel.recv_exit_status()
                err = stderr.read()[-4000:].decode(errors="replace")
            except (OSError, EOFError, paramiko_module().SSHException) as exc:
                raise TransientError(f"{where}: the connection to the node dropped: "
                                     f"{scrub(str(exc), secrets)}") from None
        return self._outcome(where, part, mode, events, code, scrub(err, secrets), secrets)

    def cleanup(self, node: NodeAccess, job_id: str) -> list[str]:
        """Remove the job's programs, secrets and checkpoints from the node (and stop any
        program of the job still running there). Returns the paths that were removed."""
        if not _JOB_ID.match(job_id):
            raise ValueError(f"bad migration job id {job_id!r}")
        paths = [f"{RUN_ROOT}/{job_id}", f"{STATE_ROOT}/{job_id}"]
        with node_client(node.address, where=f"migration {job_id} cleanup on {node.name}", port=node.port,
                         user=node.user, key_path=node.key_path, timeout_s=self.timeout_s,
                         throwaway=node.throwaway, known_hosts=node.known_hosts) as client:
            # "[/]": the pattern must not match this shell's own command line (pkill would end it)
            script = (f"pkill -f -- '[/]{RUN_ROOT[1:]}/{job_id}/' ; "
                      + " ; ".join(f"if [ -e {p} ]; then rm -rf -- {p} && echo {p}; fi" for p in paths))
            _, stdout, _ = client.exec_command(script)  # noqa: S601 (validated id only)
            removed = stdout.read().decode().split()
            stdout.channel.recv_exit_status()
        return removed

    def _push(self, client: Any, job_id: str) -> None:
        bin_dir = f"{RUN_ROOT}/{job_id}/bin"
        _, stdout, _ = client.exec_command(f"install -d -m 700 {RUN_ROOT} {RUN_ROOT}/{job_id} {bin_dir}")
        if stdout.channel.recv_exit_status() != 0:
            raise TransientError(f"could not make {bin_dir} on the node")
        sftp = client.open_sftp()
        try:
            for program in sorted({"common.py", *PROGRAM.values()}):
                local = NODE_PROGRAMS / program
                if local.is_file():
                    sftp.put(str(local), f"{bin_dir}/{program}")
                    sftp.chmod(f"{bin_dir}/{program}", 0o600)
        finally:
            sftp.close()

    @staticmethod
    def _follow(stdout: Any, on_event: Callable[[dict[str, Any]], None] | None) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for raw in iter(stdout.readline, ""):
            line = raw.strip() if isinstance(raw, str) else raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a tool's stray line: not an event
            if not isinstance(event, dict):
                continue
            events.append(event)
            if on_event is not None and event.get("event") == "progress":
                on_event(event)
        return events

    @staticmethod
    def _outcome(where: str, part: str, mode: str, events: list[dict[str, Any]], code: int, err: str,
                 secrets: list[str]) -> PartOutcome:
        named = [{k: v for k, v in e.items() if k != "event"} for e in events if e.get("event") == "item"]
        final = next((e for e in reversed(events) if e.get("event") in ("result", "error")), None)
        if final is None:
            raise TransientError(f"{where}: the program ended (exit {code}) without a result: {err[-500:]}")
        if final["event"] == "error":
            message = scrub(str(final.get("message", "")), secrets)
            kind = final.get("kind")
            if kind == "refused":
                raise CredentialRefused(str(final.get("credential") or part), where)
            if kind == "unreachable":
                raise TransientError(f"{where}: {message}")
            return PartOutcome(part, mode, "failed", 0, 0, {}, named, message)
        state = str(final.get("state"))
        if state not in RESULT_STATES:
            raise StepFailed(where, f"unknown result state {state!r}")
        error = final.get("error")
        return PartOutcome(part, mode, state, int(final.get("bytes", 0)), int(final.get("items", 0)),
                           dict(final.get("counts") or {}), named,
                           scrub(str(error), secrets) if error else None)

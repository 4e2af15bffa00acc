"""Finding a systemd-nspawn machine's processes on its host (/proc)."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def container_init(nspawn_pid: int) -> int:
    """The child of nspawn that is PID 1 in its own pid namespace (0: none yet)."""
    for child in children(nspawn_pid):
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:") and line.split()[-1] == "1" and len(line.split()) > 2:
                return child
    return 0


def is_nspawn(pid: int) -> bool:
    """``pid`` is a live systemd-nspawn process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return cmdline.split(b"\0", 1)[0].endswith(b"systemd-nspawn") and state not in ("Z", "X")

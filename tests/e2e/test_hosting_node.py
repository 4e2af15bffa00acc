"""A converged shared-hosting node, checked with testinfra over SSH."""

from __future__ import annotations

import ftplib
import imaplib
import json
import re
import shlex
import time
from typing import Any

import httpx
import pytest

from provisioner.devstack.hosts.node import converge

SERVICES = ["ssh", "nginx", "php8.2-fpm", "mariadb", "postfix", "dovecot", "pure-ftpd",
            "rsyslog"]

LISTENING = [
    ("ssh", "tcp://0.0.0.0:22"),
    ("nginx", "tcp://0.0.0.0:80"),
    ("pure-ftpd", "tcp://0.0.0.0:21"),
    ("postfix smtp", "tcp://0.0.0.0:25"),
    ("postfix submission", "tcp://0.0.0.0:587"),
    ("dovecot pop3", "tcp://0.0.0.0:110"),
    ("dovecot imap", "tcp://0.0.0.0:143"),
    ("dovecot imaps", "tcp://0.0.0.0:993"),
    ("dovecot pop3s", "tcp://0.0.0.0:995"),
    ("mariadb (loopback only)", "tcp://127.0.0.1:3306"),
    ("php-fpm", "unix:///run/php/php8.2-fpm.sock"),
    ("dovecot lmtp for postfix", "unix:///var/spool/postfix/private/dovecot-lmtp"),
]

CONFIG_CHECKS = [
    ("nginx", "nginx -t"),
    ("postfix", "postfix check"),
    ("dovecot", "doveconf -n"),
    ("php-fpm", "php-fpm8.2 -t"),
    ("mariadb", "mariadb -e 'SELECT 1'"),
    ("systemd slices", "systemd-analyze verify /etc/systemd/system/hosting.slice"),
]


@pytest.mark.parametrize("service", SERVICES)
def test_service_is_enabled_and_running(node_host: Any, service: str) -> None:
    svc = node_host.service(service)
    assert svc.is_running
    assert svc.is_enabled


@pytest.mark.parametrize(("what", "socket"), LISTENING, ids=[w for w, _ in LISTENING])
def test_listens_where_it_should(node_host: Any, what: str, socket: str) -> None:
    assert node_host.socket(socket).is_listening, what


def test_mariadb_is_not_reachable_from_outside(node_host: Any) -> None:
    assert not node_host.socket("tcp://0.0.0.0:3306").is_listening
    assert not node_host.socket("tcp://:::3306").is_listening


@pytest.mark.parametrize(("what", "command"), CONFIG_CHECKS, ids=[w for w, _ in CONFIG_CHECKS])
def test_config_is_valid(node_host: Any, what: str, command: str) -> None:
    result = node_host.run(command)
    assert result.rc == 0, f"{what}: {result.stderr or result.stdout}"


@pytest.mark.parametrize(("path", "mode"), [
    ("/srv/hosting", 0o711), ("/srv/mail", 0o750), ("/srv/backup", 0o700),
    ("/var/log/hosting", 0o750),
])
def test_areas_exist(node_host: Any, path: str, mode: int) -> None:
    f = node_host.file(path)
    assert f.is_directory
    assert f.mode == mode


def test_backup_timer_is_active(node_host: Any) -> None:
    assert node_host.service("hosting-backup.timer").is_running


def test_unknown_site_gets_the_disabled_page(node: Any) -> None:
    resp = httpx.get(f"http://{node.info.address}/", headers={"Host": "nowhere.example"},
                     timeout=5)
    assert resp.status_code == 503
    assert "currently unavailable" in resp.text


def test_ftps_is_offered(node: Any) -> None:
    with ftplib.FTP_TLS(node.info.address, timeout=5) as ftp:  # noqa: S321 (under test)
        assert ftp.auth().startswith("234")


def test_second_converge_changes_nothing(node: Any) -> None:
    result = converge(node.info)
    assert result.ok, result.errors
    assert result.stats[node.info.name]["changed"] == 0, (result.stats, result.changes)
    assert result.stats[node.info.name]["failures"] == 0


def _wait_for_line(node_host: Any, path: str, pattern: str, timeout_s: float = 15) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        content = node_host.run(f"cat {path}").stdout
        for line in content.splitlines():
            if re.search(pattern, line):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no line matching {pattern!r} in {path}:\n{content[-2000:]}")
        time.sleep(0.2)


def _ssh_login(node: Any) -> None:
    pass  # testinfra's own SSH session is the login under test


def _ftp_login(node: Any) -> None:
    # pure-ftpd answers a failed login only after a deliberate delay of a few seconds.
    ftp = ftplib.FTP(node.info.address, timeout=15)  # noqa: S321 (the server under test)
    with ftp, pytest.raises(ftplib.error_perm):
        ftp.login("e2e-nobody", "wrong")


def _imap_login(node: Any) -> None:
    imap = imaplib.IMAP4(node.info.address, timeout=5)
    try:
        imap.starttls()
        with pytest.raises(imaplib.IMAP4.error):
            imap.login("e2e-nobody@example.test", "wrong")
    finally:
        imap.shutdown()


LOGINS = [
    ("ssh", _ssh_login, r"sshd\[\d+\]: Accepted publickey for root from {ip}"),
    ("ftp", _ftp_login, r"pure-ftpd.*{ip}.*Authentication failed for user \[e2e-nobody\]"),
    ("imap", _imap_login, r"dovecot.*auth failed.*user=<e2e-nobody@example.test>.*rip={ip}"),
]


@pytest.mark.parametrize(("proto", "login", "pattern"), LOGINS, ids=[p for p, _, _ in LOGINS])
def test_logins_are_logged_with_user_and_ip(node: Any, node_host: Any, proto: str,
                                            login: Any, pattern: str) -> None:
    login(node)
    gateway = "10.213.0.1"
    _wait_for_line(node_host, "/var/log/hosting/logins.log",
                   pattern.format(ip=re.escape(gateway)))


def test_account_slices_get_the_default_limits(node_host: Any) -> None:
    out = node_host.check_output(
        "systemctl show hosting-e2edefaults.slice -p CPUQuotaPerSecUSec -p MemoryMax "
        "-p TasksMax")
    assert "CPUQuotaPerSecUSec=500ms" in out
    assert f"MemoryMax={512 * 1024 * 1024}" in out
    assert "TasksMax=256" in out


def _run_in_slice(node_host: Any, account: str, props: dict[str, str], command: str) -> str:
    setprops = " ".join(f"{k}={v}" for k, v in props.items())
    node_host.check_output(f"systemctl set-property --runtime hosting-{account}.slice {setprops}")
    # --wait --pipe: the command's output comes back, and systemd-run adds the result.
    result = node_host.run(f"systemd-run --wait --pipe --collect "
                           f"--slice=hosting-{account}.slice {command}")
    return result.stdout + result.stderr


def _cpu_seconds(times_output: str) -> float:
    """Children's user + system time from the shell builtin ``times`` (second line)."""
    children = times_output.strip().splitlines()[-1].split()
    total = 0.0
    for field in children:
        m = re.fullmatch(r"(\d+)m([\d.]+)s", field)
        assert m, times_output
        total += int(m.group(1)) * 60 + float(m.group(2))
    return total


def test_cpu_limit_holds_a_busy_loop_at_its_quota(node_host: Any) -> None:
    # The loop runs 4 s of wall time (timeout); it may take 20 % of one CPU.
    out = _run_in_slice(node_host, "e2ecpu", {"CPUQuota": "20%"},
                        "bash -c 'timeout 4 bash -c \"while :; do :; done\"; times'")
    lines = [ln for ln in out.splitlines() if re.fullmatch(r"[\dm.s ]+", ln.strip())]
    cpu = _cpu_seconds("\n".join(lines))
    assert 0.01 < cpu / 4.0 <= 0.30, out  # may get less than its share on a busy machine


def test_memory_limit_kills_a_process_that_takes_more(node_host: Any) -> None:
    out = _run_in_slice(node_host, "e2emem", {"MemoryMax": "64M"},
                        "python3 -c 'b = bytearray(256 * 1024 * 1024); print(len(b))'")
    assert re.search(r"Finished with result: (oom-kill|signal)", out), out
    assert str(256 * 1024 * 1024) not in out


def test_memory_limit_lets_a_small_process_run(node_host: Any) -> None:
    out = _run_in_slice(node_host, "e2emem", {"MemoryMax": "64M"},
                        "python3 -c 'b = bytearray(8 * 1024 * 1024); print(len(b))'")
    assert str(8 * 1024 * 1024) in out, out


FORKER = """\
import os, signal
children = []
for _ in range(30):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        signal.pause()  # wait to be killed below
        os._exit(0)
    children.append(pid)
print(f"started={len(children)}")
for pid in children:
    os.kill(pid, signal.SIGKILL)
"""


def test_tasks_limit_stops_a_fork_bomb(node_host: Any) -> None:
    out = _run_in_slice(node_host, "e2etasks", {"TasksMax": "10"},
                        f"python3 -c {shlex.quote(FORKER)}")
    m = re.search(r"started=(\d+)", out)
    assert m, out
    assert int(m.group(1)) < 10, out


def test_cli_up_node_boots_a_ready_node_from_the_cache(node: Any, host_name: str) -> None:
    from typer.testing import CliRunner

    from provisioner.cli.hosts import app

    started = time.monotonic()
    res = CliRunner().invoke(app, ["up", "--node", "--json", host_name])
    assert res.exit_code == 0, res.output
    address = json.loads(res.stdout)["address"]
    deadline = started + 15
    while True:
        try:
            if httpx.get(f"http://{address}/", timeout=1).status_code == 503:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "node from the cache not serving within 15 s"
        time.sleep(0.1)


def test_quota_tools_are_installed(node_host: Any) -> None:
    # This kernel has neither QFMT_V2 nor XFS/tmpfs quota support, so the hosting root
    # cannot be a quota mount here: the role installs the tools and skips enabling.
    assert node_host.package("quota").is_installed

"""Checks on everything that reaches a VPS host's argv, a path or a file in the guest."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re

from provisioner.errors import InvalidInput

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_TAG = re.compile(r"provisioner-service-[1-9][0-9]{0,17}")
_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
              "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
              "sk-ecdsa-sha2-nistp256@openssh.com")
_COMMENT = re.compile(r"[A-Za-z0-9@._+=-]{0,100}")
PASSWORD_MIN, PASSWORD_MAX = 12, 128


def hostname(name: str) -> str:
    """A DNS host name (lower case, labels of [a-z0-9-], at most 253 characters)."""
    if not isinstance(name, str) or not 0 < len(name) <= 253:
        raise InvalidInput("a VPS host name needs 1 to 253 characters")
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise InvalidInput(f"VPS host name {name!r}: labels of a-z, 0-9 and '-' only, "
                           "not starting or ending with '-'")
    return name


def vps_id(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 10**9:
        raise InvalidInput(f"VPS id {value!r} must be a positive integer")
    return value


def machine_name(value: int) -> str:
    """The machine's name on its host (systemd-nspawn --machine, the unit, the state dir)."""
    return f"vps-{vps_id(value)}"


def tag(value: str) -> str:
    if not isinstance(value, str) or not _TAG.fullmatch(value):
        raise InvalidInput(f"machine tag {value!r} must be provisioner-service-<id>")
    return value


def password(value: str) -> str:
    """A root password: printable ASCII, no ':' (chpasswd's separator), 12-128 characters.
    Never echoed in the error."""
    if not isinstance(value, str) or not PASSWORD_MIN <= len(value) <= PASSWORD_MAX:
        raise InvalidInput(f"the root password needs {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    if any(not 0x20 < ord(c) < 0x7F for c in value) or ":" in value:
        raise InvalidInput("the root password may hold printable ASCII except ':' and spaces")
    return value


def ssh_key(value: str) -> str:
    """One OpenSSH public key line: type, base64 blob of that type, optional plain comment."""
    if not isinstance(value, str) or "\n" in value.strip() or "\r" in value:
        raise InvalidInput("an SSH key must be one line")
    parts = value.strip().split(" ")
    if len(parts) not in (2, 3) or parts[0] not in _KEY_TYPES:
        raise InvalidInput(f"an SSH key must be '<type> <base64> [comment]' with a type of {_KEY_TYPES}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("the SSH key's blob is not base64") from None
    kind = parts[0].encode()
    if len(blob) < 4 + len(kind) or blob[4:4 + len(kind)] != kind or \
            int.from_bytes(blob[:4], "big") != len(kind):
        raise InvalidInput("the SSH key's blob does not match its type")
    if len(parts) == 3 and not _COMMENT.fullmatch(parts[2]):
        raise InvalidInput("an SSH key comment may hold letters, digits and @._+=- only")
    return " ".join(parts)


def address(value: str) -> str:
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidInput(f"{value!r} is not an IPv4 address") from None
    return str(ip)


def bridge(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z][a-z0-9]{0,14}", value):
        raise InvalidInput(f"bridge name {value!r} must match [a-z][a-z0-9]{{0,14}}")
    return value


IFNAME_MAX = 15  # the kernel's IFNAMSIZ less its NUL


def veth_name(value: int) -> str:
    """The host side of the machine's veth as systemd-nspawn names it for --network-bridge
    (``vb-<machine>``). nspawn shortens a longer name with a hash of its own, which we
    could not find again, so a VPS id whose name would not fit is refused."""
    name = f"vb-{machine_name(value)}"
    if len(name) > IFNAME_MAX:
        raise InvalidInput(f"VPS id {value} is too long for its network device name {name!r}")
    return name


def ifb_name(value: int) -> str:
    """The machine's ifb device: its upload is redirected there to be shaped."""
    return "vi-" + veth_name(value).removeprefix("vb-")

"""``Vps``: one customer's VPS on Proxmox VE as a Pulumi component.

A VM cloned (full clone) from the image's template, with the plan's limits from the
provisioner's catalog (``provisioner.domain.catalog``): cores, dedicated memory, a disk
of the plan's size with read/write IOPS and throughput caps, a network device shaped
to the plan's bandwidth, cloud-init with the hostname, address, root user's password
and SSH keys. Every VM carries the tags ``provisioner`` and ``service-<id>`` (our
reconciler acts only on machines whose tag it recorded), and Proxmox's ``protection``
flag plus Pulumi's ``protect``: nothing removes it by accident; the provisioner's
staged deletion lifts both on purpose.

Rules enforced before any call to Proxmox (in ``VpsArgs.from_config``):
- a missing configuration key is an error naming the key;
- a plan change that would shrink the disk is refused (Proxmox cannot shrink a disk,
  and a silently skipped shrink is how plan changes go wrong elsewhere): the driver
  passes the disk size the stack last applied as ``vps:appliedDiskGb``;
- a hostname, image, address or VM id that is not valid is refused.
A suspended VPS (``vps:suspended``) is stopped *and* not started at boot, so neither
the customer nor a host reboot brings it back.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_proxmoxve as proxmox

from provisioner.domain.catalog import DEFAULT_CATALOG, VpsPlan

TAG = "provisioner"
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*")
_SSH_KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( [^\n]*)?")


class VpsConfigError(ValueError):
    """The stack's configuration cannot make this VPS (refused before any call)."""


def tags_for(service_id: int) -> list[str]:
    return [TAG, f"service-{service_id}"]


@dataclass(frozen=True)
class VpsArgs:
    service_id: int
    vm_id: int
    hostname: str
    plan: VpsPlan
    image: str
    template_vm_id: int
    node: str
    address: str  # CIDR, e.g. 192.0.2.10/24
    gateway: str
    ssh_keys: tuple[str, ...]
    password: pulumi.Input[str]
    datastore: str = "local-lvm"
    bridge: str = "vmbr0"
    suspended: bool = False

    @classmethod
    def from_config(cls, config: pulumi.Config) -> VpsArgs:
        plan = DEFAULT_CATALOG.vps_plan(config.require("plan"))
        image = config.require("image")
        templates = _json_object(config.require("templates"), "vps:templates")
        applied = config.get_int("appliedDiskGb")
        return cls.build(
            service_id=config.require_int("serviceId"), vm_id=config.require_int("vmId"),
            hostname=config.require("hostname"), plan=plan, image=image, templates=templates,
            node=config.require("node"), address=config.require("address"),
            gateway=config.require("gateway"),
            ssh_keys=_json_list(config.get("sshKeys") or "[]", "vps:sshKeys"),
            password=config.require_secret("password"),
            datastore=config.get("datastore") or "local-lvm", bridge=config.get("bridge") or "vmbr0",
            suspended=config.get_bool("suspended") or False, applied_disk_gb=applied)

    @classmethod
    def build(cls, *, service_id: int, vm_id: int, hostname: str, plan: VpsPlan, image: str,
              templates: Mapping[str, object], node: str, address: str, gateway: str,
              ssh_keys: Sequence[str], password: pulumi.Input[str], datastore: str = "local-lvm",
              bridge: str = "vmbr0", suspended: bool = False,
              applied_disk_gb: int | None = None) -> VpsArgs:
        if applied_disk_gb is not None and plan.disk_gb < applied_disk_gb:
            raise VpsConfigError(
                f"plan {plan.code} has a {plan.disk_gb} GB disk but this VPS already has "
                f"{applied_disk_gb} GB: a disk cannot shrink; choose a plan with at least "
                f"{applied_disk_gb} GB")
        if not 100 <= vm_id <= 999_999_999:
            raise VpsConfigError(f"vps:vmId {vm_id} is outside Proxmox's range 100-999999999")
        if service_id <= 0:
            raise VpsConfigError(f"vps:serviceId {service_id} must be positive")
        if not _HOSTNAME.fullmatch(hostname):
            raise VpsConfigError(f"vps:hostname {hostname!r} is not a host name")
        if image not in plan.images:
            raise VpsConfigError(f"vps:image {image!r} is not offered (offered: {', '.join(plan.images)})")
        template = templates.get(image)
        if not isinstance(template, int) or template < 100:
            raise VpsConfigError(f"vps:templates has no template VM id for image {image!r}")
        try:
            net = ipaddress.ip_interface(address)
            gw = ipaddress.ip_address(gateway)
        except ValueError as exc:
            raise VpsConfigError(f"vps:address/vps:gateway: {exc}") from None
        if gw not in net.network:
            raise VpsConfigError(f"vps:gateway {gateway} is not in {net.network}")
        for key in ssh_keys:
            if not _SSH_KEY.fullmatch(key):
                raise VpsConfigError("vps:sshKeys holds a line that is not an SSH public key")
        return cls(service_id, vm_id, hostname, plan, image, template, node, str(net), str(gw),
                   tuple(ssh_keys), password, datastore, bridge, suspended)


def _json_object(text: str, key: str) -> Mapping[str, object]:
    try:
        value = json.loads(text)
    except ValueError:
        raise VpsConfigError(f"{key} must be a JSON object") from None
    if not isinstance(value, dict):
        raise VpsConfigError(f"{key} must be a JSON object")
    return value


def _json_list(text: str, key: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        raise VpsConfigError(f"{key} must be a JSON list of strings") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise VpsConfigError(f"{key} must be a JSON list of strings")
    return value


class Vps(pulumi.ComponentResource):
    """One VPS (see the module's docstring)."""

    def __init__(self, name: str, args: VpsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("provisioner:vps:Vps", name, None, opts)
        plan = args.plan
        self.vm = proxmox.VmLegacy(
            f"{name}-vm",
            node_name=args.node,
            vm_id=args.vm_id,
            name=args.hostname,
            description=f"provisioner service {args.service_id}, plan {plan.code}",
            tags=tags_for(args.service_id),
            protection=True,
            clone=proxmox.VmLegacyCloneArgs(vm_id=args.template_vm_id, full=True,
                                            datastore_id=args.datastore),
            cpu=proxmox.VmLegacyCpuArgs(cores=plan.vcpus, sockets=1, type="x86-64-v2-AES"),
            memory=proxmox.VmLegacyMemoryArgs(dedicated=plan.memory_mb),
            disks=[proxmox.VmLegacyDiskArgs(
                interface="scsi0", datastore_id=args.datastore, size=plan.disk_gb,
                discard="on", iothread=True,
                speed=proxmox.VmLegacyDiskSpeedArgs(
                    iops_read=plan.iops_read, iops_write=plan.iops_write,
                    read=plan.disk_read_mbps, write=plan.disk_write_mbps))],
            network_devices=[proxmox.VmLegacyNetworkDeviceArgs(
                bridge=args.bridge, model="virtio", firewall=True,
                rate_limit=plan.bandwidth_mbit / 8)],  # Proxmox counts MB/s
            initialization=proxmox.VmLegacyInitializationArgs(
                datastore_id=args.datastore,
                ip_configs=[proxmox.VmLegacyInitializationIpConfigArgs(
                    ipv4=proxmox.VmLegacyInitializationIpConfigIpv4Args(
                        address=args.address, gateway=args.gateway))],
                user_account=proxmox.VmLegacyInitializationUserAccountArgs(
                    username="root", password=args.password, keys=list(args.ssh_keys))),
            started=not args.suspended,
            on_boot=not args.suspended,
            stop_on_destroy=True,
            opts=pulumi.ResourceOptions(parent=self, protect=True,
                                        additional_secret_outputs=["initialization"]),
        )
        self.vm_id = pulumi.Output.from_input(args.vm_id)
        self.address = pulumi.Output.from_input(args.address.split("/")[0])
        self.disk_gb = pulumi.Output.from_input(plan.disk_gb)
        self.tags = pulumi.Output.from_input(tags_for(args.service_id))
        self.register_outputs({"vm_id": self.vm_id, "address": self.address,
                               "disk_gb": self.disk_gb, "tags": self.tags})

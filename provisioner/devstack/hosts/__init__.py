"""Throwaway hosts on this machine (systemd-nspawn + debootstrap + overlayfs)."""

from provisioner.devstack.hosts.images import BASE, NODE, Layer
from provisioner.devstack.hosts.nspawn import HostInfo, NspawnHosts, default_hosts_dir

__all__ = ["BASE", "NODE", "HostInfo", "Layer", "NspawnHosts", "default_hosts_dir"]

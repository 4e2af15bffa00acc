#!/bin/sh
# Install what throwaway hosts (provisioner/adapters/hosts) need on this machine.
# Idempotent and non-interactive; run as root on Debian 12.
set -eu
packages="systemd-container debootstrap iproute2 util-linux openssh-client e2fsprogs kmod"
missing=""
for p in $packages; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi
# overlayfs for the hosts' copy-on-write roots.
grep -qw overlay /proc/filesystems || modprobe overlay || true

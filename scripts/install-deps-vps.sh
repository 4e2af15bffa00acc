#!/bin/sh
# Install what a VPS host of the nspawn driver (provisioner/adapters/vps) needs: systemd-nspawn,
# loop devices and ext4 tools for the machines' disks, chpasswd/passwd for root access,
# ssh-keygen for the machines' host keys, iproute2 for the VPS bridge and tc (bandwidth shaping).
# Idempotent and non-interactive; run as root on Debian 12 (this machine, or a VPS host).
set -eu
packages="systemd-container util-linux e2fsprogs passwd openssh-client iproute2 coreutils findutils"
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
# Loop devices for the machines' fixed-size disks.
[ -e /dev/loop-control ] || modprobe loop || true
# ifb devices for shaping what each machine sends (numifbs=0: no spare ifb0/ifb1).
[ -e /sys/module/ifb ] || modprobe ifb numifbs=0 || true

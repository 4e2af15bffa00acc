#!/usr/bin/env bash
# Debian packages the suite and the demo need. Idempotent; installs only what is missing.
set -euo pipefail
pkgs=(python3 python3-venv python3-dev build-essential postgresql redis-server ca-certificates)
here="$(cd "$(dirname "$0")" && pwd)"
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root or install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Debian's postgresql and redis packages start their own services; we start ours.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Each capability lists its own Debian packages in scripts/install-deps-<capability>.sh.
for extra in "$here"/install-deps-*.sh; do
  [ -e "$extra" ] || continue
  sh "$extra"
done

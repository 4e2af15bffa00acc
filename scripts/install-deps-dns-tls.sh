#!/bin/sh
# Debian packages the DNS/TLS capability and its tests need: Knot (authoritative DNS,
# knotc), kdig/keymgr, Pebble (ACME test CA) and nginx (the loopback certificate target).
# Idempotent: installs only what is missing. System services are not enabled.
set -eu
want="knot knot-dnsutils pebble nginx-light"
missing=""
for pkg in $want; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
# nginx-light or nginx (any flavour) will do.
if echo "$missing" | grep -q nginx-light && command -v nginx >/dev/null 2>&1; then
    missing=$(echo "$missing" | sed 's/nginx-light//')
fi
missing=$(echo "$missing" | xargs)
if [ -n "$missing" ]; then
    echo "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d keeps the system knot/nginx services from being started by the install.
    policy=/usr/sbin/policy-rc.d
    created=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created=1
    fi
    apt-get update -qq || true
    apt-get install -y -qq --no-install-recommends $missing
    if [ "$created" = 1 ]; then rm -f "$policy"; fi
fi
exit 0

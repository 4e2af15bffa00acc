#!/bin/sh
# Debian packages for the observability checks: promtool (from `prometheus`) checks the
# alert rules in deploy/prometheus/. Idempotent; the system service is not started.
set -eu
if ! dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q "install ok installed"; then
    echo "installing: prometheus"
    export DEBIAN_FRONTEND=noninteractive
    policy=/usr/sbin/policy-rc.d
    created=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created=1
    fi
    apt-get update -qq || true
    apt-get install -y -qq --no-install-recommends prometheus
    if [ "$created" = 1 ]; then rm -f "$policy"; fi
fi
exit 0

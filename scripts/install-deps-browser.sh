#!/bin/sh
# Debian packages the customer pages' browser tests need: headless Chromium and its
# WebDriver (driven by Selenium from the dev extra). Idempotent: installs only what is
# missing.
set -eu
want="chromium chromium-driver fonts-dejavu-core"
missing=""
for pkg in $want; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
missing=$(echo "$missing" | xargs)
if [ -n "$missing" ]; then
    echo "installing: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    apt-get install -y -qq --no-install-recommends $missing
fi

#!/usr/bin/env bash
# Make sure PostgreSQL 15 with PostGIS 3 binaries are on this machine.
# Installs them from the distribution's packages when absent and we are root;
# otherwise says which packages to install. Does nothing when
# TRACKER_TEST_DATABASE_URL points at a server already.
set -euo pipefail

if [ -n "${TRACKER_TEST_DATABASE_URL:-}" ]; then
  exit 0
fi

have_postgis() {
  ls /usr/share/postgresql/*/extension/postgis.control >/dev/null 2>&1 \
    && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

if have_postgis; then
  exit 0
fi

PACKAGES="postgresql-15 postgresql-15-postgis-3"
if [ "$(id -u)" != "0" ]; then
  echo "PostGIS is not installed and this user cannot install it." >&2
  echo "Install these packages (Debian/Ubuntu): $PACKAGES" >&2
  echo "or set TRACKER_TEST_DATABASE_URL=postgresql://... to a server with PostGIS." >&2
  exit 1
fi

echo "Installing $PACKAGES from the distribution's packages..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps the package from starting its own cluster service; the
# tests start a throwaway cluster of their own.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
have_postgis || { echo "PostGIS install did not provide postgis.control" >&2; exit 1; }

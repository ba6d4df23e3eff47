#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser tests
# (tests/browser, driven by Playwright with executable_path=/usr/bin/chromium).
# Installs the distribution's package when absent and we are root; otherwise
# says which package to install. Playwright's own browser downloads are never
# used: this machine reaches package registries only.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

have_chromium() {
  [ -x "$CHROMIUM" ] && "$CHROMIUM" --version >/dev/null 2>&1
}

if have_chromium; then
  exit 0
fi

PACKAGES="chromium"
if [ "$(id -u)" != "0" ]; then
  echo "Chromium is not installed at $CHROMIUM and this user cannot install it." >&2
  echo "Install this package (Debian/Ubuntu): $PACKAGES" >&2
  echo "or skip the browser tests: pytest --ignore=tests/browser" >&2
  exit 1
fi

echo "Installing $PACKAGES from the distribution's packages..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
have_chromium || { echo "the $PACKAGES package did not provide a working $CHROMIUM" >&2; exit 1; }

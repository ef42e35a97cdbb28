#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine (Debian
# packages and a virtual environment in .venv), then runs the whole suite.
# Usage: bash tests/run-all.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
DEB_PACKAGES=(python3-venv python3-dev gcc iproute2 nftables iperf3 unbound dnsutils dnsperf dnsdist
              mosquitto mosquitto-clients prometheus prometheus-alertmanager systemd docker-compose
              freeradius-utils kea-dhcp4-server isc-dhcp-client chromium chromium-driver)
missing=()
for p in "${DEB_PACKAGES[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
# Test files run in parallel (pytest-xdist, one file's tests on one worker: module fixtures stay
# shared and a file's tests keep their order). Most of the suite waits on real daemons, brokers and
# timers, so two workers on two cores halve the time; three were faster still but crowded the
# machine enough to make timing margins thin. NOCPOLICY_TEST_WORKERS=1 runs it serially.
WORKERS="${NOCPOLICY_TEST_WORKERS:-2}"
XDIST=()
[ "$WORKERS" -gt 1 ] && XDIST=(-n "$WORKERS" --dist loadfile)
exec .venv/bin/python -m pytest -q -p no:cacheprovider "${XDIST[@]}" "$@"

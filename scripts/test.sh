#!/usr/bin/env bash
# The whole test suite, from a fresh clone: creates .venv, installs syncctl and its tools,
# then runs ruff, mypy (strict for syncctl.core and syncctl.config), the generated-docs
# check, and pytest (warnings are errors). Extra arguments go to pytest.
#
#   bash scripts/test.sh                      # everything, Hypothesis profile "ci"
#   SYNCCTL_HYPOTHESIS_PROFILE=qa bash scripts/test.sh tests/property   # deep QA run
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"

# Debian packages the tests use as independent peers: mbpoll (a third-party Modbus client),
# mosquitto (the MQTT broker) and mosquitto-clients (mosquitto_sub, mosquitto_passwd).
debs=()
command -v mbpoll >/dev/null 2>&1 || debs+=(mbpoll)
{ command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 || debs+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || debs+=(mosquitto-clients)
if [ ${#debs[@]} -gt 0 ]; then
    echo "== installing Debian packages: ${debs[*]}"
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debs[@]}"
    elif command -v sudo >/dev/null 2>&1; then
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debs[@]}"
    else
        echo "warning: cannot install ${debs[*]} (not root, no sudo): tests needing them skip" >&2
    fi
fi

echo "== ruff"
ruff check src tests firmware_sim bench
echo "== mypy"
mypy
echo "== generated docs are fresh"
syncctl docs generate --check
echo "== pytest (Hypothesis profile: ${SYNCCTL_HYPOTHESIS_PROFILE:-ci})"
exec python -m pytest "$@"

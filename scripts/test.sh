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

echo "== ruff"
ruff check src tests firmware_sim
echo "== mypy"
mypy
echo "== generated docs are fresh"
syncctl docs generate --check
echo "== pytest (Hypothesis profile: ${SYNCCTL_HYPOTHESIS_PROFILE:-ci})"
exec python -m pytest "$@"

#!/usr/bin/env bash
# The main job, from a fresh clone: creates .venv, installs syncctl, and runs one gated
# fraction in the simulated room. Extra arguments go to the command (try --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
source "$ROOT/scripts/bootstrap.sh" >&2
cd "$ROOT"
exec syncctl dryrun --config configs/room-sim.yaml "$@"

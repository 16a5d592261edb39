#!/usr/bin/env bash
# The main job, from a fresh clone: creates .venv, installs syncctl, and runs one gated
# fraction in the simulated room: device simulators as a separate process (Modbus TCP on
# loopback, Modbus RTU on a pty), the controller, a scripted operator. Extra arguments go to
# `syncctl demo` (try --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
source "$ROOT/scripts/bootstrap.sh" >&2
cd "$ROOT"
exec syncctl demo --config configs/room-sim.yaml "$@"

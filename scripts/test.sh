#!/usr/bin/env bash
# Install txharp with its test dependencies into a virtual environment (.venv,
# created if missing) and run the whole test suite under trial (2 worker
# processes).
# Needs nothing but Python 3.9+ on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
install_txharp ".[test]"
exec "$venv/bin/python" -m twisted.trial --jobs="${TRIAL_JOBS:-2}" "${@:-tests}"

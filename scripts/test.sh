#!/usr/bin/env bash
# Install txharp with its test dependencies into a fresh virtual environment
# and run the whole test suite under trial (2 worker processes).
# Needs nothing but Python 3.9+ on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TXHARP_VENV:-.venv}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet ".[test]"
exec "$venv/bin/python" -m twisted.trial --jobs="${TRIAL_JOBS:-2}" "${@:-tests}"

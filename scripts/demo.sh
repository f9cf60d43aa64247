#!/usr/bin/env bash
# Quick start: install txharp into a virtual environment (.venv, created if
# missing) and run the demo: harpd and harp-proxy on 127.0.0.1, and the
# harp library's synopsis through them with txharp.sync.  Needs nothing but
# Python 3.9+ on the machine.  Arguments go to the demo (--keep keeps its
# temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
install_txharp .
exec "$venv/bin/python" -m txharp.demo "$@"

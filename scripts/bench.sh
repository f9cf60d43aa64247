#!/usr/bin/env bash
# Benchmarks: install txharp into a virtual environment (.venv, created if
# missing), then run bench/run.py on 127.0.0.1: its own harpd backend
# (--in-process, TLS), twistd harp-proxy and a separate load generator.
# Needs nothing but Python 3.9+ on the machine.  Arguments go to
# bench/run.py, e.g.:
#
#   bash scripts/bench.sh                          # every mode, median of 3 runs (~6 min)
#   bash scripts/bench.sh --quick                  # a few seconds: does it work?
#   bash scripts/bench.sh --modes calls --out results.jsonl
#   bash scripts/bench.sh --dispatcher HOST:PORT   # measure another dispatcher
#
# TXHARP_BENCH_EXTRAS=1 also installs the optional tools of the "bench"
# extra (py-spy for --profile, matplotlib for --plot).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
if [ -n "${TXHARP_BENCH_EXTRAS:-}" ]; then
    install_txharp ".[bench]"
else
    install_txharp .
fi
exec "$venv/bin/python" bench/run.py "$@"

# Sourced by the scripts beside it: install_txharp SPEC installs SPEC (".",
# ".[test]", ...) into the virtual environment $venv (TXHARP_VENV, default
# .venv), creating it first if it is missing.
venv="${TXHARP_VENV:-.venv}"

install_txharp() {
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
    fi
    "$venv/bin/python" -m pip install --quiet "$1"
}

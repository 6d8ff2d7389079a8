#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv by default) and install verl-commeff into it.
#
# Idempotent: a second run re-checks the pins and reinstalls only what changed.
# On a machine without CUDA it installs the CPU build of torch 2.13.0 and pins it through
# constraints/cpu.txt so that nothing (verl, transformers, ...) can swap it for a CUDA build.
# On a CUDA machine the torch that is already there (or the one pip picks) is kept.
#
# Knobs: VENV (path of the virtualenv, default .venv), PYTHON (interpreter, default python3).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

# pip prints one harmless warning per package for this machine's file:// extra indexes; keep its output readable.
quiet_pip() {
    local log
    log=$(mktemp)
    if ! python -m pip "$@" >"$log" 2>&1; then
        grep -v 'is ignored: it is neither a file nor a directory' "$log" >&2 || true
        rm -f "$log"
        return 1
    fi
    grep -v 'is ignored: it is neither a file nor a directory' "$log" || true
    rm -f "$log"
}

CONSTRAINTS=()
if ! command -v nvidia-smi >/dev/null 2>&1; then
    CONSTRAINTS=(-c "$ROOT/constraints/cpu.txt")
    if ! python -c 'import torch, sys; sys.exit(0 if torch.__version__ == "2.13.0+cpu" else 1)' 2>/dev/null; then
        echo "[setup] installing CPU torch 2.13.0"
        quiet_pip install --quiet "${CONSTRAINTS[@]}" "torch==2.13.0"
    fi
fi

# Reinstall the project only when setup.py changed since the last successful install.
STAMP="$VENV/.verl_commeff_setup_stamp"
WANT=$(cat "$ROOT/setup.py" "$ROOT"/constraints/*.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[setup] installing verl-commeff and its dependencies (first run: a few minutes)"
    quiet_pip install --quiet "${CONSTRAINTS[@]}" -e "$ROOT[test]"
    echo "$WANT" > "$STAMP"
fi
python -c 'import torch, verl, verl_commeff; print(f"[setup] ok: torch {torch.__version__}, verl {verl.__version__}, verl_commeff {verl_commeff.__version__}")'

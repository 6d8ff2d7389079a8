#!/usr/bin/env bash
# Quick start, command 2: set up (or refresh) the project's virtualenv and run the whole test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k ring -x`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup_env.sh"
VENV=${VENV:-$ROOT/.venv}
# shellcheck disable=SC1091
. "$VENV/bin/activate"  # the end-to-end tests run the recipes, whose `python3` must be this venv's
cd "$ROOT"
# pytest exits 5 when it collected no test: that is a failure here, as is any other non-zero code.
exec python -m pytest tests "$@"

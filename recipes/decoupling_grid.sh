#!/usr/bin/env bash
# The seed's 2×2 decoupling experiment: {delay_K, cadence} ∈ {5, 20}, 100 steps each, same merger.
#   A = (5, 5)  control · B = (20, 5) delay only (the most informative cell; Q refreshed every 5 ticks)
#   C = (5, 20) cadence only · D = (20, 20) = the K=20 arm
# Q refresh follows the anchor cadence in every cell (q_cadence = cadence), so cell B isolates delay_K.
# The seed's full dose (ADAPTIVE=off) unless ADAPTIVE is set.
#
#   CELLS="B" bash recipes/decoupling_grid.sh      # one cell
#   DRY_RUN=1 bash recipes/decoupling_grid.sh      # print the four commands
set -xeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CELLS=${CELLS:-"A B C D"}
STEPS=${STEPS:-100}
declare -A DELAY=([A]=5 [B]=20 [C]=5 [D]=20)
declare -A CAD=([A]=5 [B]=5 [C]=20 [D]=20)
for cell in $CELLS; do
    if [ -z "${DELAY[$cell]:-}" ]; then
        echo "unknown cell '$cell': cells are A B C D" >&2
        exit 2
    fi
    ADAPTIVE=${ADAPTIVE:-off} K=${DELAY[$cell]} CADENCE=${CAD[$cell]} STEPS=$STEPS EXP="grid_${cell}_k${DELAY[$cell]}_c${CAD[$cell]}" \
        bash "$HERE/gsm8k_grpo_commeff.sh" "$@"
done

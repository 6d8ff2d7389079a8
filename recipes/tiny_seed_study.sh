#!/usr/bin/env bash
# The seed's arms (SPEC §7) as a tiny-scale study on CPU: one command, every arm, then the report.
#
# Each arm is recipes/gsm8k_grpo_commeff.sh (or the dense control) in its cpu_tiny preset: the
# warm-started tiny Qwen2 on generated GSM8K-format problems (built once, shared by all arms),
# 16 prompts x 4 responses per step, 2 ticks per step. Arms:
#   dense            the control (plugin off)
#   floor            no merger (merger=none; the anchor still runs and owns Q), K=5 / cadence 5
#   k5_c5            the seed's K=5 arm
#   k20_c20          the seed's K=20 arm
#   grid_B_k20_c5    decoupling grid cell B: delay 20, cadence 5
#   grid_C_k5_c20    decoupling grid cell C: delay 5, cadence 20
#   k20_c20_mu085    K=20 with age decay mu=0.85 (seed next step #2)
#   k20_c20_gate     K=20 with beta=0 and the adaptive ratio gate, cap 0.5 (seed next step #4)
#   dp_codec         dense GRPO on 2 replicas with the data-parallel PowerSGD codec alone (every 2-D parameter,
#                    r = 1, bf16 factors: 58x fewer whole-model bytes on this model; dp_bytes.png shows it next to
#                    the accuracy); its same-layout dense control (2 replicas) is in recipes/dp_codec_study.sh
# It ends with `verl-commeff report` over all arms (baseline: dense; floor: the floor arm's terminal
# validation). About 50 minutes on a 2-core CPU with the defaults; a benchmark, not a test.
#
#   bash recipes/tiny_seed_study.sh                         # every arm, STEPS=40
#   ARMS="dense k5_c5" STEPS=20 bash recipes/tiny_seed_study.sh
#   OUT=outputs/study2 SEED=1 bash recipes/tiny_seed_study.sh   # another seed (data, warm start, rollout)
set -xeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

# ---- knobs -------------------------------------------------------------------------------------------
OUT=${OUT:-outputs/tiny_study}
STEPS=${STEPS:-40}
TEST_FREQ=${TEST_FREQ:-10}
ARMS=${ARMS:-"dense floor k5_c5 k20_c20 grid_B_k20_c5 grid_C_k5_c20 k20_c20_mu085 k20_c20_gate dp_codec"}
PRESET_DIR=${PRESET_DIR:-$OUT/tiny_preset}
declare -A ARM_KNOBS=(
    [dense]=""
    [floor]="MERGER=none K=5 CADENCE=5"
    [k5_c5]="K=5 CADENCE=5"
    [k20_c20]="K=20 CADENCE=20"
    [grid_B_k20_c5]="K=20 CADENCE=5"
    [grid_C_k5_c20]="K=5 CADENCE=20"
    [k20_c20_mu085]="K=20 CADENCE=20 MU=0.85"
    [k20_c20_gate]="K=20 CADENCE=20 BETA=0 ADAPTIVE=ratio LAMBDA_CAP=0.5"
    [dp_codec]="NGPUS=2 FSDP_SIZE=1 DP_CODEC=1 DP_PARAMS=all_2d DP_RANK=1 DP_PRECISION=bf16 DP_START=0"
)
# shellcheck disable=SC1091
. "$HERE/arms.sh"
# shellcheck disable=SC2086
require_known_arms $ARMS

export PRESET=cpu_tiny PRESET_DIR STEPS TEST_FREQ PROJECT=tiny_study VERL_FILE_LOGGER_ROOT="$OUT/logs"
export TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
# shellcheck disable=SC1091
. "$ROOT/scripts/progress.sh"
python3 -m verl_commeff.presets --out "$PRESET_DIR"   # once, before the arms (they reuse it)

runs=()
for arm in $ARMS; do
    recipe="$HERE/gsm8k_grpo_commeff.sh"
    case "$arm" in dense | dp_codec) recipe="$HERE/gsm8k_grpo_dense.sh" ;; esac   # dp_codec: DP_CODEC=1 there
    rm -f "$OUT/logs/$PROJECT/$arm.jsonl"   # verl's file logger appends: a rerun starts clean
    start=$(date +%s)
    echo "[study] arm $arm (${ARM_KNOBS[$arm]:-plugin off}): log $OUT/$arm.log"
    # shellcheck disable=SC2086
    env ${ARM_KNOBS[$arm]} EXP="$arm" bash "$recipe" trainer.default_local_dir="$OUT/ckpt/$arm" 2>&1 \
        | tee "$OUT/$arm.log" | progress "$arm" "$STEPS" \
        || { tail -n 40 "$OUT/$arm.log"; echo "[study] arm $arm failed: see $OUT/$arm.log" >&2; exit 1; }
    echo "[study] arm $arm done in $(( $(date +%s) - start )) s"
    runs+=("$arm=$OUT/logs/$PROJECT/$arm.jsonl")
done

report=(--out "$OUT/report" --gate-step "$STEPS" --val-steps "$(seq -s, "$TEST_FREQ" "$TEST_FREQ" "$STEPS")")
[[ " $ARMS " == *" dense "* ]] && report+=(--baseline dense) || report+=(--baseline "${ARMS%% *}")
[[ " $ARMS " == *" floor "* ]] && report+=(--floor-arm floor) || report+=(--floor 0)
verl-commeff report "${runs[@]}" "${report[@]}"
echo "[study] done: figures and verdict in $OUT/report/"

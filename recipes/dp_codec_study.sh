#!/usr/bin/env bash
# What the data-parallel PowerSGD codec costs in learning (issue 18): dense GRPO on the cpu_tiny preset
# with 2 actor processes as 2 HSDP replicas of 1 shard, the gradient exchanged between them densely
# (the control: verl's stock HSDP) or by commeff.dp_codec alone (no boundary codec, no anchor, no merger)
# at several settings, each arm for every seed in SEEDS, then `verl-commeff report` over all runs
# (val_accuracy.png, dp_bytes.png: whole-model bytes vs accuracy, verdict.md with the bytes table).
# Arms (DP knobs of recipes/gsm8k_grpo_commeff.sh; compression from the first tick, DP_START=0):
#   dense        the control (plugin off)
#   t_r4_full    the target matrices only (embedding and LM head dense), r = 4, fp32 factors
#   a_r4_full    every 2-D parameter, r = 4, fp32 factors
#   a_r2_bf16    every 2-D parameter, r = 2, bf16 factors
#   a_r1_bf16    every 2-D parameter, r = 1, bf16 factors
#   a_r1_full    every 2-D parameter, r = 1, fp32 factors (the precision's own cost, against a_r1_bf16)
# About 5 minutes per run on a 2-core CPU; a benchmark, not a test.
#
#   bash recipes/dp_codec_study.sh                                # every arm, seeds 0 and 1
#   ARMS="dense a_r1_bf16" SEEDS=0 REPORT=0 bash recipes/dp_codec_study.sh
#   DRY_RUN=1 REPORT=0 bash recipes/dp_codec_study.sh             # each run's command in $OUT/<arm>_s<seed>.log
set -xeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# ---- knobs -------------------------------------------------------------------------------------------
OUT=${OUT:-outputs/dp_codec_study}
STEPS=${STEPS:-20}
TEST_FREQ=${TEST_FREQ:-5}
SEEDS=${SEEDS:-"0 1"}
ARMS=${ARMS:-"dense t_r4_full a_r4_full a_r2_bf16 a_r1_bf16 a_r1_full"}
REPORT=${REPORT:-1}
PRESET_DIR=${PRESET_DIR:-$OUT/tiny_preset}
declare -A ARM_KNOBS=(
    [dense]="DP_CODEC=0"
    [t_r4_full]="DP_CODEC=1 DP_PARAMS=targets DP_RANK=4 DP_PRECISION=full"
    [a_r4_full]="DP_CODEC=1 DP_PARAMS=all_2d DP_RANK=4 DP_PRECISION=full"
    [a_r2_bf16]="DP_CODEC=1 DP_PARAMS=all_2d DP_RANK=2 DP_PRECISION=bf16"
    [a_r1_bf16]="DP_CODEC=1 DP_PARAMS=all_2d DP_RANK=1 DP_PRECISION=bf16"
    [a_r1_full]="DP_CODEC=1 DP_PARAMS=all_2d DP_RANK=1 DP_PRECISION=full"
)
# shellcheck disable=SC1091
. "$HERE/arms.sh"
# shellcheck disable=SC2086
require_known_arms $ARMS
# shellcheck disable=SC2086
require_seeds $SEEDS

export PRESET=cpu_tiny PRESET_DIR STEPS TEST_FREQ NGPUS=2 FSDP_SIZE=1 DP_START=0 PROJECT=dp_study
export VERL_FILE_LOGGER_ROOT="$OUT/logs" TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
[ "${DRY_RUN:-0}" = 1 ] || python3 -m verl_commeff.presets --out "$PRESET_DIR"   # once; the arms reuse it

runs=()
for seed in $SEEDS; do
    for arm in $ARMS; do
        name=${arm}_s${seed}
        rm -f "$OUT/logs/$PROJECT/$name.jsonl"   # verl's file logger appends: a rerun starts clean
        start=$(date +%s)
        echo "[dp study] $name (${ARM_KNOBS[$arm]}): log $OUT/$name.log"
        # shellcheck disable=SC2086
        env ${ARM_KNOBS[$arm]} SEED="$seed" EXP="$name" bash "$HERE/gsm8k_grpo_dense.sh" \
            trainer.default_local_dir="$OUT/ckpt/$name" > "$OUT/$name.log" 2>&1 \
            || { tail -n 40 "$OUT/$name.log"; echo "[dp study] $name failed: see $OUT/$name.log" >&2; exit 1; }
        echo "[dp study] $name done in $(( $(date +%s) - start )) s"
        runs+=("$name=$OUT/logs/$PROJECT/$name.jsonl")
    done
done

if [ "$REPORT" = 1 ]; then
    first=${ARMS%% *}
    verl-commeff report "${runs[@]}" --out "$OUT/report" --baseline "${first}_s${SEEDS%% *}" --gate-step "$STEPS" \
        --val-steps "$(seq -s, "$TEST_FREQ" "$TEST_FREQ" "$STEPS")" --floor 0 --skip-missing
    echo "[dp study] done: figures and verdict in $OUT/report/"
fi

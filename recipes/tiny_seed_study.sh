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
# The seed's arms above and the full-dose arms below pin ADAPTIVE=off (the recipe's default dose is the evidence
# dose since issue 17). The staleness curve (issue 17), signed_ema at full dose, cadence max(K, 1): k0_c1 k1_c1 k2_c2 (with
# k5_c5 and k20_c20 above). The same delays with the evidence dose (commeff.merger.adaptive.mode=evidence,
# lambda* in [0, 4/3], docs/method.md): ev_k0_c1 ev_k1_c1 ev_k2_c2 ev_k5_c5 ev_k20_c20; evcap1_k0_c1 caps
# lambda* at 1; floor_k0_c1 is the floor with the K=0 arms' schedule (Q refreshed every tick).
# PROBE=on (exported) adds the anchor's dose probe to every arm: its signals, without changing training.
#   dp_codec         dense GRPO on 2 replicas with the data-parallel PowerSGD codec alone (every 2-D parameter,
#                    r = 1, bf16 factors: 58x fewer whole-model bytes on this model; dp_bytes.png shows it next to
#                    the accuracy); its same-layout dense control (2 replicas) is in recipes/dp_codec_study.sh
# It ends with `verl-commeff report` over all arms (baseline: dense; floor: the floor arm's terminal
# validation). About 45 minutes on a 2-core CPU with the defaults; a benchmark, not a test.
# Each arm runs once per seed in SEEDS (recipe knob SEED: prompt order, rollout and validation sampling,
# the codec's bootstrap; the preset, i.e. the warm-started model, is the same for every seed); its
# metrics go to $OUT/logs/tiny_study/<arm>_s<seed>.jsonl. CODEC_RANK (and PP_SIZE) pick the codec regime:
# 16 = the preset's default, 1 = the lossy regime. REPORT=0 skips the closing report.
#
#   bash recipes/tiny_seed_study.sh                         # every arm, STEPS=40, seed 0
#   ARMS="dense k5_c5" STEPS=20 bash recipes/tiny_seed_study.sh
#   OUT=outputs/lossy CODEC_RANK=1 SEEDS="0 1 2" ARMS="floor k0_c1" STEPS=20 TEST_FREQ=5 bash recipes/tiny_seed_study.sh
#   verl-commeff study outputs/lossy/logs/tiny_study --out outputs/lossy/study   # per-seed tables over the arms
set -xeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

# ---- knobs -------------------------------------------------------------------------------------------
OUT=${OUT:-outputs/tiny_study}
STEPS=${STEPS:-40}
TEST_FREQ=${TEST_FREQ:-10}
ARMS=${ARMS:-"dense floor k5_c5 k20_c20 grid_B_k20_c5 grid_C_k5_c20 k20_c20_mu085 k20_c20_gate dp_codec"}
SEEDS=${SEEDS:-0}
REPORT=${REPORT:-1}
PRESET_DIR=${PRESET_DIR:-$OUT/tiny_preset}
declare -A ARM_KNOBS=(
    [dense]=""
    [floor]="MERGER=none K=5 CADENCE=5 ADAPTIVE=off"
    [k5_c5]="K=5 CADENCE=5 ADAPTIVE=off"
    [k20_c20]="K=20 CADENCE=20 ADAPTIVE=off"
    [grid_B_k20_c5]="K=20 CADENCE=5 ADAPTIVE=off"
    [grid_C_k5_c20]="K=5 CADENCE=20 ADAPTIVE=off"
    [k20_c20_mu085]="K=20 CADENCE=20 MU=0.85 ADAPTIVE=off"
    [k20_c20_gate]="K=20 CADENCE=20 BETA=0 ADAPTIVE=ratio LAMBDA_CAP=0.5"
    [k0_c1]="K=0 CADENCE=1 ADAPTIVE=off"
    [k1_c1]="K=1 CADENCE=1 ADAPTIVE=off"
    [k2_c2]="K=2 CADENCE=2 ADAPTIVE=off"
    [floor_k0_c1]="MERGER=none K=0 CADENCE=1 ADAPTIVE=off"
    [ev_k0_c1]="K=0 CADENCE=1 ADAPTIVE=evidence LAMBDA_CAP=1.3333333333333333"
    [ev_k1_c1]="K=1 CADENCE=1 ADAPTIVE=evidence LAMBDA_CAP=1.3333333333333333"
    [ev_k2_c2]="K=2 CADENCE=2 ADAPTIVE=evidence LAMBDA_CAP=1.3333333333333333"
    [ev_k5_c5]="K=5 CADENCE=5 ADAPTIVE=evidence LAMBDA_CAP=1.3333333333333333"
    [ev_k20_c20]="K=20 CADENCE=20 ADAPTIVE=evidence LAMBDA_CAP=1.3333333333333333"
    [evcap1_k0_c1]="K=0 CADENCE=1 ADAPTIVE=evidence LAMBDA_CAP=1.0"
    [dp_codec]="NGPUS=2 FSDP_SIZE=1 DP_CODEC=1 DP_PARAMS=all_2d DP_RANK=1 DP_PRECISION=bf16 DP_START=0"
)
# shellcheck disable=SC1091
. "$HERE/arms.sh"
# shellcheck disable=SC2086
require_known_arms $ARMS
# shellcheck disable=SC2086
require_seeds $SEEDS

export PRESET=cpu_tiny PRESET_DIR STEPS TEST_FREQ PROJECT=tiny_study VERL_FILE_LOGGER_ROOT="$OUT/logs"
export TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
# shellcheck disable=SC1091
. "$ROOT/scripts/progress.sh"
python3 -m verl_commeff.presets --out "$PRESET_DIR"   # once, before the arms (they reuse it)

runs=()
for seed in $SEEDS; do
    for arm in $ARMS; do
        recipe="$HERE/gsm8k_grpo_commeff.sh"
        case "$arm" in dense | dp_codec) recipe="$HERE/gsm8k_grpo_dense.sh" ;; esac   # dp_codec: DP_CODEC=1 there
        name="${arm}_s${seed}"
        rm -f "$OUT/logs/$PROJECT/$name.jsonl"   # verl's file logger appends: a rerun starts clean
        start=$(date +%s)
        echo "[study] arm $arm, seed $seed (${ARM_KNOBS[$arm]:-plugin off}): log $OUT/$name.log"
        # shellcheck disable=SC2086
        env ${ARM_KNOBS[$arm]} SEED="$seed" EXP="$name" bash "$recipe" trainer.default_local_dir="$OUT/ckpt/$name" 2>&1 \
            | tee "$OUT/$name.log" | progress "$name" "$STEPS" \
            || { tail -n 40 "$OUT/$name.log"; echo "[study] arm $arm (seed $seed) failed: see $OUT/$name.log" >&2; exit 1; }
        echo "[study] arm $arm, seed $seed done in $(( $(date +%s) - start )) s"
        runs+=("$name=$OUT/logs/$PROJECT/$name.jsonl")
    done
done
[ "$REPORT" = 1 ] || exit 0

report=(--out "$OUT/report" --gate-step "$STEPS" --val-steps "$(seq -s, "$TEST_FREQ" "$TEST_FREQ" "$STEPS")")
first_seed=${SEEDS%% *}
[[ " $ARMS " == *" dense "* ]] && report+=(--baseline "dense_s$first_seed") || report+=(--baseline "${ARMS%% *}_s$first_seed")
[[ " $ARMS " == *" floor "* ]] && report+=(--floor-arm "floor_s$first_seed") || report+=(--no-floor)
verl-commeff report "${runs[@]}" "${report[@]}"
echo "[study] done: figures and verdict in $OUT/report/"

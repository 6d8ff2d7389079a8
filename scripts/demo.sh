#!/usr/bin/env bash
# Quick start, command 1: set up (or refresh) the project's virtualenv and run the main job.
#
# The main job is the tiny end-to-end GRPO demo on this CPU (no GPU, no downloads): verl's real
# trainer, the plugin's actor, the anchor worker group, the hf rollout and validation, through
# recipes/gsm8k_grpo_commeff.sh in its cpu_tiny preset (a locally built Qwen2-shaped model and
# tokenizer, warm-started to a partial skill, generated GSM8K-format data), on which GRPO learns:
#   1. the dense arm   (plugin off: verl's stock actor),
#   2. the comm-eff arm (codec + signed_ema merger with the evidence dose + separate anchor worker group, K=5, cadence 5),
#   3. `verl-commeff report` over both: figures and verdict.md.
# Outputs go to outputs/demo/ (metrics: outputs/demo/logs/<project>/<arm>.jsonl, via verl's file logger).
# Knobs: STEPS (default 20), TEST_FREQ (default 5), OUT (default outputs/demo).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup_env.sh"
VENV=${VENV:-$ROOT/.venv}
# shellcheck disable=SC1091
. "$VENV/bin/activate"
cd "$ROOT"

OUT=${OUT:-outputs/demo}
STEPS=${STEPS:-20}
TEST_FREQ=${TEST_FREQ:-5}
export VERL_FILE_LOGGER_ROOT="$OUT/logs" PRESET=cpu_tiny PRESET_DIR="$OUT/tiny_preset" STEPS TEST_FREQ
export TOKENIZERS_PARALLELISM=false PROJECT=demo
mkdir -p "$OUT"
start=$(date +%s)
echo "[demo] 0/3 tiny preset in $PRESET_DIR (first run: build + warm start, ~30 s on an idle machine; later runs reuse it)"
python -m verl_commeff.presets --out "$PRESET_DIR"
rm -f "$OUT/logs/demo/dense.jsonl" "$OUT/logs/demo/commeff_k5_c5.jsonl"  # verl's file logger appends

# One line per training/validation step from verl's console log (the full log goes to a file).
. "$ROOT/scripts/progress.sh"

echo "[demo] 1/3 dense arm ($STEPS steps, validation every $TEST_FREQ): log $OUT/dense.log"
EXP=dense bash recipes/gsm8k_grpo_dense.sh trainer.default_local_dir="$OUT/ckpt/dense" 2>&1 \
    | tee "$OUT/dense.log" | progress demo "$STEPS" \
    || { tail -n 40 "$OUT/dense.log"; echo "[demo] the dense arm failed: see $OUT/dense.log" >&2; exit 1; }

echo "[demo] 2/3 comm-eff arm (K=5, cadence 5, separate anchor group, the evidence dose): log $OUT/commeff.log"
EXP=commeff_k5_c5 K=5 CADENCE=5 PLACEMENT=separate bash recipes/gsm8k_grpo_commeff.sh \
    trainer.default_local_dir="$OUT/ckpt/commeff" 2>&1 | tee "$OUT/commeff.log" | progress demo "$STEPS" \
    || { tail -n 40 "$OUT/commeff.log"; echo "[demo] the comm-eff arm failed: see $OUT/commeff.log" >&2; exit 1; }

echo "[demo] 3/3 report"
verl-commeff report "dense=$OUT/logs/demo/dense.jsonl" "commeff_k5_c5=$OUT/logs/demo/commeff_k5_c5.jsonl" \
    --baseline dense --out "$OUT/report" --gate-step "$STEPS" --val-steps "$(seq -s, "$TEST_FREQ" "$TEST_FREQ" "$STEPS")" --skip-missing \
    --no-floor  # the seed's 0.63 no-merger floor is a 1.5B figure; the tiny study (recipes/tiny_seed_study.sh) measures its own
echo "[demo] done in $(( $(date +%s) - start )) s: figures and verdict in $OUT/report/, metrics in $OUT/logs/demo/"

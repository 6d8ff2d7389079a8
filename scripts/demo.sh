#!/usr/bin/env bash
# Quick start, command 1: set up (or refresh) the project's virtualenv and run the main job.
#
# The main job is the tiny end-to-end GRPO demo on CPU (recipes/gsm8k_grpo_commeff.sh in its
# CPU preset: a dense arm and a comm-eff arm). Until the verl integration lands it prints
# what it will run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup_env.sh"
cat <<'MSG'
[demo] verl-commeff is installed (core library: codec, replay ring, mergers, report).
[demo] The end-to-end demo is not wired yet. When it is, this command will run, on this CPU:
[demo]   recipes/gsm8k_grpo_commeff.sh in its tiny preset (local Qwen2-shaped model and tokenizer,
[demo]   generated GSM8K-format data): a dense arm and a comm-eff arm (separate anchor worker
[demo]   group, K=5, cadence 5) with validation, metrics written through verl's file tracking,
[demo]   then `verl-commeff report` over both arms.
MSG

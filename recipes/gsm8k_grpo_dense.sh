#!/usr/bin/env bash
# The dense control arm: the same GSM8K GRPO surface as gsm8k_grpo_commeff.sh with the plugin off
# (commeff.enable=False: verl's stock actor, no codec, no anchor).
#
#   bash recipes/gsm8k_grpo_dense.sh            # 50 steps, validation every 25
#   DRY_RUN=1 bash recipes/gsm8k_grpo_dense.sh  # print the command
set -xeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
EXP=${EXP:-dense} exec bash "$HERE/gsm8k_grpo_commeff.sh" commeff.enable=False "$@"

#!/usr/bin/env bash
# The dense control arm: the same GSM8K GRPO surface as gsm8k_grpo_commeff.sh with the plugin off
# (commeff.enable=False: verl's stock actor, no codec, no anchor).
#
# DP_CODEC=1 keeps the same dense GRPO but exchanges the gradient across HSDP replicas with the
# data-parallel PowerSGD codec (SPEC §5): the plugin's actor owns the replica exchange, nothing else
# of the method runs (no boundary codec, no anchor, no merger). The DP_* knobs of gsm8k_grpo_commeff.sh apply.
#
#   bash recipes/gsm8k_grpo_dense.sh            # 50 steps, validation every 25
#   DRY_RUN=1 bash recipes/gsm8k_grpo_dense.sh  # print the command
#   DP_CODEC=1 DP_PARAMS=all_2d DP_RANK=16 DP_PRECISION=bf16 FSDP_SIZE=4 bash recipes/gsm8k_grpo_dense.sh
#                                               # dense GRPO, PowerSGD between the replicas
set -xeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ "${DP_CODEC:-0}" = 1 ]; then
    EXP=${EXP:-dense_dp_codec} exec bash "$HERE/gsm8k_grpo_commeff.sh" \
        commeff.codec.enable=False commeff.anchor.enable=False commeff.merger.name=none "$@"
fi
EXP=${EXP:-dense} exec bash "$HERE/gsm8k_grpo_commeff.sh" commeff.enable=False "$@"

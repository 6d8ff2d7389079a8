#!/usr/bin/env bash
# GRPO on GSM8K with verl-commeff: PowerSGD boundary codec + async anchor + signed_ema merger.
#
# The seed's locked surface (SPEC §7): Qwen2.5-1.5B-Instruct, train_batch 128, ppo_mini 64 (2 ticks per
# step), n=8, lr 1e-6, response 2048, KL loss off, no KL in reward, entropy coeff 0, 4 GPUs, validation
# every 25 steps. Defaults are the seed's K=5 arm (delay_k=5, cadence=5, 50 steps).
#
#   bash recipes/gsm8k_grpo_commeff.sh                          # K=5, cadence 5, 50 steps
#   K=20 CADENCE=20 STEPS=100 bash recipes/gsm8k_grpo_commeff.sh # the K=20 arm
#   DRY_RUN=1 bash recipes/gsm8k_grpo_commeff.sh                 # print the command, run nothing
#   bash recipes/gsm8k_grpo_commeff.sh trainer.total_epochs=2    # extra verl/commeff overrides go last
#
# Data: verl's GSM8K parquet layout; `python -m verl_commeff.data.gsm8k --local_dir $DATA_DIR` makes it.
set -xeuo pipefail

# ---- knobs -------------------------------------------------------------------------------------------
MODEL=${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}
DATA_DIR=${DATA_DIR:-$HOME/data/gsm8k}
K=${K:-5}                               # commeff.anchor.delay_k (ticks)
CADENCE=${CADENCE:-5}                   # commeff.anchor.cadence (ticks)
Q_CADENCE=${Q_CADENCE:-null}            # commeff.codec.q_cadence (null = CADENCE)
MU=${MU:-1.0}                           # commeff.merger.age_decay (1.0 = off)
MERGER=${MERGER:-signed_ema}            # commeff.merger.name (signed_ema | none)
PLACEMENT=${PLACEMENT:-colocated}       # commeff.anchor.placement (separate needs NGPUS more devices)
SYNC=${SYNC:-strict}                    # commeff.anchor.sync (strict | free)
STEPS=${STEPS:-50}
NGPUS=${NGPUS:-4}
ROLLOUT=${ROLLOUT:-vllm}                # vllm | sglang | hf (no vLLM needed)
PROJECT=${PROJECT:-verl_commeff_gsm8k}
EXP=${EXP:-commeff_k${K}_c${CADENCE}}
DRY_RUN=${DRY_RUN:-0}

# ---- overrides, grouped -----------------------------------------------------------------------------
data=(
    data.train_files="$DATA_DIR/train.parquet"
    data.val_files="$DATA_DIR/test.parquet"
    data.train_batch_size=128
    data.max_prompt_length=512
    data.max_response_length=2048
)
model=(
    actor_rollout_ref.model.path="$MODEL"
    actor_rollout_ref.model.use_remove_padding=True
    actor_rollout_ref.model.enable_gradient_checkpointing=True
)
actor=(
    actor_rollout_ref.actor.strategy=fsdp2
    actor_rollout_ref.actor.optim.lr=1e-6
    actor_rollout_ref.actor.ppo_mini_batch_size=64
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8
    actor_rollout_ref.actor.use_kl_loss=False
    actor_rollout_ref.actor.entropy_coeff=0
    actor_rollout_ref.actor.shuffle=False
)
rollout=(
    actor_rollout_ref.rollout.name="$ROLLOUT"
    actor_rollout_ref.rollout.n=8
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16
    actor_rollout_ref.rollout.tensor_model_parallel_size=1
    actor_rollout_ref.rollout.gpu_memory_utilization=0.5
)
algorithm=(
    algorithm.adv_estimator=grpo
    algorithm.use_kl_in_reward=False
)
trainer=(
    trainer.n_gpus_per_node="$NGPUS"
    trainer.nnodes=1
    trainer.total_training_steps="$STEPS"
    trainer.test_freq=25
    trainer.save_freq=-1
    trainer.val_before_train=True
    trainer.logger='["console","file"]'
    trainer.project_name="$PROJECT"
    trainer.experiment_name="$EXP"
)
commeff=(
    commeff.codec.rank=77
    commeff.codec.pp_size=8
    commeff.codec.q_cadence="$Q_CADENCE"
    commeff.anchor.delay_k="$K"
    commeff.anchor.cadence="$CADENCE"
    commeff.anchor.placement="$PLACEMENT"
    commeff.anchor.sync="$SYNC"
    commeff.anchor.n_gpus_per_node="$NGPUS"
    commeff.merger.name="$MERGER"
    commeff.merger.alpha=0.25
    commeff.anchor.beta=0.5
    commeff.merger.age_decay="$MU"
)

cmd=(python3 -m verl_commeff.main "${data[@]}" "${model[@]}" "${actor[@]}" "${rollout[@]}" "${algorithm[@]}"
     "${trainer[@]}" "${commeff[@]}" "$@")
if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "${cmd[@]}"; echo
else
    "${cmd[@]}"
fi

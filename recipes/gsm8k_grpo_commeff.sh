#!/usr/bin/env bash
# GRPO on GSM8K with verl-commeff: PowerSGD boundary codec + async anchor + signed_ema merger.
#
# The seed's locked surface (SPEC §7): Qwen2.5-1.5B-Instruct, train_batch 128, ppo_mini 64 (2 ticks per
# step), n=8, lr 1e-6, response 2048, KL loss off, no KL in reward, entropy coeff 0, 4 GPUs, validation
# every 25 steps. Defaults are the seed's K=5 arm (delay_k=5, cadence=5, 50 steps) with the evidence dose
# (issue 17); ADAPTIVE=off gives the seed's exact arm.
#
#   bash recipes/gsm8k_grpo_commeff.sh                          # K=5, cadence 5, 50 steps, the evidence dose
#   ADAPTIVE=off bash recipes/gsm8k_grpo_commeff.sh             # the seed's exact K=5 arm (signed_ema at full dose)
#   K=20 CADENCE=20 STEPS=100 bash recipes/gsm8k_grpo_commeff.sh # the K=20 arm
#   DRY_RUN=1 bash recipes/gsm8k_grpo_commeff.sh                 # print the command, run nothing
#   bash recipes/gsm8k_grpo_commeff.sh trainer.total_epochs=2    # extra verl/commeff overrides go last
#   PRESET=cpu_tiny bash recipes/gsm8k_grpo_commeff.sh           # the tiny CPU demo (no GPU, no downloads)
#   PRESET=cpu_tiny CODEC_RANK=1 SEED=1 bash recipes/gsm8k_grpo_commeff.sh   # the lossy codec regime, another seed
#   DP_CODEC=1 FSDP_SIZE=2 bash recipes/gsm8k_grpo_commeff.sh     # + PowerSGD across 2 HSDP replicas (SPEC §5)
#   PRESET=cpu_tiny NGPUS=2 FSDP_SIZE=1 DP_CODEC=1 DP_RANK=4 DP_START=2 bash recipes/gsm8k_grpo_commeff.sh
#                                                                 # the same on CPU: 2 actor processes as 2 replicas
#
# Data: verl's GSM8K parquet layout; `python -m verl_commeff.data.gsm8k --local_dir $DATA_DIR` makes it.
set -xeuo pipefail

# ---- knobs -------------------------------------------------------------------------------------------
PRESET=${PRESET:-gpu}                   # gpu: the seed's surface | cpu_tiny: tiny local model + data on CPU
K=${K:-5}                               # commeff.anchor.delay_k (ticks)
CADENCE=${CADENCE:-5}                   # commeff.anchor.cadence (ticks)
Q_CADENCE=${Q_CADENCE:-null}            # commeff.codec.q_cadence (null = CADENCE)
MU=${MU:-1.0}                           # commeff.merger.age_decay (1.0 = off)
MERGER=${MERGER:-signed_ema}            # commeff.merger.name (signed_ema | none)
BETA=${BETA:-0.5}                       # commeff.anchor.beta (the anchor EMA; 0 = the latest M only)
ADAPTIVE=${ADAPTIVE:-evidence}          # commeff.merger.adaptive.mode (evidence | off: the seed's full dose | ratio | cos)
PROBE=${PROBE:-auto}                    # commeff.anchor.probe (auto: on with ADAPTIVE=evidence | on | off)
LAMBDA_CAP=${LAMBDA_CAP:-null}          # commeff.merger.adaptive.cap (null: 1/(1 - alpha) with evidence, else 1)
SYNC=${SYNC:-strict}                    # commeff.anchor.sync (strict | free)
SEED=${SEED:-0}                         # data.seed = rollout.seed = 42 + SEED (prompt order, sampling), commeff.codec.seed = SEED
# CODEC_RANK (default 77; cpu_tiny 16): commeff.codec.rank, 1..hidden size. Not RANK: launchers (and torch.distributed
#   tools) set RANK per process, so the recipe never reads it.
# PP_SIZE (default 8; cpu_tiny 2): commeff.codec.pp_size, 2..decoder layers (boundaries = PP_SIZE - 1)
DP_CODEC=${DP_CODEC:-0}                 # 1: commeff.dp_codec.enable (PowerSGD on the gradient across HSDP replicas)
DP_RANK=${DP_RANK:-16}                  # commeff.dp_codec.rank
DP_START=${DP_START:-10}                # commeff.dp_codec.start_iter (ticks exchanged densely first)
DP_PARAMS=${DP_PARAMS:-all_2d}          # commeff.dp_codec.params (all_2d: the embedding and LM head too | targets)
DP_EMBED_RANK=${DP_EMBED_RANK:-null}    # commeff.dp_codec.embedding_rank (null = DP_RANK; needs DP_PARAMS=all_2d)
DP_PRECISION=${DP_PRECISION:-bf16}      # commeff.dp_codec.factor_precision (bf16 | full)
FSDP_SIZE=${FSDP_SIZE:--1}              # actor fsdp_size; < the actor's GPUs makes an HSDP mesh of GPUs/FSDP_SIZE replicas
# ANCHOR_NGPUS (default NGPUS): commeff.anchor.n_gpus_per_node, 1..NGPUS (fewer than NGPUS: the anchor reshards, FSDP2)
case "$DP_CODEC" in
0) DP_ENABLE=False ;;
1) DP_ENABLE=True ;;
*) echo "DP_CODEC must be 0 or 1, got '$DP_CODEC'" >&2; exit 2 ;;
esac
need_int() {  # need_int NAME VALUE MIN: a clear error for a knob that is not an integer >= MIN
    if ! [[ "$2" =~ ^(0|[1-9][0-9]*)$ ]] || [ "$2" -lt "$3" ]; then
        echo "$1 must be an integer >= $3, got '$2'" >&2; exit 2
    fi
}
need_int SEED "$SEED" 0
PROJECT=${PROJECT:-verl_commeff_gsm8k}
EXP=${EXP:-commeff_k${K}_c${CADENCE}}
DRY_RUN=${DRY_RUN:-0}
case "$PRESET" in
gpu)
    MODEL=${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}
    DATA_DIR=${DATA_DIR:-$HOME/data/gsm8k}
    PLACEMENT=${PLACEMENT:-colocated}   # commeff.anchor.placement (separate needs NGPUS more devices)
    STEPS=${STEPS:-50}
    NGPUS=${NGPUS:-4}
    ROLLOUT=${ROLLOUT:-vllm}            # vllm | sglang | hf (no vLLM needed)
    TRAIN_BATCH=128 MINI_BATCH=64 MICRO_BATCH=8 N=8 LR=1e-6 PROMPT_LEN=512 RESPONSE_LEN=2048
    TEST_FREQ=${TEST_FREQ:-25} CODEC_RANK=${CODEC_RANK:-77} PP_SIZE=${PP_SIZE:-8} REMOVE_PADDING=True
    preset=(
        actor_rollout_ref.actor.entropy_coeff=0
        actor_rollout_ref.model.enable_gradient_checkpointing=True
        actor_rollout_ref.rollout.gpu_memory_utilization=0.5
    )
    ;;
cpu_tiny)
    export VERL_COMMEFF_PLATFORM=${VERL_COMMEFF_PLATFORM:-cpu}   # the CPU platform on purpose, also on a GPU host
    PRESET_DIR=${PRESET_DIR:-outputs/tiny_preset}
    [ "$DRY_RUN" = 1 ] || python3 -m verl_commeff.presets --out "$PRESET_DIR"   # tiny model + data, built locally
    MODEL=${MODEL:-$PRESET_DIR/model}
    DATA_DIR=${DATA_DIR:-$PRESET_DIR/gsm8k}
    PLACEMENT=${PLACEMENT:-separate}
    STEPS=${STEPS:-12}
    NGPUS=${NGPUS:-1}                    # actor processes (and as many anchor processes with placement=separate);
                                         # NGPUS=2 FSDP_SIZE=1: 2 HSDP replicas of 1 shard (DP_CODEC=1 compresses between them)
    ROLLOUT=${ROLLOUT:-hf}
    # 16 prompts x 8 responses per step, 2 ticks per step (mini-batch 8 prompts), like the seed's surface
    TRAIN_BATCH=${TRAIN_BATCH:-16} MINI_BATCH=${MINI_BATCH:-8} MICRO_BATCH=${MICRO_BATCH:-32} N=${N:-8}
    LR=${LR:-5e-4} PROMPT_LEN=96 RESPONSE_LEN=${RESPONSE_LEN:-48}
    TEST_FREQ=${TEST_FREQ:-6} CODEC_RANK=${CODEC_RANK:-16} PP_SIZE=${PP_SIZE:-2} REMOVE_PADDING=False
    preset=(
        trainer.device=cpu
        +actor_rollout_ref.model.override_config.attn_implementation=sdpa
        actor_rollout_ref.model.enable_gradient_checkpointing=False
        actor_rollout_ref.actor.use_torch_compile=False
        actor_rollout_ref.actor.fsdp_config.use_torch_compile=False
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype: fp32, reduce_dtype: fp32, buffer_dtype: fp32}"
        actor_rollout_ref.actor.entropy_coeff=0      # the seed's; the warm-started tiny model has a reward signal
        actor_rollout_ref.rollout.dtype=float32
        actor_rollout_ref.rollout.agent.num_workers=1
        # validation samples like training (temperature 1, 2 per problem): the policy GRPO trains, less noise
        actor_rollout_ref.rollout.val_kwargs.do_sample=True
        actor_rollout_ref.rollout.val_kwargs.temperature=1.0
        actor_rollout_ref.rollout.val_kwargs.n=2
        data.filter_overlong_prompts=False
        data.dataloader_num_workers=0
        +ray_kwargs.ray_init.num_cpus=16          # logical CPUs: TransferQueue reserves one per storage unit
        transfer_queue.backend.SimpleStorage.num_data_storage_units=2
        +trainer.v1.sampler.sampler_kwargs.poll_interval=0.05   # verl polls finished rollouts every 2 s
    )
    ;;
*)
    echo "unknown PRESET '$PRESET': presets are gpu and cpu_tiny" >&2
    exit 2
    ;;
esac

need_int CODEC_RANK "$CODEC_RANK" 1   # the upper bounds need the model: commeff.codec checks them at start-up
need_int PP_SIZE "$PP_SIZE" 2

# ---- overrides, grouped -----------------------------------------------------------------------------
data=(
    data.train_files="$DATA_DIR/train.parquet"
    data.val_files="$DATA_DIR/test.parquet"
    data.train_batch_size="$TRAIN_BATCH"
    data.max_prompt_length="$PROMPT_LEN"
    data.max_response_length="$RESPONSE_LEN"
    data.seed=$((42 + SEED))                     # the train sampler's shuffle order (docs/reliability.md)
)
model=(
    actor_rollout_ref.model.path="$MODEL"
    actor_rollout_ref.model.use_remove_padding="$REMOVE_PADDING"
)
actor=(
    actor_rollout_ref.actor.strategy=fsdp2
    actor_rollout_ref.actor.fsdp_config.fsdp_size="$FSDP_SIZE"
    actor_rollout_ref.actor.optim.lr="$LR"
    actor_rollout_ref.actor.ppo_mini_batch_size="$MINI_BATCH"
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu="$MICRO_BATCH"
    actor_rollout_ref.actor.use_kl_loss=False
    actor_rollout_ref.actor.shuffle=False
)
rollout=(
    actor_rollout_ref.rollout.name="$ROLLOUT"
    actor_rollout_ref.rollout.n="$N"
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu="$MICRO_BATCH"
    actor_rollout_ref.rollout.tensor_model_parallel_size=1
    actor_rollout_ref.rollout.agent.default_agent_loop=seeded_single_turn_agent   # per-trajectory sampling seeds (hf)
    actor_rollout_ref.rollout.seed=$((42 + SEED))  # those seeds' root (verl's default 42 at SEED=0)
)
algorithm=(
    algorithm.adv_estimator=grpo
    algorithm.use_kl_in_reward=False
)
trainer=(
    trainer.n_gpus_per_node="$NGPUS"
    trainer.nnodes=1
    trainer.total_training_steps="$STEPS"
    trainer.test_freq="$TEST_FREQ"
    trainer.save_freq=-1
    trainer.val_before_train=True
    trainer.logger='["console","file"]'
    trainer.project_name="$PROJECT"
    trainer.experiment_name="$EXP"
)
commeff=(
    commeff.codec.rank="$CODEC_RANK"
    commeff.codec.seed="$SEED"
    commeff.codec.pp_size="$PP_SIZE"
    commeff.codec.q_cadence="$Q_CADENCE"
    commeff.anchor.delay_k="$K"
    commeff.anchor.cadence="$CADENCE"
    commeff.anchor.placement="$PLACEMENT"
    commeff.anchor.sync="$SYNC"
    commeff.anchor.probe="$PROBE"
    commeff.anchor.n_gpus_per_node="${ANCHOR_NGPUS:-$NGPUS}"
    commeff.merger.name="$MERGER"
    commeff.merger.alpha=0.25
    commeff.anchor.beta="$BETA"
    commeff.merger.age_decay="$MU"
    commeff.merger.adaptive.mode="$ADAPTIVE"
    commeff.merger.adaptive.cap="$LAMBDA_CAP"
    commeff.dp_codec.enable="$DP_ENABLE"
    commeff.dp_codec.rank="$DP_RANK"
    commeff.dp_codec.start_iter="$DP_START"
    commeff.dp_codec.params="$DP_PARAMS"
    commeff.dp_codec.embedding_rank="$DP_EMBED_RANK"
    commeff.dp_codec.factor_precision="$DP_PRECISION"
    commeff.dp_codec.seed="$SEED"
)

cmd=(python3 -m verl_commeff.main "${data[@]}" "${model[@]}" "${actor[@]}" "${rollout[@]}" "${algorithm[@]}"
     "${trainer[@]}" "${commeff[@]}" "${preset[@]}" "$@")
if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "${cmd[@]}"; echo
else
    "${cmd[@]}"
fi

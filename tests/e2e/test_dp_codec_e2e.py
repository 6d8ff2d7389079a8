"""End to end on CPU: 2 actor processes as 2 HSDP replicas, PowerSGD between them (SPEC §5), the byte ledger (§6).

``recipes/gsm8k_grpo_commeff.sh`` in its cpu_tiny preset with ``NGPUS=2 FSDP_SIZE=1``: verl
builds a 2 × 1 ``("ddp", "fsdp")`` mesh, so each actor rank is one replica holding whole
gradients; ``DP_CODEC=1`` makes the plugin own the cross-replica exchange with its defaults
(every 2-D parameter, bf16 factors) at rank 4. The measured cross-replica bytes are checked
against an independent count from the model's parameter shapes, the codec's rank and torch's
compression rule, and the anchor's paths of the ledger against the model's own tensor sizes.
"""

import math

from transformers import AutoConfig, AutoModelForCausalLM

from tests.e2e.harness import records, recipe_env, run

STEPS, TICKS_PER_STEP, DP_RANK, DP_START, K, CADENCE = 4, 2, 4, 2, 2, 2
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # SPEC §3 default
MIN_COMPRESSION_RATE = 2.0  # commeff.dp_codec.min_compression_rate default (torch's)
FP32, BF16 = 4, 2  # dense gradients; P and Q factors (commeff.dp_codec.factor_precision default)


def expected_tick_bytes(model_dir):
    """(compressed, dense, target) bytes one replica sends per tick, from the parameter shapes alone.

    Compressed: a 2-D parameter n × m (targets, embedding, LM head) with r = min(n, m, rank) and
    (n + m)·r·rate < n·m sends P (n × r) and Q (m × r) in bf16; everything else (norms, biases)
    its n·m in fp32. Dense: every parameter. Target: the target matrices (what M̄ carries as fp32
    shards).
    """
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    compressed = dense = target = 0
    for name, p in model.named_parameters():
        dense += p.numel() * FP32
        is_target = p.dim() == 2 and any(name.endswith(f".{s}.weight") for s in TARGETS)
        target += p.numel() * FP32 if is_target else 0
        n, m = p.shape if p.dim() == 2 else (p.numel(), 1)
        r = min(n, m, DP_RANK)
        matrix = p.dim() == 2
        compressed += (n + m) * r * BF16 if matrix and (n + m) * r * MIN_COMPRESSION_RATE < n * m else p.numel() * FP32
    return compressed, dense, target


def test_two_replicas_train_with_the_dp_codec_and_log_the_byte_ledger(tmp_path, learnable_preset):
    env = recipe_env(tmp_path, learnable_preset, "dp2", STEPS=STEPS, TEST_FREQ=-1, K=K, CADENCE=CADENCE,
                     NGPUS=2, FSDP_SIZE=1, DP_CODEC=1, DP_RANK=DP_RANK, DP_START=DP_START)
    run(["bash", "recipes/gsm8k_grpo_commeff.sh", f"trainer.default_local_dir={tmp_path / 'ckpt'}",
         "trainer.val_before_train=False",
         # the ledger checks below count fp32 M̄ shards and dense fp32 snapshots
         "commeff.anchor.transport=shards", "commeff.anchor.snapshot_keyframe_every=1"], env, tmp_path, "dp2")
    check_dp_run(records(tmp_path, "dp2"), learnable_preset / "model")


def check_dp_run(recs, model_dir):
    """The assertions on a finished run's records (also usable on a run made by hand with the same knobs)."""
    # training proceeded: every step ran, with finite losses and metrics
    train_steps = sorted(s for s, d in recs.items() if "actor/pg_loss" in d)
    assert train_steps == list(range(1, STEPS + 1))
    for step in train_steps:
        assert math.isfinite(recs[step]["actor/pg_loss"]) and math.isfinite(recs[step]["actor/grad_norm"])
        assert all(math.isfinite(v) for k, v in recs[step].items() if k.startswith("commeff/")), step
    assert recs[STEPS]["commeff/tick"] == STEPS * TICKS_PER_STEP

    compressed, dense, target = expected_tick_bytes(model_dir)
    expected_ratio = compressed / dense
    assert expected_ratio < 0.06  # every matrix at rank 4 in bf16: only the 1-D rest stays dense
    for step in train_steps:
        rec = recs[step]
        # real replicas, one exchange per tick, no simulation
        assert rec["commeff/dp_codec/ticks"] == TICKS_PER_STEP and rec["commeff/dp_codec/simulated_ticks"] == 0
        assert rec["commeff/bytes/dp_codec/dense_equiv"] == TICKS_PER_STEP * dense
        dense_ticks = max(0, min(TICKS_PER_STEP, DP_START - (step - 1) * TICKS_PER_STEP))  # start_iter: dense
        want = dense_ticks * dense + (TICKS_PER_STEP - dense_ticks) * compressed
        assert rec["commeff/bytes/dp_codec/sent"] == want, (step, rec["commeff/bytes/dp_codec/sent"], want)
        if dense_ticks == 0:
            assert math.isclose(rec["commeff/bytes/dp_codec/ratio"], expected_ratio, rel_tol=1e-9)
            assert rec["commeff/dp_codec/compressed_matrices"] > 0
        # one shard per replica: no intra-replica traffic
        assert rec["commeff/bytes/dp_codec/intra_sent"] == 0

    # the anchor's paths of the ledger, against the model's own sizes (whole tensors: one shard per rank)
    last = recs[STEPS]
    snapshots = [recs[s]["commeff/bytes/anchor_snapshot/sent"] for s in train_steps]
    assert set(snapshots) <= {0.0, float(dense)} and sum(snapshots) == last["commeff/anchor/snapshots"] * dense > 0
    m_bar = sum(recs[s]["commeff/bytes/anchor_m_bar/sent"] for s in train_steps)
    assert m_bar == last["commeff/anchor/fires_used"] * target > 0  # shards transport: fp32 M̄ of the targets
    assert sum(recs[s]["commeff/bytes/anchor_minibatch/sent"] for s in train_steps) > 0
    for step in train_steps:  # the totals add every path
        rec = recs[step]
        paths = [k[: -len("/sent")] for k in rec if k.startswith("commeff/bytes/") and k.endswith("/sent")
                 and not k.startswith("commeff/bytes/total/")]
        assert math.isclose(rec["commeff/bytes/total/sent"], sum(rec[p + "/sent"] for p in paths), rel_tol=1e-9)
        assert math.isclose(rec["commeff/bytes/ratio"], rec["commeff/bytes/total/sent"] / rec["commeff/bytes/total/dense_equiv"])

"""The anchor worker's M against an independent dense gradient at the snapshot weights (in-process, CPU)."""

import pytest
import torch

from tests.verl_harness import compose_ppo_config, init_single_process_world, make_ppo_batch
from verl_commeff.config import AdaptiveLambdaConfig, AnchorConfig, CodecConfig, CommEffConfig, MergerConfig

STRATEGIES = ["fsdp", "fsdp2"]


def _config(model_dir, strategy):
    extra = ("actor_rollout_ref.actor.fsdp_config.use_orig_params=True",) if strategy == "fsdp" else ()
    return compose_ppo_config(model_dir, strategy, extra=extra).actor_rollout_ref


def _minibatch(batch):
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    batch.batch["old_log_probs"] = torch.zeros_like(batch.batch["advantages"])
    td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=False, global_batch_size=4, compute_loss=True)
    return td


def _dense_reference(model_dir, state_dict, batch, target_names, project=None):
    """Plain HF + torch: token-mean GRPO policy gradient at ratio 1, −Σ A·log π / #tokens.

    ``project=(layer, Q)``: decoder layer ``layer``'s output h is replaced by h·Q·Qᵀ (the codec, by hand)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="sdpa")
    model.load_state_dict(state_dict)
    if project is not None:
        layer, q = project

        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            hq = h @ q @ q.T
            return (hq, *output[1:]) if isinstance(output, tuple) else hq

        model.model.layers[layer].register_forward_hook(hook)
    b = batch.batch
    logits = model(b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"]).logits
    r = b["responses"].shape[1]
    log_probs = torch.log_softmax(logits[:, -r - 1 : -1], -1).gather(-1, b["responses"].unsqueeze(-1)).squeeze(-1)
    mask = b["response_mask"].float()
    loss = -(b["advantages"] * log_probs * mask).sum() / mask.sum()
    loss.backward()
    params = dict(model.named_parameters())
    return [params[name].grad for name in target_names]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_anchor_m_is_the_dense_gradient_at_the_snapshot_weights(strategy, tiny_model_dir):
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from verl_commeff.anchor.worker import AnchorWorker
    from verl_commeff.workers.weight_shards import export_local_shards

    init_single_process_world()
    cfg = CommEffConfig(codec=CodecConfig(q_source="fast"),
                        anchor=AnchorConfig(delay_k=0, cadence=1, beta=0.0, transport="shards"),
                        merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="off")))

    # generator weights that differ from the checkpoint: an actor after one update
    actor = ActorRolloutRefWorker(_config(tiny_model_dir, strategy), role="actor")
    actor.init_model()
    from tests.verl_harness import log_probs as _log_probs
    from tests.verl_harness import update as _update

    warm = make_ppo_batch(seed=5)
    warm.batch["old_log_probs"] = _log_probs(actor, warm)
    _update(actor, warm)
    snapshot = export_local_shards(actor.actor.engine.module)
    full_state = {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for n, p in actor.actor.engine.module.named_parameters()
    }
    full_state = {n.replace("_fsdp_wrapped_module.", ""): t for n, t in full_state.items()}

    anchor = AnchorWorker(_config(tiny_model_dir, strategy))
    anchor.init_model()
    anchor.anchor_setup(cfg, ticks_per_step=1)
    batch = make_ppo_batch(seed=11)
    result = anchor.anchor_fire(fire_tick=3, source_tick=3, minibatch=_minibatch(batch), snapshot=[snapshot])

    names = [n for n, _ in anchor._anchor.targets]
    expected = _dense_reference(tiny_model_dir, full_state, batch, names)
    assert result.fire_tick == 3 and result.sketch is None and len(result.m_bar) == len(names) == 28
    assert result.backwards == 2  # 4 samples in micro-batches of 2: two real backward passes
    for name, got, want in zip(names, result.m_bar, expected):
        torch.testing.assert_close(got.reshape(want.shape), want, rtol=1e-4, atol=1e-6, msg=name)
    # the anchor never steps: its weights stay the snapshot's
    assert all(torch.equal(a, b) for a, b in zip(export_local_shards(anchor.actor.engine.module), snapshot))


def test_colocated_anchor_offloads_between_fires(tiny_model_dir, monkeypatch):
    """placement=colocated on an accelerator: model off the device except during a fire (order of moves)."""
    import verl_commeff.cpu_platform as cpu_platform
    from verl_commeff.anchor.worker import AnchorWorker
    from verl_commeff.workers.weight_shards import export_local_shards

    init_single_process_world()
    anchor = AnchorWorker(_config(tiny_model_dir, "fsdp2"))
    anchor.init_model()
    moves = []
    engine = anchor.actor.engine
    monkeypatch.setattr(engine, "to", lambda device, **kw: moves.append((device, kw["model"])))
    monkeypatch.setattr(cpu_platform, "is_cpu_platform", lambda: False)  # behave as on a GPU node
    cfg = CommEffConfig(codec=CodecConfig(q_source="fast"),
                        anchor=AnchorConfig(delay_k=0, cadence=1, beta=0.0, transport="shards", placement="colocated"),
                        merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="off")))
    anchor.anchor_setup(cfg, ticks_per_step=1)
    assert moves == [("cpu", True)]  # offloaded right after set-up
    snapshot = export_local_shards(engine.module)
    anchor.anchor_fire(fire_tick=1, source_tick=1, minibatch=_minibatch(make_ppo_batch(seed=1)), snapshot=[snapshot])
    from verl.utils.device import get_device_name

    model_moves = [device for device, model in moves if model]  # (train mode's own optimizer/grad moves aside)
    assert model_moves == ["cpu", get_device_name(), "cpu"]  # on the device only for the fire


def test_fire_with_non_finite_gradient_is_rejected_and_m_bar_kept(tiny_model_dir):
    """Fault injection: a NaN in the snapshot weights makes M non-finite; the fire is rejected, M̄ kept."""
    from verl_commeff.anchor.worker import AnchorWorker
    from verl_commeff.workers.weight_shards import export_local_shards

    init_single_process_world()
    anchor = AnchorWorker(_config(tiny_model_dir, "fsdp2"))
    anchor.init_model()
    anchor.anchor_setup(CommEffConfig(codec=CodecConfig(q_source="fast"),
                                      anchor=AnchorConfig(delay_k=0, cadence=1, beta=0.5, transport="shards"),
                                      merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="off"))),
                        ticks_per_step=1)
    good = export_local_shards(anchor.actor.engine.module)
    bad = [t.clone() for t in good]
    bad[len(bad) // 2].view(-1)[0] = float("nan")  # one weight of a middle layer
    first = anchor.anchor_fire(fire_tick=1, source_tick=1, minibatch=_minibatch(make_ppo_batch(seed=1)),
                               snapshot=[good])
    held = [t.clone() for t in anchor._anchor.ema.m_bar]
    second = anchor.anchor_fire(fire_tick=2, source_tick=2, minibatch=_minibatch(make_ppo_batch(seed=2)),
                                snapshot=[bad])
    assert not first.rejected and second.rejected and second.m_bar is None and second.sketch is None
    assert anchor._anchor.ema.rejected == 1 and anchor._anchor.ema.updates == 1
    assert all(torch.equal(a, b) for a, b in zip(anchor._anchor.ema.m_bar, held))
    third = anchor.anchor_fire(fire_tick=3, source_tick=3, minibatch=_minibatch(make_ppo_batch(seed=3)),
                               snapshot=[good])
    assert not third.rejected and all(torch.isfinite(m).all() for m in third.m_bar)


def test_anchor_state_round_trip_makes_the_next_fire_exact(tiny_model_dir):
    """Resume on the anchor side (issue 10, item 5): an anchor restored from the state after fires 1-2
    computes fire 3 exactly as the anchor that never stopped: same M̄ (EMA), sketch and Q."""
    from verl_commeff.anchor.worker import AnchorWorker
    from verl_commeff.workers.weight_shards import export_local_shards

    init_single_process_world()
    cfg = CommEffConfig(codec=CodecConfig(q_source="anchor", rank=16, pp_size=2),
                        anchor=AnchorConfig(delay_k=0, cadence=1, beta=0.5, transport="shards"),
                        merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="off")))

    def new_anchor():
        anchor = AnchorWorker(_config(tiny_model_dir, "fsdp2"))
        anchor.init_model()
        anchor.anchor_setup(cfg, ticks_per_step=1)
        return anchor

    def fire(anchor, tick):
        return anchor.anchor_fire(fire_tick=tick, source_tick=tick, minibatch=_minibatch(make_ppo_batch(seed=tick)),
                                  snapshot=[snapshot])

    uninterrupted = new_anchor()
    snapshot = export_local_shards(uninterrupted.actor.engine.module)
    bootstrap_q = uninterrupted._anchor.codec.live_basis.clone()
    for tick in (1, 2):
        fire(uninterrupted, tick)
    saved = uninterrupted.anchor_state_dict()
    want = fire(uninterrupted, 3)
    assert saved["ema"]["updates"] == 2 and not torch.equal(saved["codec"]["live"], bootstrap_q)

    resumed = new_anchor()
    resumed.anchor_load_state_dict([saved])
    got = fire(resumed, 3)
    assert got.ema_updates == want.ema_updates == 3
    torch.testing.assert_close(got.q_fingerprint, want.q_fingerprint, rtol=0, atol=0)  # sketched against the same Q
    torch.testing.assert_close(got.sketch, want.sketch, rtol=1e-6, atol=1e-6)
    for g, w in zip(got.m_bar, want.m_bar):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)  # M̄ = β·M̄₂ + (1 − β)·M₃, not a fresh M₃
    torch.testing.assert_close(resumed._anchor.codec.live_basis, uninterrupted._anchor.codec.live_basis,
                               rtol=1e-6, atol=1e-6)

    # control: without the restored state, fire 3 differs (fresh EMA, bootstrap Q): the check above can fail
    fresh = fire(new_anchor(), 3)
    assert fresh.ema_updates == 1 and not torch.equal(fresh.q_fingerprint, want.q_fingerprint)


def test_dose_probe_measures_the_codec_gradient_against_an_independent_projected_reference(tiny_model_dir):
    """anchor.probe=on, K=0: the fire's evidence equals the closed form on a plain-HF reference: C = the same loss's
    gradient with the boundary output replaced by h·Q·Qᵀ (the anchor's live Q), D = the dense gradient, s = sign(M̄)
    = sign(D) (first fire, β = 0)."""
    from verl_commeff.anchor.worker import AnchorWorker
    from verl_commeff.codec.stages import boundary_layers
    from verl_commeff.mergers.evidence_dose import evidence_from_sums, signed_ema_sums
    from verl_commeff.workers.weight_shards import export_local_shards

    init_single_process_world()
    cfg = CommEffConfig(codec=CodecConfig(rank=2, pp_size=2, q_source="anchor", init="random"),
                        anchor=AnchorConfig(delay_k=0, cadence=1, beta=0.0, transport="shards", probe="on"),
                        merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="off")))
    anchor = AnchorWorker(_config(tiny_model_dir, "fsdp2"))
    anchor.init_model()
    anchor.anchor_setup(cfg, ticks_per_step=1)
    module = anchor.actor.engine.module
    snapshot = export_local_shards(module)
    state = {n.replace("_fsdp_wrapped_module.", ""): (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
             for n, p in module.named_parameters()}
    q = anchor._anchor.codec.live_basis[0].clone()  # (H, r): the Q live on the "actor" at tick 1
    batch = make_ppo_batch(seed=12)
    result = anchor.anchor_fire(fire_tick=1, source_tick=1, minibatch=_minibatch(batch), snapshot=[snapshot])

    names = [n for n, _ in anchor._anchor.targets]
    dense = _dense_reference(tiny_model_dir, state, batch, names)
    from transformers import AutoConfig

    layer = boundary_layers(AutoConfig.from_pretrained(tiny_model_dir).num_hidden_layers, 2)[0]
    projected = _dense_reference(tiny_model_dir, state, batch, names, project=(layer, q))
    sums = signed_ema_sums(projected, dense, [d >= 0 for d in dense], alpha=0.25)
    want = evidence_from_sums(sums.tolist(), cap=1.0, held=True)
    got = result.dose_evidence
    assert result.backwards == 4  # the dense pass and the probe's pass, 2 micro-batches each
    assert got["held_age"] == 0.0 and got["held_agree"] == 1.0
    for key in ("cos_codec", "cos_merged", "cos_full", "lambda_star"):
        assert got[key] == pytest.approx(want[key], abs=2e-4), key
    assert got["cos_codec"] < 0.99  # r = 2 of 64 loses a part of the gradient: the probe really projected
    # the probe leaves M (= the dense gradient) untouched
    for name, m, want_m in zip(names, result.m_bar, dense):
        torch.testing.assert_close(m.reshape(want_m.shape), want_m, rtol=1e-4, atol=1e-6, msg=name)
    # the fire refreshed Q (q_cadence 1): the probe knows the actor has it live from the next step (tick 2) on
    probe = anchor._anchor.probe
    torch.testing.assert_close(probe.basis_at(1)[0], q, atol=0, rtol=0)
    torch.testing.assert_close(probe.basis_at(2), anchor._anchor.codec.live_basis, atol=0, rtol=0)
    assert not torch.equal(probe.basis_at(2)[0], q)

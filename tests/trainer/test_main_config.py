"""The hydra entry point's config and the plugin's registrations, as a user reaches them."""

import pytest


def _compose(overrides=()):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl_commeff.conf", version_base=None):
        return compose(config_name="commeff_trainer", overrides=list(overrides))


def test_import_verl_registers_the_commeff_trainer_and_anchor_loss():
    import verl  # noqa: F401  -- the verl.plugins entry point runs here
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.trainer.ppo.v1.trainer_base import get_trainer_cls

    from verl_commeff.anchor.loss import policy_loss_at_ratio_one
    from verl_commeff.trainer.commeff_trainer import CommEffTrainer

    assert get_trainer_cls("commeff") is CommEffTrainer
    assert get_policy_loss_fn("commeff_anchor") is policy_loss_at_ratio_one


def test_config_is_verls_ppo_trainer_plus_the_commeff_node():
    cfg = _compose(["commeff.anchor.delay_k=20", "commeff.codec.q_cadence=20", "data.train_batch_size=128"])
    assert cfg.trainer.v1.trainer_mode == "commeff" and cfg.trainer.use_v1
    assert cfg.commeff.anchor.delay_k == 20 and cfg.commeff.codec.q_cadence == 20
    assert cfg.data.train_batch_size == 128 and "actor_rollout_ref" in cfg  # verl's own tree is all there


@pytest.mark.parametrize("overrides, message", [
    (["trainer.use_v1=false"], "set trainer.use_v1=True"),
    (["trainer.v1.trainer_mode=sync"], "only read by trainer.v1.trainer_mode=commeff"),
    (["commeff.merger.alpha=2.0"], "commeff.merger.alpha=2.0 is out of range"),
    (["+commeff.anchor.delay=3"], "commeff.anchor.delay is not a knob"),
])
def test_check_config_names_what_to_change(overrides, message):
    from verl_commeff.config import CommEffConfigError
    from verl_commeff.main import check_config

    with pytest.raises(CommEffConfigError, match=message):
        check_config(_compose(overrides))


def test_drop_in_form_on_verls_own_main_ppo_config():
    """The documented drop-in: verl's ppo_trainer.yaml + trainer_mode=commeff + `+commeff.*` knobs."""
    import os

    import verl
    from hydra import compose, initialize_config_dir

    from verl_commeff.config import to_commeff_config

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=[
            "trainer.v1.trainer_mode=commeff", "+commeff.anchor.delay_k=20", "+commeff.anchor.cadence=20",
            "+commeff.merger.age_decay=0.85"])
    commeff = to_commeff_config(cfg.get("commeff"))
    assert (commeff.anchor.delay_k, commeff.anchor.cadence, commeff.merger.age_decay) == (20, 20, 0.85)
    assert commeff.codec.rank == 77  # knobs not given keep their defaults
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        bare = compose(config_name="ppo_trainer", overrides=["trainer.v1.trainer_mode=commeff"])
    assert to_commeff_config(bare.get("commeff")) == to_commeff_config({})  # no node at all: all defaults

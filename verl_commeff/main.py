"""``python -m verl_commeff.main``: verl's PPO entry point with the commeff trainer config.

The config is verl's ``ppo_trainer.yaml`` extended with the ``commeff`` node
(``conf/commeff_trainer.yaml``), so every verl override works unchanged, plus
``commeff.*`` overrides. The training itself is verl's: ``run_ppo`` with its v1 task
runner, which builds the trainer registered as ``trainer.v1.trainer_mode=commeff``.
"""

import hydra

from verl_commeff.startup_checks import check_inputs


def check_config(config) -> None:
    """Checks the plugin needs before Ray starts, with errors that say what to change."""
    from verl_commeff.config import CommEffConfigError, to_commeff_config

    to_commeff_config(config.get("commeff"))  # every knob validated now, not in a Ray actor
    if not config.trainer.use_v1:
        raise CommEffConfigError("verl-commeff runs on verl's v1 trainer: set trainer.use_v1=True")
    if config.trainer.v1.trainer_mode != "commeff":
        raise CommEffConfigError(
            f"trainer.v1.trainer_mode={config.trainer.v1.trainer_mode!r}: the commeff node is only read by "
            "trainer.v1.trainer_mode=commeff")


@hydra.main(config_path="conf", config_name="commeff_trainer", version_base=None)
def main(config) -> None:
    import verl_commeff.plugin  # noqa: F401  -- fail here, loudly, if the plugin cannot load
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    check_config(config)
    check_inputs(config)  # model dir, data columns, codec vs the model's config.json, K vs the run: before Ray
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    run_ppo(config, task_runner_class=TaskRunnerV1)


if __name__ == "__main__":
    main()

"""verl-commeff's ``verl.plugins`` entry point, imported by ``import verl`` in every process.

verl 0.9.1 loads every ``verl.plugins`` entry point at the end of ``verl/__init__.py``
(driver and Ray workers alike) and swallows load errors at debug level; this module logs
them as errors itself before re-raising, so a broken install is never silent.

What it registers:

* the ``cpu`` platform (:mod:`verl_commeff.cpu_platform`) in verl's platform registry,
  chosen by verl's auto-detection only where no accelerator is present; on it, verl's FSDP
  engines and gloo process groups are made to work;
* the ``commeff`` trainer in verl's trainer registry (``trainer.v1.trainer_mode=commeff``,
  :mod:`verl_commeff.trainer.commeff_trainer`), and the anchor's ratio-1 policy loss in
  verl's policy-loss registry (:mod:`verl_commeff.anchor.loss`).
"""

import logging

_log = logging.getLogger("verl_commeff")

try:
    from verl_commeff.cpu_platform import install_engine_support

    install_engine_support()
    import verl_commeff.anchor.loss  # noqa: F401  -- registers the commeff_anchor policy loss
    import verl_commeff.trainer.commeff_trainer  # noqa: F401  -- registers trainer_mode=commeff
    import verl_commeff.rollout.registration  # noqa: F401  -- rollout.name=hf in verl's rollout registries
except Exception:  # pragma: no cover - reported, then re-raised for verl to see
    _log.exception("verl-commeff plugin failed to load")
    raise

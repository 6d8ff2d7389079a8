"""The comm-eff actor engine: verl's FSDP LM engine with the codec, tick clock and merger.

:func:`commeff_engine_class` mixes :class:`CommEffEngineMixin` into whatever FSDP engine
class verl's ``EngineRegistry`` built for the actor (``FSDPEngineWithLMHead`` for both
``strategy=fsdp`` and ``fsdp2``), so verl's own engine code runs unchanged and the mixin
only wraps four methods:

- ``train_batch`` (one PPO mini-batch = one tick): advance the clock, run the forward and
  backward as the codec's ``train`` pass, attach ``commeff/*`` metrics on the step's last tick;
- ``optimizer_step``: after backward and FSDP's gradient reduction inside the replica,
  exchange the gradient across HSDP replicas (``commeff.dp_codec``: PowerSGD for the
  targets; FSDP2's own cross-replica all-reduce is switched off at set-up), take the anchor
  result due at this tick and merge the target gradients, then verl's own clipping, non-finite
  skip and ``optimizer.step`` (``super().optimizer_step()``);
- ``infer_batch`` (the actor's only inference: the old-log-prob pass): a staged Q goes live
  first if a step ended since, then the forward runs as the codec's ``old_log_prob`` pass;
  the very first one (``commeff.codec.init=activations``) runs once more before, as the
  ``bootstrap`` pass that sets the first Q from the activations;
- ``disable_adapter`` (LoRA's reference pass through the actor): the codec's ``ref`` pass.

Until :meth:`CommEffEngineMixin.commeff_setup` is called, or with ``commeff.enable=false``,
every method is exactly verl's (bit-identical results).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from verl_commeff.workers.actor_state import CommEffActorState

if TYPE_CHECKING:
    from verl_commeff.config import CommEffConfig

__all__ = ["CommEffEngineMixin", "commeff_engine_class"]

STATE_FILE = "commeff_state_rank{rank}.pt"


class CommEffEngineMixin:
    """Wraps a verl FSDP engine's train/infer/optimizer steps with the comm-eff circuit."""

    commeff: Optional[CommEffActorState] = None
    _commeff_resume: Optional[dict] = None  # state read by load_checkpoint before commeff_setup

    # ---- set-up ------------------------------------------------------------------------
    def commeff_setup(self, cfg: "CommEffConfig", ticks_per_step: int) -> None:
        """Build the actor's comm-eff state on the initialised engine (every rank).

        Raises:
            ValueError: an engine set-up the plugin cannot serve (FSDP1 without
                ``use_orig_params``, Ulysses sequence parallelism).
        """
        if not cfg.enable:
            self.commeff = None
            return
        from torch.distributed.fsdp import FullyShardedDataParallel

        module = self.module
        if isinstance(module, FullyShardedDataParallel) and not self.engine_config.use_orig_params:
            raise ValueError(
                "commeff needs per-matrix gradients: set actor_rollout_ref.actor.fsdp_config.use_orig_params=True "
                "with strategy=fsdp (or use strategy=fsdp2)"
            )
        if getattr(self, "ulysses_sequence_parallel_size", 1) > 1:
            raise ValueError(
                "commeff does not support Ulysses sequence parallelism yet: "
                "set actor_rollout_ref.actor.ulysses_sequence_parallel_size=1"
            )
        hf_config = self.model_config.hf_config
        merger_group = module.process_group if isinstance(module, FullyShardedDataParallel) else None
        dp_groups = None
        if cfg.dp_codec.enable:
            from verl_commeff.dp_codec.hsdp import hsdp_groups, own_replica_exchange

            if isinstance(module, FullyShardedDataParallel):
                raise ValueError(
                    "commeff.dp_codec needs row-sharded gradients: set actor_rollout_ref.actor.strategy=fsdp2"
                )
            dp_groups = hsdp_groups(getattr(self, "device_mesh", None))
            if dp_groups.replicas > 1:  # HSDP: the plugin owns the cross-replica exchange
                own_replica_exchange(module)
        self.commeff = CommEffActorState(
            cfg,
            ticks_per_step,
            module,
            hidden_size=hf_config.hidden_size,
            num_layers=hf_config.num_hidden_layers,
            dp_group=None,
            merger_group=merger_group,
            dp_groups=dp_groups,
        )
        if self._commeff_resume is not None:  # verl loads checkpoints before the trainer sets us up
            self.commeff.load_state_dict(self._commeff_resume)
            self._commeff_resume = None

    def _commeff_active(self) -> bool:
        return self.commeff is not None

    def _commeff_boundary(self) -> None:
        """Between steps (every tick of the current step taken), a staged Q goes live.

        Derived from the clock, not remembered, so a resumed run activates exactly as an
        uninterrupted one would.
        """
        if self.commeff.clock.step_complete:
            self.commeff.at_step_boundary()

    # ---- the wrapped steps -------------------------------------------------------------
    def train_batch(self, data, loss_function: Callable) -> Any:
        if not self._commeff_active():
            return super().train_batch(data, loss_function)
        state = self.commeff
        self._commeff_boundary()  # old-log-prob pass skipped: still activate before training
        state.begin_tick()
        with state.pass_scope("train"):
            outputs = super().train_batch(data, loss_function)
        if state.clock.step_complete:  # this was the step's last tick
            metrics = state.metrics()  # every rank: the merger's cross-rank checks are collective
            if self.is_mp_src_rank_with_outputs():
                outputs["metrics"].update({key: [value] for key, value in metrics.items()})
        return outputs

    def optimizer_step(self):
        if self._commeff_active():
            state = self.commeff
            grads = [p.grad if p.grad is not None else p.detach().new_zeros(0) for _, p in state.targets]
            state.before_optimizer_step(grads)
        return super().optimizer_step()

    def infer_batch(self, data, loss_function: Optional[Callable] = None) -> Any:
        if not self._commeff_active():
            return super().infer_batch(data, loss_function)
        self._commeff_boundary()
        codec = self.commeff.codec
        if codec is not None and codec.needs_bootstrap:  # once: the first Q from this batch's activations
            with self.commeff.pass_scope("bootstrap"):
                super().infer_batch(data, loss_function)
            codec.finish_bootstrap()
        with self.commeff.pass_scope("old_log_prob"):
            return super().infer_batch(data, loss_function)

    @contextlib.contextmanager
    def disable_adapter(self):
        with super().disable_adapter():
            if not self._commeff_active():
                yield
            else:
                with self.commeff.pass_scope("ref"):
                    yield

    # ---- checkpointing -----------------------------------------------------------------
    def save_checkpoint(self, local_path, hdfs_path=None, global_step: int = 0, max_ckpt_to_keep=None, **kwargs):
        out = super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep, **kwargs)
        if self._commeff_active() and local_path is not None:
            os.makedirs(local_path, exist_ok=True)
            torch.save(self.commeff.state_dict(), os.path.join(local_path, STATE_FILE.format(rank=_rank())))
        return out

    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load: bool = False, **kwargs):
        path = None if local_path is None else os.path.join(local_path, STATE_FILE.format(rank=_rank()))
        state = torch.load(path, weights_only=False) if path and os.path.exists(path) else None
        out = super().load_checkpoint(local_path, hdfs_path, del_local_after_load, **kwargs)
        if self._commeff_active():
            if state is None:
                raise FileNotFoundError(
                    f"resuming a commeff run from {local_path} without its comm-eff state {path}: "
                    "the tick clock, Q and M̄ would restart from scratch"
                )
            self.commeff.load_state_dict(state)
        else:
            self._commeff_resume = state  # applied by commeff_setup
        return out


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


@functools.lru_cache(maxsize=None)
def commeff_engine_class(engine_cls: type) -> type:
    """``engine_cls`` with :class:`CommEffEngineMixin` in front (one class per engine class).

    Raises:
        TypeError: ``engine_cls`` is not one of verl's FSDP engines.
    """
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    if not issubclass(engine_cls, FSDPEngine):
        raise TypeError(
            f"commeff runs on verl's FSDP engines (strategy=fsdp or fsdp2), not {engine_cls.__name__}"
        )
    return type(f"CommEff{engine_cls.__name__}", (CommEffEngineMixin, engine_cls), {})

"""The anchor's loss: verl's actor loss with the policy-gradient term at importance ratio 1.

The anchor replays a mini-batch with the very weights that generated it, so the data is
on-policy and the PPO ratio is exactly 1: no clipping applies and the policy-gradient term
is ``−A · ∇log π``. This module registers that term in verl's policy-loss registry as
``commeff_anchor`` and builds the anchor's loss function as verl's own ``ppo_loss`` with
``policy_loss.loss_mode=commeff_anchor``, so everything else is the actor's: loss
aggregation mode and normalisation (``agg_loss`` with the global mini-batch's token count),
the entropy bonus and the KL loss when the actor uses them.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any, Callable, Optional

import torch
from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss

__all__ = ["ANCHOR_LOSS_MODE", "anchor_loss_fn", "policy_loss_at_ratio_one"]

ANCHOR_LOSS_MODE = "commeff_anchor"


@register_policy_loss(ANCHOR_LOSS_MODE)
def policy_loss_at_ratio_one(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Optional[Any] = None,
    rollout_is_weights: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """GRPO's policy-gradient term at ratio 1: value ``−A``, gradient ``−A·∇log π``, per token.

    Args:
        old_log_prob: unused: the ratio is taken against ``log_prob`` itself (on-policy replay).
        log_prob: (B, R) log-probabilities of the response tokens under the anchor's weights.
        advantages: (B, R) GRPO advantages of the replayed mini-batch.
        response_mask: (B, R) response tokens.
        loss_agg_mode: verl's aggregation mode (the actor's).
        config: the actor config (its ``global_batch_info`` carries the normalisation).
        rollout_is_weights: must be None: replay at the generator weights needs no correction.
    """
    if rollout_is_weights is not None:
        raise ValueError("the anchor replays on-policy data: rollout importance-sampling weights must be off")
    ratio = torch.exp(log_prob - log_prob.detach())  # (B, R): 1, with ∇ratio = ∇log π
    pg_losses = -advantages * ratio  # (B, R)
    batch_info = config.global_batch_info if config is not None else {}
    pg_loss = agg_loss(loss_mat=pg_losses, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **batch_info)
    return pg_loss, {}


def anchor_loss_fn(actor_config: Any) -> Callable:
    """verl's ``ppo_loss`` for ``actor_config`` with the policy term at ratio 1.

    Args:
        actor_config: the actor's ``ActorConfig`` (dataclass), as verl's worker builds it.

    Returns:
        ``loss_function(model_output, data, dp_group=None)`` for the engine.
    """
    from verl.workers.utils.losses import ppo_loss

    config = copy.deepcopy(actor_config)
    policy_loss = config.policy_loss
    if isinstance(policy_loss, dict):
        policy_loss["loss_mode"] = ANCHOR_LOSS_MODE
    else:
        object.__setattr__(policy_loss, "loss_mode", ANCHOR_LOSS_MODE)
    return partial(ppo_loss, config=config)

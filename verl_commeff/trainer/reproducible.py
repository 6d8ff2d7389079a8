"""Reproducible batches for verl's v1 trainer: step-derived prompt uids and a fixed sample order.

Two things in verl 0.9.1's v1 trainer make a rerun with the same seed train on a different
batch, although the dataloader yields the same prompts (its sampler is seeded by ``data.seed``,
and an unseeded ``torch.Generator`` starts from a fixed seed too):

1. every prompt gets a random ``uid`` (``uuid4``, ``trainer_base._fetch_one_gen_batch`` and
   ``_validate``). The uid
   keys the trajectories in TransferQueue and, through
   :mod:`verl_commeff.rollout.agent_loop`, the sampling seed of each trajectory;
2. the replay buffer returns a batch's trajectories in the order they reached TransferQueue,
   i.e. in the order rollouts finished (``ReplayBuffer._materialize_batch``). That order then
   decides mini-batch membership and the order of every sum in the update.

:class:`ReproducibleBatchesMixin` fixes both: uids are ``s<step>-p<position>`` (the position
counts the prompts fetched in this step, so a resumed run gets the same uids; ``v...`` for
validation prompts), and sampled
batches are sorted by (uid, session, output index), i.e. into dataloader order with the
``rollout.n`` samples of a prompt together, before anything reads them.

It also makes ``actor_rollout_ref.rollout.do_sample=False`` mean greedy training rollouts: verl's
agent loop builds sampling params from ``temperature``/``top_k``/``top_p`` only and drops
``do_sample``; the mixin marks every training prompt with verl's own per-prompt override
``__do_sample__=False`` (validation keeps ``val_kwargs``).
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["ReproducibleBatchesMixin", "canonical_order", "step_uids"]


def step_uids(step: int, start: int, count: int, prefix: str = "s") -> list[str]:
    """Prompt uids for positions ``start .. start+count-1`` of step ``step``.

    They sort like (step, position), contain no ``_`` (verl splits trajectory keys
    ``{uid}_{session}_{index}`` on it) and are unique within a run (``prefix`` ``s`` for
    training prompts, ``v`` for validation ones).
    """
    return [f"{prefix}{step:08d}-p{position:06d}" for position in range(start, start + count)]


class _ValidationUids:
    """Stands in for the ``uuid`` module inside verl's ``trainer_base`` during ``_validate``.

    verl's ``_validate`` names each validation prompt ``str(uuid.uuid4())``; this hands out
    ``v<step>-p<position>`` in dataloader order instead.
    """

    def __init__(self, step: int):
        self.step, self.count = step, 0

    def uuid4(self) -> str:
        self.count += 1
        return step_uids(self.step, self.count - 1, 1, prefix="v")[0]


def canonical_order(keys: Sequence[str]) -> list[int]:
    """The permutation that sorts trajectory keys ``{uid}_{session}_{index}`` by (uid, session, index).

    Args:
        keys: TransferQueue keys of one sampled batch (a key without the two numeric parts sorts by itself).

    Returns:
        Indices into ``keys``, in canonical order.
    """

    def sort_key(i: int):
        parts = keys[i].rsplit("_", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            return parts[0], int(parts[1]), int(parts[2])
        return keys[i], -1, -1

    return sorted(range(len(keys)), key=sort_key)


class ReproducibleBatchesMixin:
    """Mix into a verl v1 ``PPOTrainer`` subclass (before it in the bases) for reproducible batches."""

    _uid_step: int | None = None
    _uid_next: int = 0

    def _fetch_one_gen_batch(self):
        """verl's fetch, with step-derived uids and, for ``rollout.do_sample=False``, greedy prompts."""
        from verl.utils import tensordict_utils as tu

        batch = super()._fetch_one_gen_batch()
        if self._uid_step != self.global_steps:
            self._uid_step, self._uid_next = self.global_steps, 0
        tu.assign_non_tensor_stack(batch, "uid", step_uids(self.global_steps, self._uid_next, len(batch)))
        self._uid_next += len(batch)
        if not self.config.actor_rollout_ref.rollout.do_sample:
            tu.assign_non_tensor_stack(batch, "__do_sample__", [False] * len(batch))
        return batch

    def _build_replay_buffer(self):
        """verl's replay buffer whose sampled batches come back in :func:`canonical_order`."""
        buffer = super()._build_replay_buffer()
        sample = buffer.sample

        def sample_in_canonical_order(*args, **kwargs):
            batch, metrics = sample(*args, **kwargs)
            batch.reorder(canonical_order(batch.keys))
            return batch, metrics

        buffer.sample = sample_in_canonical_order
        return buffer

    def _validate(self):
        """verl's validation with step-derived prompt uids (its ``uuid4`` calls answered by :class:`_ValidationUids`)."""
        from verl.trainer.ppo.v1 import trainer_base

        real = trainer_base.uuid
        trainer_base.uuid = _ValidationUids(self.global_steps)
        try:
            return super()._validate()
        finally:
            trainer_base.uuid = real

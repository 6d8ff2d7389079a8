"""Reproducible batches: step-derived uids, canonical sample order, ``do_sample=False`` honoured (no Ray)."""

import random

import numpy as np
import torch
from omegaconf import OmegaConf
from transfer_queue.metadata import KVBatchMeta
from verl.utils import tensordict_utils as tu

from verl_commeff.trainer.reproducible import ReproducibleBatchesMixin, _ValidationUids, canonical_order, step_uids


def test_uids_sort_by_step_then_position_and_never_contain_the_key_separator():
    uids = step_uids(12, 0, 3) + step_uids(3, 7, 5) + step_uids(100, 2, 1)
    assert len(set(uids)) == len(uids) and not any("_" in u for u in uids)
    assert sorted(uids) == step_uids(3, 7, 5) + step_uids(12, 0, 3) + step_uids(100, 2, 1)
    val = _ValidationUids(4)
    assert [str(val.uuid4()) for _ in range(3)] == step_uids(4, 0, 3, prefix="v")


def test_canonical_order_groups_sessions_of_a_prompt_in_dataloader_order():
    uids = step_uids(1, 0, 3)
    expected = [f"{u}_{s}_{i}" for u in uids for s in range(12) for i in range(2)]  # session 10 after 9
    shuffled = expected[:]
    random.Random(0).shuffle(shuffled)
    assert [shuffled[i] for i in canonical_order(shuffled)] == expected


class _Verl:
    """Stands in for verl's PPOTrainer: a dataloader batch with random uids, a replay buffer in finish order."""

    def __init__(self, do_sample=True):
        self.config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"do_sample": do_sample}}})
        self.global_steps = 1

    def _fetch_one_gen_batch(self):
        return tu.get_tensordict({"input_ids": torch.zeros(4, 3),
                                  "uid": np.array([str(random.random()) for _ in range(4)], dtype=object)})

    def _build_replay_buffer(self):
        class Buffer:
            def sample(self, global_steps, partition_id, batch_size):
                keys = [f"{u}_{s}_0" for u in step_uids(global_steps, 0, batch_size) for s in (1, 0)][::-1]
                return KVBatchMeta(keys=keys, tags=[{"key": k} for k in keys], partition_id=partition_id), {}

        return Buffer()


class _Trainer(ReproducibleBatchesMixin, _Verl):
    pass


def test_fetched_uids_are_a_function_of_step_and_position_so_a_resume_gets_the_same():
    run = _Trainer()
    first, second = run._fetch_one_gen_batch(), run._fetch_one_gen_batch()  # a refill within step 1
    run.global_steps = 2
    third = run._fetch_one_gen_batch()
    assert list(first["uid"]) + list(second["uid"]) == step_uids(1, 0, 8)
    assert list(third["uid"]) == step_uids(2, 0, 4)
    resumed = _Trainer()
    resumed.global_steps = 2
    assert list(resumed._fetch_one_gen_batch()["uid"]) == step_uids(2, 0, 4)
    assert "__do_sample__" not in first.keys()


def test_do_sample_false_marks_every_training_prompt_greedy():
    batch = _Trainer(do_sample=False)._fetch_one_gen_batch()
    assert [bool(batch["__do_sample__"][i]) for i in range(4)] == [False] * 4


def test_sampled_batches_come_back_in_canonical_order_with_their_tags():
    batch, _ = _Trainer()._build_replay_buffer().sample(global_steps=3, partition_id="train", batch_size=3)
    expected = [f"{u}_{s}_0" for u in step_uids(3, 0, 3) for s in (0, 1)]
    assert batch.keys == expected and [t["key"] for t in batch.tags] == expected

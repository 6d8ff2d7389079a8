"""The byte ledger's counting (verl_commeff.ledger): bytes from the tensors, per path, totals."""

import pytest
import torch

from verl_commeff.ledger import PATHS, ledger_totals, path_metrics, payload_bytes


def test_payload_bytes_of_a_known_minibatch_is_the_sum_of_its_tensors_nbytes():
    """A verl-style TensorDict (padded and jagged tensors, non-tensor metadata): each tensor's own nbytes."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    input_ids = torch.zeros(4, 10, dtype=torch.int64)
    advantages = torch.zeros(4, 6, dtype=torch.float32)
    mask = torch.ones(4, 6, dtype=torch.bool)
    rows = [torch.arange(n, dtype=torch.int32) for n in (3, 5, 2, 7)]
    jagged = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
    td = TensorDict({"input_ids": input_ids, "advantages": advantages, "response_mask": mask,
                     "positions": jagged}, batch_size=[4])
    tu.assign_non_tensor(td, temperature=1.0, global_batch_size=4)
    expected = 4 * 10 * 8 + 4 * 6 * 4 + 4 * 6 * 1 + (3 + 5 + 2 + 7) * 4
    offsets = jagged.offsets()
    assert payload_bytes(td) == expected + offsets.numel() * offsets.element_size()
    assert payload_bytes([input_ids, {"a": advantages}, "text", 3]) == 4 * 10 * 8 + 4 * 6 * 4


def test_payload_bytes_of_packed_signs_is_the_bits_only():
    from verl_commeff.mergers.sign_bits import pack_signs

    packed = pack_signs([torch.randn(5, 3), torch.randn(16)])
    assert payload_bytes(packed) == 2 + 2 == packed.nbytes()


def test_path_metrics_and_totals():
    assert path_metrics("codec", 10, 40) == {"commeff/bytes/codec/sent": 10.0, "commeff/bytes/codec/dense_equiv": 40.0,
                                             "commeff/bytes/codec/ratio": 0.25}
    assert "commeff/bytes/q_bcast/ratio" not in path_metrics("q_bcast", 8, 0)
    with pytest.raises(ValueError, match="'wire' is not one of"):
        path_metrics("wire", 1, 1)
    metrics = {**path_metrics("dp_codec", 30, 300), **path_metrics("anchor_minibatch", 20, 0),
               "commeff/bytes/dp_codec/intra_sent": 999.0}
    assert ledger_totals(metrics) == {"commeff/bytes/total/sent": 50.0, "commeff/bytes/total/dense_equiv": 300.0,
                                      "commeff/bytes/ratio": 50 / 300}
    assert ledger_totals({"commeff/tick": 1.0}) == {}
    assert len(set(PATHS)) == 7

"""PowerSGD on the data-parallel gradient across HSDP replicas (SPEC §5).

- :mod:`.state`: :class:`DPCodecState` (knobs, generator, error and Q memories, byte ledger);
- :mod:`.wire`: the replica and shard groups and the collectives that count their bytes;
- :mod:`.powersgd`: :func:`dp_exchange_`, the stateless, shape-batched exchange on row-sharded gradients;
- :mod:`.hsdp`: the FSDP2 side: the plugin owns the cross-replica exchange of the actor;
  :func:`exchange_tensors_` runs one exchange of plain tensors on one process (torch alone).
"""

from verl_commeff.dp_codec.hsdp import exchange_named_grads_, exchange_tensors_
from verl_commeff.dp_codec.powersgd import GradShard, dp_exchange_, orthonormalize
from verl_commeff.dp_codec.state import ByteLedger, DPCodecState
from verl_commeff.dp_codec.wire import ReplicaGroups

__all__ = ["ByteLedger", "DPCodecState", "GradShard", "ReplicaGroups", "dp_exchange_", "exchange_named_grads_",
           "exchange_tensors_", "orthonormalize"]

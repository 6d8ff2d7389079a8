"""PowerSGD on the data-parallel gradient across HSDP replicas (SPEC §5).

- :mod:`.state`: :class:`DPCodecState` (knobs, generator, error and Q memories, byte ledger);
- :mod:`.powersgd`: :func:`dp_exchange_`, the stateless exchange on row-sharded gradients;
- :mod:`.hsdp`: the FSDP2 side: the plugin owns the cross-replica exchange of the actor.
"""

from verl_commeff.dp_codec.powersgd import GradShard, ReplicaGroups, dp_exchange_, orthonormalize
from verl_commeff.dp_codec.state import ByteLedger, DPCodecState

__all__ = ["ByteLedger", "DPCodecState", "GradShard", "ReplicaGroups", "dp_exchange_", "orthonormalize"]

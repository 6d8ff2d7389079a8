"""An anchor group of any size up to the actor's: snapshots in, M̄ out, resharded by rows (FSDP2).

FSDP2 shards every parameter along dim 0 over the mesh's shard dimension, in rank order,
as ``torch.chunk`` does (uneven: the last ranks may hold fewer rows, or none). An actor
of N ranks and an anchor of A ranks (1 <= A <= N) therefore hold the same parameter as
different row ranges; :class:`RowLayout` names a group's layout (its device mesh's shape
and placements) and asks torch's DTensor code for each rank's rows
(``torch.distributed.tensor._utils._compute_local_shape_and_global_offset``), so no chunk
arithmetic is written here.

Two mappings, one per direction:

- Snapshots (actor → anchor), :func:`snapshot_plan`: anchor rank a keeps, for each
  parameter, the pieces of the actor ranks' shards that cover its rows; its snapshot
  decoder applies each actor rank's payload to just those rows of one copy of its own
  shards (:class:`~verl_commeff.anchor.snapshot_delta.SnapshotDecoder`; plain shards:
  :func:`assemble_local`). It fetches only the actor ranks it needs (:func:`needed_sources`):
  all N for A = 1, just actor rank a for A = N.
- Results (anchor → actor), :class:`ResultRouting`: every actor rank r has one *owner*
  anchor rank, ``r·A // N`` (:func:`owner_of`: contiguous blocks, so when the rows align,
  as they do when A divides N and N divides each row count, the owner already holds all
  of r's rows). The owner assembles r's M̄ in r's own shard layout; the rows it lacks come
  from the other anchor ranks in one ``all_to_all_single`` of the missing pieces (skipped
  when no piece has to move: always for A = 1 and A = N). Sign bits are packed from the
  assembled shard, so they are PackedSigns of exactly r's shard, bit for bit those an
  N-rank anchor would send.

How results travel (Ray): anchor rank a returns a :class:`RoutedResults`, a small map
``{actor rank r: ObjectRef}`` over the actor ranks it owns, each ref the ``ray.put`` of r's
own :class:`~verl_commeff.workers.actor_state.AnchorResult`. Actor rank r waits on its
owner's (tiny) return value and then fetches only its own ref: no rank deserialises
another rank's M̄. With A = N the anchor returns the AnchorResult itself (one per rank,
as before): the routing is the identity and nothing is wrapped.

Fingerprints: each owner fingerprints what it sends each owned actor rank; one
all-reduce (sum) over the anchor group of the (N, 3) table gives every result the
fingerprints of every actor rank's shard, row r = actor rank r (what the actor's
cross-rank check, :meth:`~verl_commeff.mergers.base.Merger.hold`, compares against).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
from torch.distributed.tensor.placement_types import Placement

__all__ = ["Piece", "RoutedResults", "ResultRouting", "RowLayout", "assemble_local", "fsdp2_layout",
           "needed_sources", "owner_of", "snapshot_plan", "take_routed"]


@dataclass(frozen=True)
class RowLayout:
    """How a worker group shards every parameter: its FSDP2 device mesh's shape and placements.

    Only ``Shard(0)`` and ``Replicate()`` placements (FSDP2 and HSDP); rank r's mesh
    coordinate is r unravelled row-major over ``mesh_shape`` (``init_device_mesh``'s order).
    """

    mesh_shape: tuple[int, ...]
    placements: tuple[Placement, ...]

    def __post_init__(self):
        if len(self.mesh_shape) != len(self.placements):
            raise ValueError(f"RowLayout: mesh_shape {self.mesh_shape} and placements {self.placements} differ in length")
        for p in self.placements:
            if not (isinstance(p, Replicate) or (isinstance(p, Shard) and p.dim == 0)):
                raise ValueError(f"RowLayout: placement {p} is not Shard(0) or Replicate(): only FSDP2's row "
                                 "sharding can be resharded")

    @property
    def world(self) -> int:
        return int(torch.Size(self.mesh_shape).numel())

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "RowLayout":
        """The layout of ``tensor``: its DTensor mesh and placements; a plain tensor is whole (one rank)."""
        if isinstance(tensor, DTensor):
            return cls(tuple(tensor.device_mesh.shape), tuple(tensor.placements))
        return cls((1,), (Shard(0),))

    def rows(self, global_shape: Sequence[int], rank: int) -> tuple[int, int]:
        """(first row, row count) of ``rank``'s local shard of a parameter of ``global_shape``."""
        coordinate = [int(c) for c in torch.unravel_index(torch.tensor(rank), self.mesh_shape)]
        local_shape, offset = _compute_local_shape_and_global_offset(
            torch.Size(global_shape), self.mesh_shape, coordinate, list(self.placements))
        return int(offset[0]), int(local_shape[0])


def fsdp2_layout(world: int, fsdp_size: int) -> RowLayout:
    """The layout verl's FSDP2 engine gives a group of ``world`` ranks (``create_device_mesh``):
    1-D ``Shard(0)`` when ``fsdp_size`` < 0 or >= world, else HSDP (world // fsdp_size, fsdp_size)."""
    if fsdp_size < 0 or fsdp_size >= world:
        return RowLayout((world,), (Shard(0),))
    return RowLayout((world // fsdp_size, fsdp_size), (Replicate(), Shard(0)))


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, start + length)`` of rank ``rank``'s local shard (local row numbers)."""

    rank: int
    start: int
    length: int


def _pieces(layout: RowLayout, global_shape: Sequence[int], lo: int, hi: int) -> list[Piece]:
    """The local pieces of ``layout``'s ranks that make up global rows [lo, hi), in row order.

    Ranks are visited in order and each row is taken from the first rank holding it (with
    replication, the first replica).
    """
    pieces, cursor = [], lo
    for rank in range(layout.world):
        if cursor >= hi:
            break
        offset, count = layout.rows(global_shape, rank)
        if offset <= cursor < offset + count:
            end = min(offset + count, hi)
            pieces.append(Piece(rank, cursor - offset, end - cursor))
            cursor = end
    if cursor < hi:
        raise ValueError(f"rows [{lo}, {hi}) of a parameter of shape {tuple(global_shape)} are not covered by {layout}")
    return pieces


def needed_sources(global_shapes: Sequence[Sequence[int]], source: RowLayout, target: RowLayout,
                   target_rank: int) -> list[int]:
    """The source ranks whose shards :func:`assemble_local` reads for ``target_rank`` (sorted)."""
    ranks = set()
    for shape in global_shapes:
        offset, count = target.rows(shape, target_rank)
        ranks.update(p.rank for p in _pieces(source, shape, offset, offset + count))
    return sorted(ranks)


def snapshot_plan(global_shapes: Sequence[Sequence[int]], source: RowLayout, target: RowLayout,
                  target_rank: int) -> tuple[list[torch.Size], dict[int, list["RowCopy"]]]:
    """What ``target_rank`` keeps of each source rank's shards: its local shapes and, per source
    rank, the row copies (:class:`~verl_commeff.anchor.snapshot_delta.RowCopy`) that make them up.

    Args:
        global_shapes: each parameter's full shape, in module order.
        source: the layout the shards come in (the actor's).
        target: the layout wanted (the anchor's).
        target_rank: whose shards to build.

    Returns:
        (``target_rank``'s local shard shapes, {source rank: its row copies}); the source ranks are
        :func:`needed_sources`.
    """
    from verl_commeff.anchor.snapshot_delta import RowCopy

    shapes, plan = [], {}
    for i, shape in enumerate(global_shapes):
        offset, count = target.rows(shape, target_rank)
        shapes.append(torch.Size([count, *shape[1:]]))
        cursor = 0
        for piece in _pieces(source, shape, offset, offset + count):
            plan.setdefault(piece.rank, []).append(RowCopy(i, piece.start, cursor, piece.length))
            cursor += piece.length
    return shapes, {rank: plan[rank] for rank in sorted(plan)}


def assemble_local(global_shapes: Sequence[Sequence[int]], source: RowLayout,
                   fetch: Callable[[int], Sequence[torch.Tensor]], target: RowLayout,
                   target_rank: int) -> list[torch.Tensor]:
    """``target_rank``'s local shards (``target`` layout) from the source ranks' plain shards.

    Steps:
        1. The plan (:func:`snapshot_plan`): the target rank's shapes and each source's row copies.
        2. Fetch each needed source rank's shard list once (``fetch(rank)``) and copy its rows
           into the target's shards (a :class:`~verl_commeff.anchor.snapshot_delta.SnapshotDecoder`
           with that plan, the shards applied as keyframes).

    Args:
        global_shapes: each parameter's full shape, in module order.
        source: the layout the shards come in (the actor's).
        fetch: ``fetch(rank)`` returns source rank ``rank``'s local shards, in module order.
        target: the layout wanted (the anchor's).
        target_rank: whose shards to build.

    Returns:
        One tensor per parameter, ``target_rank``'s local shard of it.
    """
    from verl_commeff.anchor.snapshot_delta import SnapshotDecoder, decode_source

    # Step 1: the plan.
    decoder = SnapshotDecoder(*snapshot_plan(global_shapes, source, target, target_rank))
    # Step 2: each source's rows.
    out = []
    for rank in decoder.sources:
        got = fetch(rank)
        if len(got) != len(global_shapes):
            raise ValueError(f"source rank {rank} sent {len(got)} shards, the model has {len(global_shapes)} parameters")
        out = decode_source(decoder, list(got), rank, resolve=lambda x: x)
    return out


def owner_of(actor_rank: int, anchor_world: int, actor_world: int) -> int:
    """The anchor rank that returns actor rank ``actor_rank``'s result: ``actor_rank·A // N``.

    Raises:
        ValueError: an anchor world outside 1..N.
    """
    if not 1 <= anchor_world <= actor_world:
        raise ValueError(f"{anchor_world} anchor ranks for {actor_world} actor ranks: the anchor group must "
                         "have between 1 and the actor's world size ranks")
    return actor_rank * anchor_world // actor_world


class ResultRouting:
    """Anchor rank ``anchor_rank``'s part of returning M̄ to every actor rank in its own layout.

    Args:
        global_shapes: the target matrices' full shapes, in target order.
        actor: the actor's layout (N ranks).
        anchor: the anchor's layout (A ranks, 1-D: each row on exactly one anchor rank).
        anchor_rank: this anchor rank.
    """

    def __init__(self, global_shapes: Sequence[Sequence[int]], actor: RowLayout, anchor: RowLayout, anchor_rank: int):
        if len(anchor.mesh_shape) != 1 or not isinstance(anchor.placements[0], Shard):
            raise ValueError(f"ResultRouting: the anchor's layout {anchor} must be 1-D Shard(0) (no replicas)")
        self.shapes = [torch.Size(s) for s in global_shapes]
        self.actor, self.anchor, self.me = actor, anchor, anchor_rank
        self.actor_world, self.anchor_world = actor.world, anchor.world
        self.owned = [r for r in range(self.actor_world) if owner_of(r, self.anchor_world, self.actor_world) == anchor_rank]
        # plan[r][i]: the anchor pieces of actor rank r's shard of target i
        self.plan = [[_pieces(anchor, s, *_span(actor.rows(s, r))) for s in self.shapes] for r in range(self.actor_world)]
        self.moves = any(p.rank != owner_of(r, self.anchor_world, self.actor_world)
                         for r in range(self.actor_world) for pieces in self.plan[r] for p in pieces)

    def _sent_to(self, dest: int) -> list[tuple[int, int, Piece]]:
        """(actor rank, target, piece) this rank sends anchor rank ``dest``, in (actor rank, target) order."""
        return [(r, i, p) for r in range(self.actor_world) if owner_of(r, self.anchor_world, self.actor_world) == dest
                for i, pieces in enumerate(self.plan[r]) for p in pieces if p.rank == self.me]

    def split(self, local: Sequence[torch.Tensor], group: Optional[Any] = None) -> dict[int, list[torch.Tensor]]:
        """Each owned actor rank's M̄, in that rank's shard layout (collective when pieces move).

        Steps:
            1. Pieces this rank owns and holds: row slices of ``local``.
            2. Pieces held elsewhere (only when :attr:`moves`): one ``all_to_all_single``
               over the anchor group of the flattened pieces every rank sends every owner
               (every anchor rank must call this then).
            3. For each owned actor rank and target, the pieces concatenated in row order.

        Args:
            local: this anchor rank's local tensors of the targets (its FSDP2 shards), in order.
            group: the anchor's process group (None: the default group).

        Returns:
            ``{actor rank: [its shard of each target]}`` for the actor ranks this rank owns.
        """
        if len(local) != len(self.shapes):
            raise ValueError(f"ResultRouting.split: {len(local)} tensors for {len(self.shapes)} targets")
        received: dict[tuple[int, int, int], torch.Tensor] = {}  # (actor rank, target, anchor rank) -> rows
        # Step 1: pieces already here.
        for r, i, p in self._sent_to(self.me):
            received[(r, i, p.rank)] = local[i].narrow(0, p.start, p.length)
        # Step 2: pieces from the other anchor ranks.
        if self.moves:
            received.update(self._exchange(local, group))
        # Step 3: assemble.
        out = {}
        for r in self.owned:
            shards = []
            for i, (shape, pieces) in enumerate(zip(self.shapes, self.plan[r])):
                parts = [received[(r, i, p.rank)] for p in pieces]
                shards.append(torch.cat(parts) if parts else local[i].new_empty((0, *shape[1:])))  # (rows, ...)
            out[r] = shards
        return out

    def _exchange(self, local: Sequence[torch.Tensor], group) -> dict[tuple[int, int, int], torch.Tensor]:
        """The pieces of the owned actor ranks held by other anchor ranks, via one ``all_to_all_single``."""
        import torch.distributed as dist

        dtype, device = local[0].dtype, local[0].device
        send, in_splits = [], []
        for dest in range(self.anchor_world):
            items = [] if dest == self.me else self._sent_to(dest)
            send += [local[i].narrow(0, p.start, p.length).reshape(-1).to(dtype) for _, i, p in items]
            in_splits.append(sum(p.length * self.shapes[i][1:].numel() for _, i, p in items))
        expect = []  # (source anchor rank, actor rank, target, piece) in the order they arrive
        out_splits = []
        for src in range(self.anchor_world):
            items = [] if src == self.me else [(r, i, p) for r in self.owned for i, pieces in enumerate(self.plan[r])
                                                for p in pieces if p.rank == src]
            expect += items
            out_splits.append(sum(p.length * self.shapes[i][1:].numel() for _, i, p in items))
        flat_in = torch.cat(send) if send else torch.empty(0, dtype=dtype, device=device)  # (Σ in_splits,)
        flat_out = torch.empty(sum(out_splits), dtype=dtype, device=device)  # (Σ out_splits,)
        dist.all_to_all_single(flat_out, flat_in, output_split_sizes=out_splits, input_split_sizes=in_splits,
                               group=group)
        got, cursor = {}, 0
        for r, i, p in expect:
            n = p.length * self.shapes[i][1:].numel()
            got[(r, i, p.rank)] = flat_out[cursor:cursor + n].view(p.length, *self.shapes[i][1:])
            cursor += n
        return got


def _span(rows: tuple[int, int]) -> tuple[int, int]:
    offset, count = rows
    return offset, offset + count


@dataclass
class RoutedResults:
    """What one anchor rank returns when A < N: each owned actor rank's result, by actor rank.

    Args:
        by_actor_rank: actor rank → its :class:`~verl_commeff.workers.actor_state.AnchorResult`,
            or a Ray ObjectRef to it (the anchor ``ray.put``\\ s each one, so an actor rank
            fetches only its own bytes).
    """

    by_actor_rank: dict[int, Any] = field(default_factory=dict)

    def for_rank(self, actor_rank: int) -> Any:
        """Actor rank ``actor_rank``'s AnchorResult (fetched from Ray if it is a ref)."""
        from verl_commeff.workers.weight_shards import resolve

        if actor_rank not in self.by_actor_rank:
            raise KeyError(f"this anchor rank's results are for actor ranks {sorted(self.by_actor_rank)}, "
                           f"not {actor_rank}: result routed to the wrong anchor rank")
        return resolve(self.by_actor_rank[actor_rank])

    def to(self, device) -> "RoutedResults":
        """Every owned result fetched and moved to ``device`` (a checkpoint saves host copies)."""
        return RoutedResults({r: self.for_rank(r).to(device) for r in self.by_actor_rank})


def take_routed(value: Any, actor_rank: int) -> Any:
    """Actor rank ``actor_rank``'s AnchorResult from what its owner anchor rank returned
    (a :class:`RoutedResults`, or with A = N the AnchorResult itself)."""
    return value.for_rank(actor_rank) if isinstance(value, RoutedResults) else value

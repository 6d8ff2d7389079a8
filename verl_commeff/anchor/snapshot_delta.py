"""Delta-encoded generator-weight snapshots: the actor sends the anchor what changed, losslessly.

Every retained step the actor hands the anchor its generator weights (this rank's local
shards, module order: :func:`~verl_commeff.workers.weight_shards.export_local_shards`). At
RL learning rates most elements of a bf16 weight do not change between snapshots, so the
actor sends, per tensor, the change against the previous snapshot it sent:

- **delta**: the changed-element mask, 1 bit per element (packed with
  :func:`~verl_commeff.mergers.sign_bits.pack_bool`), and the changed values in order;
- **dense**: the whole tensor, for the first snapshot (a keyframe) and whenever the delta
  would not be smaller (``ceil(n/8) + changed·size ≥ n·size``).

Everything is in the **snapshot dtype** (``commeff.anchor.snapshot_dtype``: the dtype the
anchor computes with). Elements are compared by bit pattern (the float viewed as an
integer of its size), so −0.0 vs +0.0 and NaN payloads count as changes and arrive exactly:
the decoded shards equal the actor's snapshot (cast to the snapshot dtype) bit for bit.

State and ids. :class:`SnapshotEncoder` (one per actor rank) keeps its **base**, a copy of the
last snapshot it sent, and numbers its snapshots ``1, 2, ...`` within a **stream** (a random
id per encoder instance: a restarted actor starts a new stream). Each
:class:`EncodedSnapshot` carries ``(stream, snapshot_id, base_id)``; ``base_id`` is None for a
keyframe. :class:`SnapshotDecoder` (on the anchor) keeps one copy of the anchor rank's own
shards (made of the rows it needs from each source actor rank: all of them when the anchor
has the actor's layout) and, per source, the last snapshot it applied, and applies a
source's payload only when

1. it is a keyframe (the source's rows are replaced), or
2. it is the snapshot already held (same stream and id: several fires replay one snapshot), or
3. its ``(stream, base_id)`` is the snapshot held (the delta is applied);

anything else raises :class:`SnapshotBaseError` naming both ids (never a guess).

Keyframes and restarts. The anchor applies snapshots in fire order, which is snapshot
order (the driver submits each step's fires when it takes the step's snapshot), so a chain
of deltas decodes. A fresh anchor (a restart with ``sync=free``, or a resume that reruns
pending fires) has no base, so the driver keeps, for every snapshot in its replay ring,
the chain of payloads from the last keyframe up to it (:class:`SnapshotChain`) and
resubmits pending fires with their whole chain; the next snapshot after a restart or
resume is a keyframe (the driver asks for one), and every
``commeff.anchor.snapshot_keyframe_every`` snapshots is one, which bounds the chain.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from verl_commeff.mergers.sign_bits import pack_bool, unpack_bool

__all__ = ["EncodedSnapshot", "EncodedTensor", "RowCopy", "SnapshotBaseError", "SnapshotChain", "SnapshotDecoder",
           "SnapshotEncoder", "chains_from_payloads", "chains_to_payloads", "decode_source", "payload_key",
           "resolve_snapshot_dtype"]

SNAPSHOT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_PLAIN_STREAMS = itertools.count()  # a stream of its own for every unencoded snapshot applied
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class SnapshotBaseError(RuntimeError):
    """A delta-encoded snapshot whose base is not the snapshot the decoder holds."""


def resolve_snapshot_dtype(knob: str, param_dtype: Optional[torch.dtype]) -> torch.dtype:
    """``commeff.anchor.snapshot_dtype`` as a torch dtype (``auto``: ``param_dtype``, the FSDP
    mixed-precision dtype the actor's forward casts its parameters to)."""
    if knob == "auto":
        if param_dtype is None:
            raise ValueError("commeff.anchor.snapshot_dtype=auto needs the actor's mixed-precision param_dtype")
        return param_dtype
    if knob not in SNAPSHOT_DTYPES:
        raise ValueError(f"commeff.anchor.snapshot_dtype={knob!r} is not valid: must be one of "
                         f"{['auto', *SNAPSHOT_DTYPES]}")
    return SNAPSHOT_DTYPES[knob]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` viewed as integers of its element size (bit-pattern comparison; non-float as is)."""
    return t.view(_INT_OF_SIZE[t.element_size()]) if t.is_floating_point() else t


# On a CPU, below this changed fraction (1 element in _SPARSE_BELOW) the changed positions are
# found word by word. Measured on 29.8 M random flags, one torch thread (word by word vs one
# nonzero): 11 vs 26 ms at 0.5 % set, 16 vs 27 at 1 %, 22 vs 29 at 2 %, 29 vs 32 at 3 %, 38 vs 34 at 4 %.
_SPARSE_BELOW = 40


def _changed_positions(changed: torch.Tensor, count: int) -> torch.Tensor:
    """(count,) int64: the positions of the set flags of the (n,) bool ``changed``, ascending.

    On a CPU ``nonzero`` tests every flag with a branch (~1 ns per flag and core, whatever the
    count). When fewer than 1 in :data:`_SPARSE_BELOW` flags are set, most aligned groups of 8
    flags are all clear, so there:

    Steps:
        1. The groups of 8 flags (viewed as int64 words) that hold a set flag: ``nonzero`` over n/8 words.
        2. Those groups' flags: ``nonzero`` over 8 flags per group found.
        3. Position = 8·group + offset in the group; the last ``n % 8`` flags are searched directly.

    Elsewhere (denser, or on a GPU, where ``nonzero`` is a parallel scan and each call
    synchronises with the host) one ``nonzero``.

    Args:
        changed: (n,) contiguous bool.
        count: its number of set flags (already on the host).
    """
    n = changed.numel()
    if count == 0:
        return torch.empty(0, dtype=torch.int64, device=changed.device)
    if changed.device.type != "cpu" or count * _SPARSE_BELOW >= n or changed.storage_offset() % 8:
        return changed.nonzero().squeeze(1)  # (count,)
    n_full = n - n % 8
    head = changed[:n_full]
    # Step 1: the words with a set flag.
    hit = head.view(torch.uint8).view(torch.int64).nonzero().squeeze(1)  # (k_w,)
    # Step 2: their flags.
    offsets = head.view(-1, 8).index_select(0, hit).reshape(-1).nonzero().squeeze(1)  # (count_head,) in [0, 8 k_w)
    # Step 3: positions.
    positions = hit.index_select(0, offsets >> 3).mul_(8).add_(offsets & 7)  # (count_head,)
    if n_full == n:
        return positions
    return torch.cat([positions, changed[n_full:].nonzero().squeeze(1).add_(n_full)])  # (count,)


@dataclass
class EncodedTensor:
    """One tensor of a snapshot: ``dense`` (the whole tensor) or ``mask`` + ``values`` (a delta).

    Args:
        shape: the tensor's shape.
        dense: the whole tensor in the snapshot dtype, or None for a delta.
        mask: (ceil(numel / 8),) uint8: bit i set where element i (row-major) changed.
        values: (changed,) the new values of the changed elements, in row-major order.
    """

    shape: torch.Size
    dense: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None

    @property
    def is_delta(self) -> bool:
        return self.dense is None

    def payload(self) -> list[torch.Tensor]:
        """The tensors on the wire."""
        return [self.dense] if self.dense is not None else [self.mask, self.values]


@dataclass
class EncodedSnapshot:
    """One actor rank's snapshot as sent to the anchor.

    Args:
        stream: the encoder instance's random id (a restarted actor starts a new stream).
        snapshot_id: 1, 2, ... within the stream.
        base_id: the snapshot id the deltas are against; None for a keyframe (all dense).
        tensors: one :class:`EncodedTensor` per local shard, module order.
    """

    stream: str
    snapshot_id: int
    base_id: Optional[int]
    tensors: list[EncodedTensor] = field(default_factory=list)

    @property
    def is_keyframe(self) -> bool:
        return self.base_id is None

    def payload(self) -> list[torch.Tensor]:
        """Every tensor on the wire (what the byte ledger counts; ids are metadata)."""
        return [t for enc in self.tensors for t in enc.payload()]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.payload())

    def to_host(self) -> "EncodedSnapshot":
        """This snapshot with its payload on the host (an encoder on a GPU encodes there and
        ships only the payload: one asynchronous copy into pinned memory, one synchronisation)."""
        from verl_commeff.workers.weight_shards import host_copies

        moved = iter(host_copies(self.payload()))
        tensors = [EncodedTensor(enc.shape, dense=next(moved)) if not enc.is_delta
                   else EncodedTensor(enc.shape, mask=next(moved), values=next(moved)) for enc in self.tensors]
        return dataclasses.replace(self, tensors=tensors)

    def dense_fp32_bytes(self) -> int:
        """What the same snapshot costs as dense fp32 shards (the uncompressed reference)."""
        return sum(enc.shape.numel() * 4 for enc in self.tensors)

    def changed_fraction(self) -> float:
        """Changed elements / elements over the delta-encoded tensors' and the dense ones (dense = all)."""
        total = sum(enc.shape.numel() for enc in self.tensors)
        changed = sum(enc.values.numel() if enc.is_delta else enc.shape.numel() for enc in self.tensors)
        return changed / total if total else 0.0


class SnapshotEncoder:
    """Actor side: encodes this rank's shards against the last snapshot it sent.

    Knobs:
        dtype: the snapshot dtype (the anchor's compute dtype; see
            :func:`resolve_snapshot_dtype`). Floating shards are cast to it; others are sent as they are.

    State: the stream id, the last snapshot id, and the base (a copy of the last snapshot
    sent, in the snapshot dtype, on the shards' device). :meth:`reset` drops the base: the
    next snapshot is a keyframe.
    """

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self.stream = uuid.uuid4().hex
        self.last_id = 0
        self._base: Optional[list[torch.Tensor]] = None

    def reset(self) -> None:
        """Forget the base: the next :meth:`encode` sends a dense keyframe."""
        self._base = None

    def encode(self, shards: Sequence[torch.Tensor], keyframe: bool = False) -> EncodedSnapshot:
        """Encode ``shards`` (this rank's local shards, module order) as the next snapshot.

        Steps:
            1. Cast each floating shard to the snapshot dtype (a copy: it becomes the base).
            2. Keyframe (asked for, or no base yet): every tensor dense.
            3. Otherwise per tensor the changed mask (bit patterns differ); the changed counts
               of all tensors are read in ONE device→host copy.
            4. Per tensor, a delta when ``ceil(n/8) + changed·size < n·size`` bytes (the mask
               packed, the values gathered at :func:`_changed_positions`), else dense (the cast).
            5. The cast shards become the base.

        Raises:
            ValueError: the shards' count or shapes differ from the base's (another layout).
        """
        # Step 1: the snapshot in the snapshot dtype (a fresh copy: it becomes the base).
        cast = [s.detach().to(self.dtype, copy=True) if s.is_floating_point() else s.detach().clone() for s in shards]
        base = None if keyframe else self._base
        if base is not None:
            if len(base) != len(cast) or any(b.shape != c.shape for b, c in zip(base, cast)):
                raise ValueError(f"snapshot shards {[tuple(c.shape) for c in cast]} differ from the encoder's base "
                                 f"{[tuple(b.shape) for b in base]}: the actor's layout changed; call reset()")
        self.last_id += 1
        # Step 2: a keyframe.
        if base is None:
            tensors = [EncodedTensor(c.shape, dense=c) for c in cast]
            snap = EncodedSnapshot(self.stream, self.last_id, None, tensors)
        else:
            # Step 3: the changed masks; all counts in one host read.
            changed = [torch.ne(_bits(c), _bits(b)).reshape(-1) for c, b in zip(cast, base)]  # (n_i,) bool each
            # count_nonzero: a bool sum casts the mask to int64 first
            counts = torch.stack([torch.count_nonzero(m) for m in changed]).tolist() if changed else []
            # Step 4: delta or dense, by bytes; only a delta packs its mask and gathers its values.
            tensors = []
            for c, m, n_changed in zip(cast, changed, counts):
                size, n = c.element_size(), c.numel()
                if (n + 7) // 8 + n_changed * size < n * size:
                    values = c.reshape(-1).index_select(0, _changed_positions(m, n_changed))  # (n_changed,)
                    tensors.append(EncodedTensor(c.shape, mask=pack_bool(m), values=values))
                else:
                    tensors.append(EncodedTensor(c.shape, dense=c))
            snap = EncodedSnapshot(self.stream, self.last_id, self.last_id - 1, tensors)
        # Step 5: the new base.
        self._base = cast
        return snap


@dataclass(frozen=True)
class RowCopy:
    """Rows of one tensor the decoder keeps from one source actor rank.

    Rows ``[source_row, source_row + rows)`` of the source's shard of tensor ``tensor`` are
    rows ``[target_row, target_row + rows)`` of the kept shard (dim 0; a 0-d tensor is one row).
    """

    tensor: int
    source_row: int
    target_row: int
    rows: int


def _rows(shape: torch.Size) -> tuple[int, int]:
    """(rows, elements per row) of a tensor of ``shape`` (a 0-d tensor: one row of one element)."""
    return (shape[0], shape[1:].numel()) if len(shape) else (1, 1)


class SnapshotDecoder:
    """Anchor side: the anchor rank's own shards, kept once, patched by each source's payloads.

    Per source actor rank the decoder remembers the snapshot it applied last (stream, id):
    a payload is applied when it is a keyframe, is that snapshot (no-op), or is a delta
    against it (see the module docstring); only the source's rows in the plan are written.
    The kept shards are the only state: one copy of the anchor rank's own shards in the
    snapshot dtype, whatever the number of sources (:meth:`nbytes`).

    Args:
        target_shapes: the anchor rank's local shard shapes, module order (with ``plan``).
        plan: source actor rank -> the :class:`RowCopy` s of its shards that make up the kept
            shards (:func:`~verl_commeff.anchor.reshard.snapshot_plan` for an anchor smaller
            than the actor). None: one source, kept whole (an anchor rank with the actor
            rank's layout); its layout is taken from its first keyframe.

    Returned shard lists are the decoder's own state: copy from them (``load_local_shards``
    does), do not modify them.
    """

    def __init__(self, target_shapes: Optional[Sequence[Sequence[int]]] = None,
                 plan: Optional[dict[int, list[RowCopy]]] = None):
        if (target_shapes is None) != (plan is None):
            raise ValueError("SnapshotDecoder: give both target_shapes and plan, or neither")
        self.target_shapes = None if target_shapes is None else [torch.Size(t) for t in target_shapes]
        self.plan = plan
        self._whole = False  # no plan given: one source's whole shards (the plan made at its first payload)
        self._held: dict[int, tuple[str, int]] = {}  # source -> (stream, id) applied last
        self._shards: Optional[list[torch.Tensor]] = None  # the kept shards (target layout, snapshot dtype)

    @property
    def sources(self) -> list[int]:
        """The source actor ranks the kept shards are made of (empty until known without a plan)."""
        return sorted(self.plan) if self.plan is not None else sorted(self._held)

    def held(self, source: int) -> Optional[tuple[str, int]]:
        """(stream, snapshot id) applied last from actor rank ``source``, or None."""
        return self._held.get(source)

    def nbytes(self) -> int:
        """Bytes of the decoder's state: the kept shards."""
        return sum(t.numel() * t.element_size() for t in self._shards or [])

    def decode(self, snap: EncodedSnapshot, source: int = 0) -> list[torch.Tensor]:
        """Apply ``snap`` (from actor rank ``source``) and return the kept shards, bit-identical to
        the rows of what was encoded.

        Raises:
            SnapshotBaseError: ``snap`` is a delta against a snapshot this decoder does not hold.
            ValueError: a source outside the plan, a second source without a plan, or a layout
                that does not match the plan.
        """
        held = self._held.get(source)
        if held == (snap.stream, snap.snapshot_id):
            return self._shards  # the snapshot already applied (another fire on the same weights)
        if not snap.is_keyframe and held != (snap.stream, snap.base_id):
            have = "no snapshot" if held is None else f"snapshot {held[1]} of stream {held[0]}"
            raise SnapshotBaseError(
                f"actor rank {source}: snapshot {snap.snapshot_id} of stream {snap.stream} is a delta against "
                f"snapshot {snap.base_id}, but this anchor holds {have}; a restarted anchor "
                "needs the chain from a keyframe (SnapshotChain) or a keyframe")
        copies = self._copies(snap, source)
        if self._shards is None:  # the first payload: the kept shards, in the payload's dtypes
            self._shards = [torch.empty(shape, dtype=enc.dense.dtype if enc.dense is not None else enc.values.dtype)
                            for shape, enc in zip(self.target_shapes, snap.tensors)]
        by_tensor: dict[int, list[RowCopy]] = {}
        for c in copies:
            by_tensor.setdefault(c.tensor, []).append(c)
        for i, tensor_copies in by_tensor.items():
            self._apply(snap.tensors[i], self._shards[i], tensor_copies)
        self._held[source] = (snap.stream, snap.snapshot_id)
        return self._shards

    def _copies(self, snap: EncodedSnapshot, source: int) -> list[RowCopy]:
        """The plan's row copies for ``source``, checked against ``snap``'s layout."""
        if self.plan is None:  # one source, whole: the plan is the identity of its first payload
            self.target_shapes = [enc.shape for enc in snap.tensors]
            self.plan = {source: [RowCopy(i, 0, 0, _rows(shape)[0]) for i, shape in enumerate(self.target_shapes)]}
            self._whole = True
        if source not in self.plan:
            if self._whole:
                raise ValueError(f"a SnapshotDecoder without a plan keeps one actor rank's shards: it holds actor rank "
                                 f"{self.sources[0]}'s, got actor rank {source}'s (give it a plan, or one decoder per rank)")
            raise ValueError(f"actor rank {source} is not a source of this anchor rank's shards (sources: {self.sources})")
        if len(snap.tensors) != len(self.target_shapes):
            raise SnapshotBaseError(f"actor rank {source}: snapshot {snap.snapshot_id} has {len(snap.tensors)} "
                                    f"tensors, the anchor's shards are {len(self.target_shapes)}")
        for c in self.plan[source]:
            rows, per_row = _rows(snap.tensors[c.tensor].shape)
            if c.source_row + c.rows > rows or per_row != _rows(self.target_shapes[c.tensor])[1]:
                raise ValueError(f"actor rank {source}: tensor {c.tensor} of shape {tuple(snap.tensors[c.tensor].shape)} "
                                 f"does not hold rows [{c.source_row}, {c.source_row + c.rows}) of the anchor's shard "
                                 f"{tuple(self.target_shapes[c.tensor])}: the actor's layout changed")
        return self.plan[source]

    @staticmethod
    def _apply(enc: EncodedTensor, kept: torch.Tensor, copies: Sequence[RowCopy]) -> None:
        """Write ``enc``'s rows named by ``copies`` into ``kept`` (bit patterns, in place).

        Steps:
            1. Dense: copy the rows.
            2. Delta: unpack the changed mask once; for each row range the changed values are
               a contiguous run of ``values``, starting after the changes before the range
               (counted on the mask); scatter them where the range's mask is set.
        """
        per_row = _rows(enc.shape)[1]
        target = _bits(kept).view(-1)  # (numel,) integer view, written in place
        # Step 1: dense.
        if not enc.is_delta:
            source = _bits(enc.dense).reshape(-1)
            for c in copies:
                target[c.target_row * per_row:(c.target_row + c.rows) * per_row].copy_(
                    source[c.source_row * per_row:(c.source_row + c.rows) * per_row])
            return
        # Step 2: delta.
        mask = unpack_bool(enc.mask, enc.shape.numel())  # (n,) bool
        values = _bits(enc.values)  # (changed,)
        for c in copies:
            lo, hi = c.source_row * per_row, (c.source_row + c.rows) * per_row
            before = int(torch.count_nonzero(mask[:lo])) if lo else 0  # the anchor reads on the host, once per range
            target[c.target_row * per_row:c.target_row * per_row + hi - lo].masked_scatter_(mask[lo:hi], values[before:])

    def decode_chain(self, chain: Sequence[EncodedSnapshot], source: int = 0) -> list[torch.Tensor]:
        """Apply ``chain`` (oldest first; a keyframe, then deltas) and return the kept shards."""
        if not chain:
            raise ValueError("empty snapshot chain")
        out = None
        for snap in chain:
            out = self.decode(snap, source)
        return out


def decode_source(decoder: SnapshotDecoder, entry: Any, source: int,
                  resolve: Callable[[Any], Any]) -> list[torch.Tensor]:
    """Apply one entry of ``anchor_fire``'s ``snapshot`` argument (actor rank ``source``'s) to
    ``decoder`` and return its kept shards.

    ``entry`` is an :class:`EncodedSnapshot`, a chain of them (list, oldest first: after an
    anchor restart or resume), or plain shards (list of tensors: an unencoded snapshot, applied
    as a keyframe), each possibly a Ray ObjectRef that ``resolve`` fetches.
    """
    entry = resolve(entry)
    if isinstance(entry, EncodedSnapshot):
        return decoder.decode(entry, source)
    items = list(entry)
    if items and all(isinstance(t, torch.Tensor) for t in items):  # plain shards: a keyframe of its own
        plain = EncodedSnapshot(f"plain:{next(_PLAIN_STREAMS)}", 1, None, [EncodedTensor(t.shape, dense=t) for t in items])
        return decoder.decode(plain, source)
    return decoder.decode_chain([resolve(x) for x in items], source)


@dataclass
class SnapshotChain:
    """What the driver's replay ring keeps for one snapshot: the chain from the last keyframe.

    Args:
        links: one entry per snapshot from the last keyframe up to and including this one,
            oldest first; each entry is the actor's per-rank list (ObjectRefs of
            :class:`EncodedSnapshot`, or the objects themselves in a checkpoint).
    """

    links: list[list[Any]]

    def latest(self) -> list[Any]:
        """Per actor rank, this snapshot's own payload (a running anchor holds its base)."""
        return self.links[-1]

    def per_rank_chains(self) -> list[list[Any]]:
        """Per actor rank, the whole chain (for a fresh anchor that holds no base)."""
        return [[link[r] for link in self.links] for r in range(len(self.links[-1]))]

    def map_links(self, fn: Callable[[list[Any]], list[Any]]) -> "SnapshotChain":
        """The same chain with ``fn`` applied to every per-rank list."""
        return SnapshotChain([fn(list(link)) for link in self.links])


def payload_key(entry: Any) -> str:
    """The id of one per-rank chain entry: a Ray ObjectRef's object id, else the Python object's id."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a verl dependency
        ray = None
    return f"ray:{entry.hex()}" if ray is not None and isinstance(entry, ray.ObjectRef) else f"py:{id(entry)}"


def chains_to_payloads(chains: dict[int, SnapshotChain],
                       fetch: Callable[[Any], Any]) -> tuple[dict[int, SnapshotChain], dict[str, Any]]:
    """The ring's chains for a checkpoint: every distinct payload fetched and kept once.

    Chains share links (each snapshot's chain runs from the same last keyframe, so the
    keyframe and the earlier deltas are in several chains): resolving every link of every
    chain would store the keyframe once per chain. Here each per-rank entry is fetched once,
    keyed by :func:`payload_key`, and the chains keep only the keys.

    Args:
        chains: snapshot step -> its chain (entries: Ray ObjectRefs, or the payloads themselves).
        fetch: entry -> payload (``resolve``: ``ray.get``, again while the value is a ref).

    Returns:
        (chains whose entries are payload keys, {payload key: payload}).
    """
    payloads: dict[str, Any] = {}

    def keep(link: list[Any]) -> list[str]:
        keys = [payload_key(entry) for entry in link]
        for key, entry in zip(keys, link):
            if key not in payloads:
                payloads[key] = fetch(entry)
        return keys

    return {step: chain.map_links(keep) for step, chain in chains.items()}, payloads


def chains_from_payloads(chains: dict[int, SnapshotChain], payloads: dict[str, Any],
                         put: Callable[[Any], Any]) -> dict[int, SnapshotChain]:
    """Inverse of :func:`chains_to_payloads` on resume: each payload stored once (``put``:
    ``ray.put``), every chain entry the stored object of its key (shared between chains)."""
    stored = {key: put(payload) for key, payload in payloads.items()}
    return {step: chain.map_links(lambda keys: [stored[k] for k in keys]) for step, chain in chains.items()}

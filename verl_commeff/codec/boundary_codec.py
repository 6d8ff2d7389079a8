"""The boundary PowerSGD codec: state object and forward hooks (SPEC §2).

Simulates pipeline-parallel training over a slow link inside one (FSDP) model. At every
boundary (last layer of a non-final stage, see :mod:`verl_commeff.codec.stages`) the layer
output h (tokens × H) is replaced by ĥ = (h·Q)·Qᵀ, where Q (H × r, orthonormal, no
gradient) is the boundary's basis. Autograd then projects the backward activation-gradient
by Q·Qᵀ as well (no straight-through). The logical wire is tokens × r per boundary and
direction instead of tokens × H.

Which pass does what (:meth:`BoundaryCodec.pass_scope`):

=============  ============  ======================================
pass           projection    observation (sketch V += Aᵀ(A·Q))
=============  ============  ======================================
train          live          when ``q_source == "fast"``
old_log_prob   live          never
anchor         inert         when ``q_source == "anchor"``
bootstrap      inert         the Gram Σ AᵀA (``init=activations``)
ref, rollout,  inert         never
validation,
no scope
=============  ============  ======================================

Inert means the layer output is returned untouched (bit-identical to no codec).

The first basis (``commeff.codec.init``): ``random`` starts from orth(randn(H, r)) seeded per
boundary; ``activations`` (the default) runs the actor's first old-log-prob batch once more
as the ``bootstrap`` pass before the real one, sums the Gram Σ AᵀA of the boundary
activations over the data-parallel group and starts from its top-r eigenvectors
(:meth:`BoundaryCodec.finish_bootstrap`): the first projected passes then see the
activations' principal subspace instead of a random one (issue 17: with a random r = 16 of
H = 64 the train-pass entropy sat near 1 against the rollout's 0.12 until the first refresh).

Q's life cycle, one warm-started block power-iteration step per refresh:

1. observe: every REAL forward of the observing pass adds Aᵀ(A·Q) to V in fp32, once
   (gradient-checkpoint recomputation of a layer is recognised and not counted); Q is the
   newest iterate: the staged Q while one waits for the step boundary, else the live Q, so
   every V is (Σ AᵀA)·Q for a single Q. A forward whose Aᵀ(A·Q) at a boundary is not finite
   adds nothing there (decided on the device; ``commeff/codec/skipped_observations``);
2. :meth:`BoundaryCodec.refresh`: sum V across the data-parallel group (one all-reduce of
   the stacked (B, H, r) tensor), Q_new = orth(V), stage Q_new; the live Q is untouched;
3. :meth:`BoundaryCodec.activate_staged`, at a step boundary before the next old-log-prob
   pass: the staged Q becomes live.

Recomputation is recognised with a forward id: a forward pre-hook on the installed model
increments it, and a boundary layer called again under the same id is a recomputation (it
reuses the projection decision of its real forward and neither observes nor records
telemetry). So ``install`` must be given the module that is actually called.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from verl_commeff.codec.basis import BASIS_DTYPE, bootstrap_basis, conditioning, power_step, principal_basis
from verl_commeff.codec.stages import boundary_layers, find_decoder_layers
from verl_commeff.codec.telemetry import CodecTelemetry
from verl_commeff.collectives import all_reduce_, identical_across_ranks

if TYPE_CHECKING:
    from verl_commeff.config import CodecConfig

__all__ = ["BoundaryCodec", "PASS_NAMES", "PROJECTED_PASSES"]

PASS_NAMES = ("train", "old_log_prob", "ref", "rollout", "validation", "anchor", "bootstrap")
PROJECTED_PASSES = frozenset({"train", "old_log_prob"})
# q_source → the pass whose forwards feed the sketch.
OBSERVING_PASS = {"fast": "train", "anchor": "anchor"}

STATE_VERSION = 1


def _autocast_off(device: torch.device):
    """Disable autocast so the codec's matmuls run in the dtype it chooses."""
    return torch.autocast(device_type=device.type, enabled=False)


class BoundaryCodec:
    """Boundary bases, sketch accumulators, pass switch and hooks of one model replica.

    Knobs (from :class:`~verl_commeff.config.CodecConfig`):
        rank: r, columns of each basis Q (H × r).
        pp_size: simulated pipeline stages; boundaries are the last layers of stages 1..pp_size−1.
        seed: the bootstrap Q of boundary b is orth(randn(H, r)) seeded from (seed, b).
        init: ``random`` (that Q is the first basis) or ``activations`` (the first basis is
            the principal subspace of the activations seen by one ``bootstrap`` pass).
        q_source: ``fast`` (observe the train forwards) or ``anchor`` (observe the anchor's
            dense forwards); decides which pass feeds the sketch.

    State (all in :meth:`state_dict`, no process group inside):
        live Q (B, H, r) fp32: used by the projection;
        staged Q (B, H, r) fp32 or None: the refreshed basis waiting for the step boundary;
        sketch V (B, H, r) fp32 and the tokens observed per boundary since the last refresh;
        telemetry (:class:`~verl_commeff.codec.telemetry.CodecTelemetry`).

    Args:
        cfg: the codec config (validated against the model with ``check_against_model``).
        hidden_size: H of the model.
        num_layers: number of decoder layers L.
        process_group: the data-parallel group V is summed over and Q is checked on
            (default: the world). Ranks holding disjoint tokens (DP × Ulysses SP) all count.
        device: initial device of the state (default CPU). The state follows the
            activations: the first hook call on another device moves it there once.
    """

    def __init__(
        self,
        cfg: "CodecConfig",
        hidden_size: int,
        num_layers: int,
        process_group: Optional[dist.ProcessGroup] = None,
        device: Optional[torch.device | str] = None,
    ):
        from verl_commeff.config import check_against_model  # cfg objects already need the config module

        check_against_model(cfg, hidden_size, num_layers)
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.rank = cfg.rank
        self.seed = cfg.seed
        self.q_source = cfg.q_source
        self.init = cfg.init
        self.layers = boundary_layers(num_layers, cfg.pp_size)  # (B,) layer indices
        self.process_group = process_group
        device = torch.device("cpu" if device is None else device)

        num_boundaries = len(self.layers)
        self._live = torch.stack(
            [bootstrap_basis(hidden_size, self.rank, self.seed, b) for b in range(num_boundaries)]
        ).to(device)  # (B, H, r)
        self._staged: Optional[torch.Tensor] = None  # (B, H, r)
        self._sketch = torch.zeros_like(self._live)  # (B, H, r)
        self._observed = [0] * num_boundaries  # tokens folded into the sketch since the last refresh
        self._gram: Optional[torch.Tensor] = None  # (B, H, H) Σ AᵀA of the bootstrap pass, until finish_bootstrap
        self._bootstrapped = self.init == "random"  # the first basis is final
        self._cast_cache: dict[torch.dtype, torch.Tensor] = {}
        self.telemetry = CodecTelemetry(self.layers, device)
        self.telemetry.q_cond = conditioning(self._live)

        self._pass: Optional[str] = None
        self._forward_id = 0
        self._boundary_forward_id = [-1] * num_boundaries
        self._boundary_projected = [False] * num_boundaries
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # ---- memory ----------------------------------------------------------------------------
    def buffers(self) -> dict[str, list[torch.Tensor]]:
        """The device buffers this codec holds now, by name (for memory accounting)."""
        return {
            "q_live": [self._live],  # (B, H, r) fp32
            "q_staged": [] if self._staged is None else [self._staged],  # (B, H, r)
            "q_sketch": [self._sketch],  # (B, H, r) fp32 accumulator
            "q_cast_cache": list(self._cast_cache.values()),  # live Q in the activations' dtype
        }

    # ---- placement -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._live.device

    def to(self, device: torch.device | str) -> "BoundaryCodec":
        """Move bases, sketch and telemetry to ``device``."""
        self._live = self._live.to(device)
        self._gram = None if self._gram is None else self._gram.to(device)
        self._staged = None if self._staged is None else self._staged.to(device)
        self._sketch = self._sketch.to(device)
        self._cast_cache.clear()
        self.telemetry.to(torch.device(device))
        return self

    # ---- bases -----------------------------------------------------------------------------
    @property
    def live_basis(self) -> torch.Tensor:
        """The live bases, (B, H, r) fp32 (read-only by convention)."""
        return self._live

    @property
    def staged_basis(self) -> Optional[torch.Tensor]:
        """The staged bases waiting for :meth:`activate_staged`, (B, H, r) fp32, or None."""
        return self._staged

    @contextlib.contextmanager
    def live_basis_override(self, bases: torch.Tensor) -> Iterator["BoundaryCodec"]:
        """Project through ``bases`` (B, H, r) instead of the live Q inside the block; the live Q
        is restored on exit (the anchor's dose probe replays a tick with the Q the actor had then)."""
        self._check_bases(bases, "live_basis_override bases")
        saved, self._live = self._live, bases.to(device=self.device, dtype=BASIS_DTYPE)
        self._cast_cache.clear()
        try:
            yield self
        finally:
            self._live = saved
            self._cast_cache.clear()

    def _basis_as(self, dtype: torch.dtype) -> torch.Tensor:
        """The live bases cast to ``dtype`` (cached until the live basis changes)."""
        cast = self._cast_cache.get(dtype)
        if cast is None:
            cast = self._cast_cache[dtype] = self._live.to(dtype)
        return cast

    def _check_bases(self, bases: torch.Tensor, name: str) -> None:
        expected = (len(self.layers), self.hidden_size, self.rank)
        if tuple(bases.shape) != expected:
            raise ValueError(f"{name} has shape {tuple(bases.shape)}, expected (B, H, r) = {expected}")

    # ---- pass switch -----------------------------------------------------------------------
    @property
    def current_pass(self) -> Optional[str]:
        return self._pass

    @contextlib.contextmanager
    def pass_scope(self, name: str) -> Iterator["BoundaryCodec"]:
        """Run the enclosed forwards (and their backwards) as pass ``name``.

        Args:
            name: one of ``train``, ``old_log_prob``, ``ref``, ``rollout``, ``validation``,
                ``anchor``. Scopes nest; the outer pass is restored on exit.
        """
        if name not in PASS_NAMES:
            raise ValueError(f"pass_scope name={name!r} is not valid: must be one of {list(PASS_NAMES)}")
        previous, self._pass = self._pass, name
        try:
            yield self
        finally:
            self._pass = previous

    # ---- hooks -----------------------------------------------------------------------------
    def install(self, model: nn.Module, layers: Optional[Sequence[nn.Module]] = None) -> "BoundaryCodec":
        """Hook the boundary layers of ``model``.

        Args:
            model: the module that is called for every forward (e.g. the FSDP root); it
                gets the forward pre-hook that numbers forwards.
            layers: its decoder layers in order; default :func:`find_decoder_layers`.
        """
        if self._handles:
            raise RuntimeError("BoundaryCodec.install: already installed; call remove() first")
        layers = find_decoder_layers(model) if layers is None else layers
        if len(layers) != self.num_layers:
            raise ValueError(f"BoundaryCodec.install: the model has {len(layers)} decoder layers, "
                             f"the codec was built for num_layers={self.num_layers}")
        self._handles.append(model.register_forward_pre_hook(self._count_forward, prepend=True))
        for b, layer_index in enumerate(self.layers):
            hook = functools.partial(self._boundary_hook, b)
            self._handles.append(layers[layer_index].register_forward_hook(hook))
        return self

    def remove(self) -> None:
        """Remove every hook installed by :meth:`install`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def _count_forward(self, module: nn.Module, args: Any) -> None:
        self._forward_id += 1

    def _boundary_hook(self, b: int, module: nn.Module, args: Any, output: Any) -> Any:
        hidden = output if isinstance(output, torch.Tensor) else None
        if hidden is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            hidden = output[0]
        if hidden is None:
            raise TypeError(f"BoundaryCodec: layer {self.layers[b]} returned {type(output).__name__}; "
                            f"expected a hidden-state tensor or a tuple/list starting with one")
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"BoundaryCodec: layer {self.layers[b]} output has last dim {hidden.shape[-1]}, "
                             f"expected hidden_size={self.hidden_size}")
        if hidden.device != self.device:
            self.to(hidden.device)

        recomputation = self._boundary_forward_id[b] == self._forward_id
        if recomputation:
            project = self._boundary_projected[b]  # same decision, nothing recorded
        else:
            self._boundary_forward_id[b] = self._forward_id
            project = self._pass in PROJECTED_PASSES
            self._boundary_projected[b] = project
        # The projection's coefficients h·Q; in fp32 they are also the telemetry's (one matmul, not two).
        coeffs = self._coefficients(b, hidden) if project else None  # (..., r)
        if not recomputation:
            observe = self._pass is not None and self._pass == OBSERVING_PASS[self.q_source]
            if self._pass == "bootstrap":
                self._accumulate_gram(b, hidden)
            if project or observe:
                shared = coeffs.detach() if coeffs is not None and coeffs.dtype == BASIS_DTYPE else None
                self._measure(b, hidden, project=project, observe=observe, live_coeffs=shared)
        if not project:
            return None

        projected = self._project(b, coeffs)
        if projected.requires_grad:
            tokens = hidden.numel() // self.hidden_size
            projected.register_hook(functools.partial(self._count_backward_wire, tokens))
        if isinstance(output, torch.Tensor):
            return projected
        return (projected, *output[1:]) if isinstance(output, tuple) else [projected, *output[1:]]

    def _coefficients(self, b: int, hidden: torch.Tensor) -> torch.Tensor:
        """h·Q in h's dtype, (..., r); differentiable in h only."""
        with _autocast_off(hidden.device):
            return hidden @ self._basis_as(hidden.dtype)[b]  # (..., r)

    def _project(self, b: int, coeffs: torch.Tensor) -> torch.Tensor:
        """ĥ = (h·Q)·Qᵀ from the coefficients h·Q, in their dtype; differentiable in h only."""
        with _autocast_off(coeffs.device):
            return coeffs @ self._basis_as(coeffs.dtype)[b].transpose(0, 1)  # (..., H)

    def _measure(self, b: int, hidden: torch.Tensor, project: bool, observe: bool,
                 live_coeffs: Optional[torch.Tensor] = None) -> None:
        """Telemetry of a real projected forward and/or sketch accumulation, in fp32, no host sync.

        ``live_coeffs``: h·Q_live already computed in fp32 by the projection (reused), or None.
        """
        with torch.no_grad(), _autocast_off(hidden.device):
            activations = hidden.detach().reshape(-1, self.hidden_size).to(BASIS_DTYPE)  # (tokens, H)
            tokens = activations.shape[0]
            if live_coeffs is not None:
                live_coeffs = live_coeffs.reshape(-1, self.rank)  # (tokens, r)
            if project:
                # ‖h − hQQᵀ‖² = ‖h‖² − ‖hQ‖² for orthonormal Q (squared norms without a temporary).
                if live_coeffs is None:
                    live_coeffs = activations @ self._live[b]  # (tokens, r)
                total_sq = torch.linalg.vector_norm(activations).square()
                kept_sq = torch.linalg.vector_norm(live_coeffs).square()
                err = ((total_sq - kept_sq).clamp_min(0) / total_sq.clamp_min(torch.finfo(BASIS_DTYPE).tiny)).sqrt()
                self.telemetry.record_recon_err(b, err)
                self.telemetry.record_wire(tokens, self.rank, self.hidden_size, hidden.element_size())
            if observe:
                # Power-iteration sketch V += Aᵀ(A·Q), warm-started from the newest iterate:
                # the staged Q while one is pending, else the live Q.
                if self._staged is not None:
                    coeffs = activations @ self._staged[b]  # (tokens, r)
                else:
                    coeffs = live_coeffs if live_coeffs is not None else activations @ self._live[b]  # (tokens, r)
                # A non-finite contribution (an Inf/NaN activation, or an overflow) is skipped on the
                # device, without a host read, and counted: one bad forward must not poison V, and
                # through orth(V) every later Q.
                contribution = activations.transpose(0, 1) @ coeffs  # (H, r)
                finite = torch.isfinite(contribution).all()  # () bool
                self._sketch[b].add_(torch.where(finite, contribution, 0.0))
                self._observed[b] += tokens
                self.telemetry.record_observed(tokens, skipped=~finite)

    def _accumulate_gram(self, b: int, hidden: torch.Tensor) -> None:
        """Gram += AᵀA of one real forward's boundary activations (fp32, no host sync)."""
        with torch.no_grad(), _autocast_off(hidden.device):
            activations = hidden.detach().reshape(-1, self.hidden_size).to(BASIS_DTYPE)  # (tokens, H)
            if self._gram is None:
                self._gram = torch.zeros(len(self.layers), self.hidden_size, self.hidden_size,
                                         dtype=BASIS_DTYPE, device=self.device)  # (B, H, H)
            self._gram[b].addmm_(activations.transpose(0, 1), activations)

    def _count_backward_wire(self, tokens: int, grad: torch.Tensor) -> None:
        self.telemetry.record_wire(tokens, self.rank, self.hidden_size, grad.element_size())

    # ---- Q refresh -------------------------------------------------------------------------
    def take_sketch(self) -> torch.Tensor:
        """This rank's sketch V (B, H, r) fp32 since the last refresh; resets it (to ship it).

        Raises:
            RuntimeError: nothing was observed since the last refresh.
        """
        self._require_observed("take_sketch")
        sketch, self._sketch = self._sketch, torch.zeros_like(self._sketch)
        self._observed = [0] * len(self.layers)
        return sketch

    def refresh(self, sketch: Optional[torch.Tensor] = None, reduce: bool = True) -> torch.Tensor:
        """One power-iteration step: stage Q_new = orth(ΣV); the live Q is not changed.

        Algorithm:

        1. Sum V across the data-parallel group: one all-reduce of the stacked (B, H, r)
           tensor (skipped when ``reduce`` is False).
        2. Q_new = orth(V) (:func:`~verl_commeff.codec.basis.power_step`), batched over boundaries.
           A boundary whose Q_new is not finite (V overflowed, or a sketch from elsewhere held
           an Inf/NaN) keeps its newest Q (the staged one, else the live one), decided on the
           device and counted (``commeff/codec/skipped_refreshes``).
        3. Stage Q_new; it goes live at :meth:`activate_staged`. Counts H × r × 4 bytes per
           boundary of Q broadcast.

        Args:
            sketch: a (B, H, r) sketch from elsewhere (e.g. the anchor's
                :meth:`take_sketch`); default this codec's own accumulated sketch, which is
                then reset.
            reduce: sum the sketch over ``process_group`` first; pass False when every rank
                already holds the same total.

        Returns:
            The staged bases (B, H, r) fp32.

        Raises:
            RuntimeError: no sketch given and nothing observed since the last refresh.
        """
        if sketch is None:
            sketch = self.take_sketch()
        else:
            self._check_bases(sketch, "refresh sketch")
            sketch = sketch.to(device=self.device, dtype=BASIS_DTYPE, copy=True)

        # Step 1: sum V across the data-parallel group (one all-reduce).
        if reduce:
            all_reduce_(sketch, self.process_group)

        # Step 2: Q_new = orth(V); a boundary whose Q_new is not finite keeps its newest Q.
        staged = power_step(sketch)  # (B, H, r)
        finite = torch.isfinite(staged).flatten(1).all(dim=1)  # (B,) bool
        newest = self._staged if self._staged is not None else self._live  # (B, H, r)
        staged = torch.where(finite[:, None, None], staged, newest)  # (B, H, r)
        self.telemetry.record_refresh(skipped=~finite)

        # Step 3: stage it.
        self._staged = staged
        self.telemetry.record_q_bcast(len(self.layers) * self.hidden_size * self.rank * staged.element_size())
        return staged

    # ---- the first basis (init=activations) -------------------------------------------------
    @property
    def needs_bootstrap(self) -> bool:
        """True until :meth:`finish_bootstrap` when ``init=activations`` (always False for ``random``)."""
        return not self._bootstrapped

    def finish_bootstrap(self) -> torch.Tensor:
        """Make the principal subspace of the ``bootstrap`` pass's activations the live Q.

        Steps:
            1. Sum the Gram Σ AᵀA across ``process_group`` (one all-reduce of (B, H, H)).
            2. Q = its top-r eigenvectors per boundary (:func:`~verl_commeff.codec.basis.principal_basis`).
            3. Q goes live at once (nothing was projected yet); the Gram is dropped.

        Returns:
            The new live bases (B, H, r) fp32.

        Raises:
            RuntimeError: not waiting for a bootstrap, or the bootstrap pass reached no boundary.
        """
        if self._bootstrapped:
            raise RuntimeError("BoundaryCodec.finish_bootstrap: the first basis is already set "
                               f"(commeff.codec.init={self.init!r})")
        if self._gram is None:
            raise RuntimeError("BoundaryCodec.finish_bootstrap: the bootstrap pass observed no activations "
                               "(run the forwards under pass_scope('bootstrap') first)")
        # Step 1: the Gram over the data-parallel group.
        gram, self._gram = self._gram, None
        all_reduce_(gram, self.process_group)
        # Step 2: the principal subspace.
        bases = principal_basis(gram, self.rank)  # (B, H, r)
        # Step 3: live now.
        self._live, self._bootstrapped = bases, True
        self._cast_cache.clear()
        self.telemetry.record_q_update(self._live)
        return bases

    def stage_basis(self, bases: torch.Tensor) -> None:
        """Stage bases computed elsewhere (e.g. the actor's refreshed Q, shipped to the anchor).

        Args:
            bases: (B, H, r) with orthonormal columns (not re-checked: that needs a host sync).
        """
        self._check_bases(bases, "stage_basis bases")
        self._staged = bases.to(device=self.device, dtype=BASIS_DTYPE, copy=True)

    def activate_staged(self) -> bool:
        """Make the staged Q live (call at a step boundary, before the old-log-prob pass).

        Returns:
            True if a staged basis went live, False if none was staged.
        """
        if self._staged is None:
            return False
        self._live, self._staged = self._staged, None
        self._cast_cache.clear()
        self.telemetry.record_q_update(self._live)
        return True

    def _require_observed(self, caller: str) -> None:
        if min(self._observed) == 0:
            raise RuntimeError(
                f"BoundaryCodec.{caller}: no activations observed since the last refresh at boundary layers "
                f"{[layer for layer, n in zip(self.layers, self._observed) if n == 0]} (q_source={self.q_source!r} "
                f"observes forwards under pass_scope({OBSERVING_PASS[self.q_source]!r})); pass a sketch instead"
            )

    # ---- cross-rank check, telemetry --------------------------------------------------------
    def basis_checksum(self) -> torch.Tensor:
        """Bool 0-d tensor: the live Q is identical on every rank of ``process_group``."""
        return identical_across_ranks([self._live], self.process_group)

    def metrics(self) -> dict[str, float]:
        """The step's ``commeff/codec/*`` and ``commeff/bytes/codec*`` metrics (one host sync)."""
        return self.telemetry.metrics()

    # ---- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Bases, sketch, counters and telemetry (cloned; no process group inside)."""
        return {
            "version": STATE_VERSION,
            "layers": list(self.layers),
            "hidden_size": self.hidden_size,
            "rank": self.rank,
            "seed": self.seed,
            "live": self._live.clone(),
            "staged": None if self._staged is None else self._staged.clone(),
            "sketch": self._sketch.clone(),
            "observed": list(self._observed),
            "bootstrapped": self._bootstrapped,
            "telemetry": self.telemetry.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output onto this codec's device.

        Raises:
            ValueError: the checkpoint is for other boundaries, hidden size or rank.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"codec state version={state.get('version')!r} is not supported: must be {STATE_VERSION}")
        for key, mine in (("layers", self.layers), ("hidden_size", self.hidden_size), ("rank", self.rank)):
            if state[key] != mine:
                raise ValueError(f"codec state {key}={state[key]!r} does not match this codec's {key}={mine!r}")
        for key in ("live", "sketch"):
            self._check_bases(state[key], f"codec state {key}")
        if state["staged"] is not None:
            self._check_bases(state["staged"], "codec state staged")
        self._live = state["live"].to(device=self.device, dtype=BASIS_DTYPE, copy=True)
        self._staged = None if state["staged"] is None else state["staged"].to(
            device=self.device, dtype=BASIS_DTYPE, copy=True)
        self._sketch = state["sketch"].to(device=self.device, dtype=BASIS_DTYPE, copy=True)
        self._observed = [int(n) for n in state["observed"]]
        self._bootstrapped = bool(state.get("bootstrapped", True))  # older checkpoints: past the first basis
        self._gram = None
        self._cast_cache.clear()
        self.telemetry.load_state_dict(state["telemetry"])

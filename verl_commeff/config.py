"""Config dataclasses for every verl-commeff knob (the ``commeff`` yaml node).

They follow verl's own convention: dataclasses on :class:`verl.base_config.BaseConfig`
(dict-like, frozen after construction; a stand-in with the same interface when verl is not
installed, :mod:`verl_commeff.base_config`), ``Args:`` docstrings and ``__post_init__``
validation. A bad value raises :class:`CommEffConfigError` (a ``ValueError``) naming the
field, the value and the allowed range, e.g.::

    commeff.merger.alpha=1.5 is out of range: must be in [0, 1]

Defaults are the seed's K=5 run (SPEC §7): r=77, pp_size=8, delay_k=5, cadence=5,
alpha=0.25, beta=0.5, merger signed_ema. Every latency, cadence and age counts ticks
(optimizer steps), never global steps (SPEC §1).

Checks that need the model (r ≤ hidden size, pp_size ≤ number of decoder layers) run
when the codec is installed on a model, with the same error type and wording
(:func:`check_against_model`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from verl_commeff.base_config import BaseConfig

__all__ = [
    "AdaptiveLambdaConfig",
    "AnchorConfig",
    "CodecConfig",
    "CommEffConfig",
    "DPCodecConfig",
    "CommEffConfigError",
    "MergerConfig",
    "check_against_model",
    "resolve_transport",
    "to_commeff_config",
]

DP_PARAMS = ("targets", "all_2d")  # commeff.dp_codec.params
FACTOR_PRECISIONS = ("full", "bf16")  # commeff.dp_codec.factor_precision
ORTHOGONALIZATIONS = ("qr", "cholesky_qr2")  # commeff.dp_codec.orthogonalization
CODEC_INITS = ("activations", "random")
DOSE_MODES = ("off", "ratio", "cos", "evidence")
PROBE_MODES = ("auto", "on", "off")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class CommEffConfigError(ValueError):
    """A ``commeff`` config value is invalid; the message names field, value and allowed range."""


def _fail(path: str, value: Any, allowed: str) -> None:
    raise CommEffConfigError(f"{path}={value!r} is out of range: must be {allowed}")


def _check_int(path: str, value: Any, lo: int, hi: Optional[int] = None) -> None:
    allowed = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, value, allowed)
    if value < lo or (hi is not None and value > hi):
        _fail(path, value, allowed)


def _check_float(path: str, value: Any, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
    allowed = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(path, value, allowed)
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        _fail(path, value, allowed)


def _check_bool(path: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(path, value, "true or false")


def _check_choice(path: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise CommEffConfigError(f"{path}={value!r} is not valid: must be one of {list(choices)}")


@dataclass
class CodecConfig(BaseConfig):
    """Boundary PowerSGD codec: simulated pipeline-parallel compression (SPEC §2).

    Args:
        enable: install the codec on the actor's train and old-log-prob passes.
        rank: r, the columns of each boundary basis Q (H × r); 1 ≤ r ≤ hidden size.
            The wire per boundary is tokens × r instead of tokens × H.
        pp_size: number of simulated pipeline stages; 2 ≤ pp_size ≤ decoder layers.
            The last layer of every non-final stage is a boundary.
        seed: seed of the Q bootstrap orth(randn(H, r)), combined with the boundary index.
        init: the first basis: ``activations`` (the top-r principal subspace of the boundary
            activations of the actor's first old-log-prob batch, seen by one extra forward
            before the first projected pass, then handed to the anchor) or ``random`` (the
            seeded orth(randn(H, r)) itself, as before issue 17).
        q_source: who observes the activations that refresh Q: ``anchor`` (the anchor's
            dense forward at each fire; the seed's runs) or ``fast`` (the actor's own
            compressed forwards).
        q_cadence: refresh Q every ``q_cadence`` ticks; ``None`` couples it to
            ``anchor.cadence`` (the seed). With ``q_source=anchor`` it must be a multiple of
            ``anchor.cadence`` (Q can only move when the anchor fires).
    """

    enable: bool = True
    rank: int = 77
    pp_size: int = 8
    seed: int = 0
    init: str = "activations"
    q_source: str = "anchor"
    q_cadence: Optional[int] = None

    def __post_init__(self):
        _check_int("commeff.codec.rank", self.rank, 1)
        _check_int("commeff.codec.pp_size", self.pp_size, 2)
        _check_int("commeff.codec.seed", self.seed, 0)
        _check_choice("commeff.codec.init", self.init, CODEC_INITS)
        _check_choice("commeff.codec.q_source", self.q_source, ("anchor", "fast"))
        if self.q_cadence is not None:
            _check_int("commeff.codec.q_cadence", self.q_cadence, 1)


@dataclass
class AnchorConfig(BaseConfig):
    """The anchor: dense gradient at stale weights θ_{t−K} on paired replay (SPEC §3).

    Args:
        enable: run the anchor worker group (without it the merger stays cold).
        delay_k: K, the anchor latency in ticks: fire t uses the mini-batch of tick t−K and
            the generator weights of that mini-batch. K ≥ 0.
        cadence: the anchor fires at tick t iff ``t % cadence == 0``; cadence ≥ 1.
        beta: β_anc of the anchor EMA M̄ ← β·M̄ + (1−β)·M; 0 ≤ β < 1 (0 = no smoothing).
        placement: ``separate`` (own Ray resource pool: one slow anchor, fast swarm) or
            ``colocated`` (shares the actor's devices, offloaded between fires).
        sync: ``strict`` (at tick t the actor waits for fire t: staleness exactly K) or
            ``free`` (the actor uses the newest finished fire and logs its real age).
        transport: how M̄ returns to the actor: ``shards`` (M̄ itself, sharded like the
            gradient), ``sign`` (packed sign bits, 1 bit per coordinate: 32× fewer bytes, M̄
            stays on the anchor) or ``auto`` (the default): ``sign`` when the merger needs only
            sign(M̄) (its class sets ``signs_suffice``: ``signed_ema``, ``none``) and
            ``merger.adaptive.mode`` is not ``cos``, else ``shards``. :class:`CommEffConfig`
            resolves ``auto`` to one of the two; an explicit ``sign`` with ``cos`` is an error.
        snapshot_dtype: the dtype the generator-weight snapshots travel in (and in which the
            delta encoding compares weights): ``auto`` (the actor's FSDP mixed-precision
            ``param_dtype``: bf16 on the GPU presets, fp32 on the CPU preset), ``fp32`` or
            ``bf16``. Lossless for the anchor's gradient only when its forward casts the
            parameters to that dtype anyway (FSDP mixed precision with that ``param_dtype``).
        probe: the anchor's dose probe (:mod:`verl_commeff.anchor.dose_probe`): per fire, one more
            forward/backward through the codec with the Q the actor had at the replayed tick,
            compared with the dense gradient and the M̄ the actor held there; the result (λ*,
            cos(C, D), the held M̄'s agreement with D) goes back with the fire and is logged as
            ``commeff/dose/*``. ``auto`` (the default): on exactly when
            ``merger.adaptive.mode=evidence`` (which needs it), ``on``, ``off``. Needs
            ``sync=strict`` (the held M̄ at a replayed tick is then known) and, with the codec
            on, ``codec.q_source=anchor`` (the anchor keeps the actor's Q).
        snapshot_keyframe_every: every this many snapshots the actor sends a dense keyframe
            instead of a delta against the previous snapshot; it bounds the chain the driver
            keeps to rebuild a restarted anchor's weights. 1 = every snapshot dense; ≥ 1.
        targets: module-name suffixes of the 2-D weights the anchor computes M for
            (default: q/k/v/o/gate/up/down projections of every decoder layer).
        n_gpus_per_node: devices per node of the anchor's own pool (``placement=separate``);
            ``n_gpus_per_node × nnodes`` from 1 to the actor's world size (smaller: FSDP2 only,
            checked by :func:`~verl_commeff.trainer.anchor_group.anchor_resource_pool`).
        nnodes: nodes of the anchor's own pool (``placement=separate``).
        wait_timeout_s: ``sync=strict``: seconds an actor rank waits for a fire's result
            before it fails with an error naming the fire and the anchor rank; > 0.
        wait_log_s: ``sync=strict``: while waiting, log a line every this many seconds; > 0.
        max_restarts: ``sync=free``: times the trainer rebuilds a failed anchor group in a
            run (the actor meanwhile continues on the held M̄); 0 = never. ``sync=strict``
            never restarts: a failed fire stops the run.
        placement_timeout_s: ``placement=separate``: seconds to wait at start for the
            cluster to grant the anchor's own pool before failing with an error that names
            the resources asked for and those available (instead of waiting forever); > 0.
    """

    enable: bool = True
    delay_k: int = 5
    cadence: int = 5
    beta: float = 0.5
    placement: str = "separate"
    sync: str = "strict"
    transport: str = "auto"
    snapshot_dtype: str = "auto"
    probe: str = "auto"
    snapshot_keyframe_every: int = 32
    targets: tuple[str, ...] = DEFAULT_TARGETS
    n_gpus_per_node: int = 1
    nnodes: int = 1
    wait_timeout_s: float = 1800.0
    wait_log_s: float = 60.0
    max_restarts: int = 1
    placement_timeout_s: float = 120.0

    def __post_init__(self):
        _check_int("commeff.anchor.delay_k", self.delay_k, 0)
        _check_int("commeff.anchor.cadence", self.cadence, 1)
        _check_float("commeff.anchor.beta", self.beta, 0.0, 1.0, hi_open=True)
        _check_choice("commeff.anchor.placement", self.placement, ("separate", "colocated"))
        _check_choice("commeff.anchor.sync", self.sync, ("strict", "free"))
        _check_choice("commeff.anchor.transport", self.transport, ("auto", "shards", "sign"))
        _check_choice("commeff.anchor.snapshot_dtype", self.snapshot_dtype, ("auto", "fp32", "bf16"))
        _check_choice("commeff.anchor.probe", self.probe, PROBE_MODES)
        _check_int("commeff.anchor.snapshot_keyframe_every", self.snapshot_keyframe_every, 1)
        if isinstance(self.targets, str) or len(self.targets) == 0 or not all(
            isinstance(t, str) and t for t in self.targets
        ):
            _fail("commeff.anchor.targets", self.targets, "a non-empty list of module-name suffixes")
        object.__setattr__(self, "targets", tuple(self.targets))
        _check_int("commeff.anchor.n_gpus_per_node", self.n_gpus_per_node, 1)
        _check_int("commeff.anchor.nnodes", self.nnodes, 1)
        _check_float("commeff.anchor.wait_timeout_s", self.wait_timeout_s, 0.0, float("inf"), lo_open=True)
        _check_float("commeff.anchor.wait_log_s", self.wait_log_s, 0.0, float("inf"), lo_open=True)
        _check_int("commeff.anchor.max_restarts", self.max_restarts, 0)
        _check_float("commeff.anchor.placement_timeout_s", self.placement_timeout_s, 0.0, float("inf"), lo_open=True)


@dataclass
class AdaptiveLambdaConfig(BaseConfig):
    """The dose λ_t: fixed, adaptive clamp(λ_0 + κ·(c̄ − c_t), 0, cap) (SPEC §4, seed next step
    #4), or driven by the anchor's evidence (issue 17).

    Args:
        mode: ``evidence`` (the default since issue 17), ``off`` (λ_t = λ_0; with λ_0 = 1 the
            seed's plain signed_ema), ``ratio`` (c_t = ‖δ_t‖/‖G_t‖), ``cos`` (c_t = cos(G_t, M̄)) or
            ``evidence`` (λ_t = an EMA over fires of the λ* ∈ [0, cap] the anchor measures: the
            dose that would have pointed the merged gradient closest to the dense one at the
            ticks it replays; needs ``anchor.probe``, see :mod:`verl_commeff.mergers.evidence_dose`).
        lambda0: λ_0, the base dose; ≥ 0. With mode ``off`` and λ_0 = 1 the merger is the
            seed's plain signed_ema.
        kappa: κ, the gain on the deviation of c_t from its running median; any real
            number (negative flips the direction).
        cap: λ_cap, the upper clamp of λ_t (and of the anchor's λ*); ≥ 0, or None (the default):
            1/(1 − merger.alpha) with mode ``evidence`` (the merge may go as far as G′ = |G| ⊙ sign(M̄);
            4/3 at α = 0.25), 1 otherwise (resolved by :class:`MergerConfig`).
        window: number of past c_t values whose median is c̄; ≥ 1.
        prior: ``evidence``: λ_t before the first fire that carries a λ*; ≥ 0 (0: no evidence,
            no merge).
        momentum: ``evidence``: ρ of λ ← ρ·λ + (1 − ρ)·λ* per fire; in [0, 1) (0 = the latest λ*).
    """

    mode: str = "evidence"
    lambda0: float = 1.0
    kappa: float = 1.0
    cap: Optional[float] = None
    window: int = 64
    prior: float = 0.0
    momentum: float = 0.5

    def __post_init__(self):
        _check_choice("commeff.merger.adaptive.mode", self.mode, DOSE_MODES)
        _check_float("commeff.merger.adaptive.lambda0", self.lambda0, 0.0, float("inf"))
        _check_float("commeff.merger.adaptive.kappa", self.kappa, float("-inf"), float("inf"))
        if self.cap is None and self.mode != "evidence":  # auto outside evidence: 1 (evidence: MergerConfig, from α)
            object.__setattr__(self, "cap", 1.0)
        if self.cap is not None:
            _check_float("commeff.merger.adaptive.cap", self.cap, 0.0, float("inf"))
        _check_int("commeff.merger.adaptive.window", self.window, 1)
        _check_float("commeff.merger.adaptive.prior", self.prior, 0.0, float("inf"))
        _check_float("commeff.merger.adaptive.momentum", self.momentum, 0.0, 1.0, hi_open=True)


@dataclass
class MergerConfig(BaseConfig):
    """The merger applied every tick after gradient reduction, before clipping (SPEC §4).

    Args:
        name: registered merger: ``signed_ema`` (G′ = G + λ·(1−α)·(|G|⊙sign(M̄) − G)),
            ``none`` (G′ = G: the no-merger floor), or any merger registered with
            :func:`verl_commeff.mergers.registry.register_merger`.
        alpha: α, the share of the fast gradient kept; 0 ≤ α ≤ 1 (α = 1 is the identity).
        age_decay: μ, λ_t ← λ_t·μ^age with age = ticks since the held M̄ was produced;
            0 < μ ≤ 1 (1 = off).
        adaptive: the adaptive-λ controller (off by default).
        checksum_every: every this many ticks fingerprint what each rank holds (its M̄
            shard or sign bits against the anchor's fingerprint of it, the live Q, the
            ticks) and fail with a clear error when a rank differs (one all-gather of a
            ~20-number row); 0 = never.
        kernels: how the merger's two passes over the gradients run: ``auto`` (the fastest
            measured on the gradients' device type: ``compiled`` on a CPU, ``triton`` on a
            CUDA GPU, ``eager`` elsewhere), ``triton`` (CUDA: one multi-tensor Triton launch
            per pass over every target, reading sign(M̄) as packed bits), ``compiled`` (one
            fused ``torch.compile`` kernel per tensor and pass; needs a C++ compiler on a
            CPU, Triton on a GPU) or ``eager`` (the same maths as in-place torch ops, about 5
            passes over memory each). Built and checked when the actor starts; all give
            bit-identical merged gradients.
    """

    name: str = "signed_ema"
    alpha: float = 0.25
    age_decay: float = 1.0
    adaptive: AdaptiveLambdaConfig = field(default_factory=AdaptiveLambdaConfig)
    checksum_every: int = 50
    kernels: str = "auto"

    def __post_init__(self):
        from verl_commeff.mergers.kernels import KERNEL_MODES
        from verl_commeff.mergers.registry import merger_names

        names = merger_names()
        if self.name not in names:
            raise CommEffConfigError(f"commeff.merger.name={self.name!r} is not valid: must be one of {names}")
        _check_float("commeff.merger.alpha", self.alpha, 0.0, 1.0)
        _check_float("commeff.merger.age_decay", self.age_decay, 0.0, 1.0, lo_open=True)
        if isinstance(self.adaptive, dict):
            object.__setattr__(self, "adaptive", AdaptiveLambdaConfig(**self.adaptive))
        if self.adaptive.cap is None:  # auto: the evidence dose may reach G′ = |G| ⊙ sign(M̄)
            auto = 1.0 / (1.0 - self.alpha) if self.adaptive.mode == "evidence" and self.alpha < 1.0 else 1.0
            object.__setattr__(self.adaptive, "cap", auto)
        _check_int("commeff.merger.checksum_every", self.checksum_every, 0)
        _check_choice("commeff.merger.kernels", self.kernels, KERNEL_MODES)


@dataclass
class DPCodecConfig(BaseConfig):
    """PowerSGD on the data-parallel gradient across HSDP replicas (SPEC §5), torch's knobs.

    The matrices chosen by ``params`` are exchanged between replicas as low-rank factors
    (P = G·Q, Q = Gᵀ·P̂, per row shard); every other gradient (1-D parameters, and with
    ``params=targets`` the non-target matrices), and every gradient before ``start_iter``,
    is all-reduced densely in its own dtype. Inside a replica FSDP2's dense reduce-scatter
    is unchanged. With one replica the same maths runs on the already-reduced gradient
    (simulation: bytes are logical).

    The defaults (every 2-D parameter at r = 16, bf16 factors) send 146× fewer bytes than a
    dense all-reduce per exchange at Qwen2.5-1.5B (docs/benchmarks.md) and are the setting
    the tiny learning study backs (docs/dp_codec_study.md); ``full`` precision and
    ``params=targets`` give torch's ``powerSGD_hook`` on the target matrices.

    Args:
        enable: exchange the actor's gradient across replicas with PowerSGD.
        rank: r, the columns of P (n × r) and Q (m × r) per matrix; ≥ 1 (capped at
            min(n, m) per matrix, as torch does).
        start_iter: optimizer steps (ticks) exchanged densely before compression starts
            (torch's ``start_powerSGD_iter``); ≥ 0.
        min_compression_rate: a matrix is compressed only if (n + m)·r·rate < n·m (torch's
            rule); smaller ones go dense; > 0.
        use_error_feedback: add the previous step's compression error to the gradient
            before compressing (torch's default: on).
        warm_start: reuse the previous step's Q (re-orthonormalised) instead of a fresh
            random Q every step (torch's default: on).
        seed: seed of the random Q initialisation (torch's ``random_seed``); ≥ 0.
        params: which 2-D gradients go through PowerSGD: ``targets`` (the matrices named
            by ``commeff.anchor.targets``) or ``all_2d`` (every 2-D parameter, the token
            embedding and LM head included).
        embedding_rank: r for the vocabulary-sized matrices (token embedding, LM head;
            tied or not) when ``params=all_2d``; None = ``rank``; ≥ 1.
        factor_precision: the dtype P and Q cross replicas in: ``full`` (the gradient's
            own dtype, torch's hook) or ``bf16`` (the error-feedback memory absorbs the
            rounding: Ĝ is rebuilt from the rounded factors on every replica).
        orthogonalization: how P and the warm-started Q are orthonormalised: ``qr``
            (``torch.linalg.qr``, torch's hook) or ``cholesky_qr2`` (two CholeskyQR passes
            in float64: the same column space, a fixed number of batched kernels per shape
            group where a GPU's batched QR factors matrix by matrix).
    """

    enable: bool = False
    rank: int = 16
    start_iter: int = 10
    min_compression_rate: float = 2.0
    use_error_feedback: bool = True
    warm_start: bool = True
    seed: int = 0
    params: str = "all_2d"
    embedding_rank: Optional[int] = None
    factor_precision: str = "bf16"
    orthogonalization: str = "qr"

    def __post_init__(self):
        _check_bool("commeff.dp_codec.enable", self.enable)
        _check_int("commeff.dp_codec.rank", self.rank, 1)
        _check_int("commeff.dp_codec.start_iter", self.start_iter, 0)
        _check_float("commeff.dp_codec.min_compression_rate", self.min_compression_rate, 0.0, float("inf"),
                      lo_open=True, hi_open=True)
        _check_bool("commeff.dp_codec.use_error_feedback", self.use_error_feedback)
        _check_bool("commeff.dp_codec.warm_start", self.warm_start)
        _check_int("commeff.dp_codec.seed", self.seed, 0)
        _check_choice("commeff.dp_codec.params", self.params, DP_PARAMS)
        if self.embedding_rank is not None:
            _check_int("commeff.dp_codec.embedding_rank", self.embedding_rank, 1)
            if self.params != "all_2d":
                raise CommEffConfigError(
                    f"commeff.dp_codec.embedding_rank={self.embedding_rank!r} needs commeff.dp_codec.params=all_2d "
                    f"(with params={self.params!r} the embedding and LM head are exchanged densely)"
                )
        _check_choice("commeff.dp_codec.factor_precision", self.factor_precision, FACTOR_PRECISIONS)
        _check_choice("commeff.dp_codec.orthogonalization", self.orthogonalization, ORTHOGONALIZATIONS)


@dataclass
class CommEffConfig(BaseConfig):
    """The whole ``commeff`` node.

    Args:
        enable: turn the plugin on; off, the actor is stock verl (bit-identical).
        codec: the boundary PowerSGD codec.
        anchor: the anchor worker group and its schedule.
        merger: the per-tick merger and its dose control.
        dp_codec: PowerSGD on the data-parallel gradient across HSDP replicas (off by default).
    """

    enable: bool = True
    codec: CodecConfig = field(default_factory=CodecConfig)
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    merger: MergerConfig = field(default_factory=MergerConfig)
    dp_codec: DPCodecConfig = field(default_factory=DPCodecConfig)

    def __post_init__(self):
        sections = (("codec", CodecConfig), ("anchor", AnchorConfig), ("merger", MergerConfig), ("dp_codec", DPCodecConfig))
        for name, cls in sections:
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, cls(**value))
        codec, anchor = self.codec, self.anchor
        if codec.enable and codec.q_source == "anchor":
            if not anchor.enable:
                raise CommEffConfigError(
                    "commeff.codec.q_source='anchor' needs commeff.anchor.enable=True "
                    "(or set commeff.codec.q_source=fast)"
                )
            if self.q_cadence % anchor.cadence != 0:
                raise CommEffConfigError(
                    f"commeff.codec.q_cadence={codec.q_cadence!r} is not valid with q_source='anchor': must be a "
                    f"multiple of commeff.anchor.cadence={anchor.cadence} (Q moves only when the anchor fires)"
                )
        if anchor.transport == "sign" and self.merger.adaptive.mode == "cos":
            raise CommEffConfigError(
                "commeff.merger.adaptive.mode='cos' needs M̄'s magnitudes: it is not valid with "
                "commeff.anchor.transport='sign' (use transport=shards or mode=ratio)"
            )
        if anchor.transport == "auto":
            object.__setattr__(anchor, "transport", resolve_transport(self.merger))
        self._check_probe()

    def _check_probe(self) -> None:
        """Resolve ``anchor.probe=auto`` and check what the probe and the evidence dose need."""
        codec, anchor = self.codec, self.anchor
        # Without an anchor the merger stays cold: no dose is ever applied, so the evidence dose asks nothing.
        evidence = self.merger.adaptive.mode == "evidence" and anchor.enable
        if anchor.probe == "auto":
            object.__setattr__(anchor, "probe", "on" if evidence else "off")
        if evidence and anchor.sync != "strict":
            raise CommEffConfigError(
                f"commeff.merger.adaptive.mode='evidence' (the default) needs commeff.anchor.sync='strict' (got "
                f"{anchor.sync!r}): the anchor must know which M̄ the actor held at the ticks it replays; with "
                "sync='free' set commeff.merger.adaptive.mode to off, ratio or cos")
        if evidence and anchor.probe != "on":
            raise CommEffConfigError("commeff.merger.adaptive.mode='evidence' needs commeff.anchor.probe=on (or auto): "
                                     "the anchor measures the dose")
        if anchor.probe != "on":
            return
        why = ("commeff.merger.adaptive.mode='evidence' (the default) turns commeff.anchor.probe on, which"
               if evidence else "commeff.anchor.probe=on")
        alternative = "; or set commeff.merger.adaptive.mode to off, ratio or cos" if evidence else ""
        if not anchor.enable:
            raise CommEffConfigError(f"{why} needs commeff.anchor.enable=True{alternative}")
        if anchor.sync != "strict":
            raise CommEffConfigError(f"commeff.anchor.probe=on needs commeff.anchor.sync='strict' (got {anchor.sync!r}): "
                                     "with 'free' the anchor cannot know which M̄ the actor held at a replayed tick")
        if codec.enable and codec.q_source != "anchor":
            raise CommEffConfigError(f"{why} needs commeff.codec.q_source='anchor' (the anchor then keeps the actor's Q "
                                     f"to compute the gradient through the codec){alternative}")

    @property
    def q_cadence(self) -> int:
        """The effective Q-refresh cadence in ticks (``codec.q_cadence`` or ``anchor.cadence``)."""
        return self.codec.q_cadence if self.codec.q_cadence is not None else self.anchor.cadence


def resolve_transport(merger: MergerConfig) -> str:
    """What ``anchor.transport=auto`` means for ``merger``: ``sign`` or ``shards``.

    ``sign`` when the merger class declares ``signs_suffice = True`` (it reads only sign(M̄))
    and the dose is not driven by cos(G, M̄) (which needs M̄'s magnitudes); otherwise ``shards``.
    """
    from verl_commeff.mergers.registry import get_merger_cls

    signs_suffice = getattr(get_merger_cls(merger.name), "signs_suffice", False)
    return "sign" if signs_suffice and merger.adaptive.mode != "cos" else "shards"


def check_against_model(codec: CodecConfig, hidden_size: int, num_layers: int) -> None:
    """Validate the codec knobs that depend on the model.

    Raises:
        CommEffConfigError: rank > hidden_size or pp_size > num_layers.
    """
    _check_int("commeff.codec.rank", codec.rank, 1, hidden_size)
    _check_int("commeff.codec.pp_size", codec.pp_size, 2, num_layers)


def _from_mapping(cls: type, node: dict, path: str) -> Any:
    """Build config dataclass ``cls`` from a plain mapping, naming unknown keys."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "_target_"}
    unknown = sorted(set(node) - set(fields) - {"_target_"})
    if unknown:
        raise CommEffConfigError(f"{path}.{unknown[0]} is not a knob: {path} has {sorted(fields)}")
    kwargs = {}
    for name, value in node.items():
        if name == "_target_":
            continue
        nested = _NESTED.get((cls, name))
        kwargs[name] = _from_mapping(nested, value, f"{path}.{name}") if nested and isinstance(value, dict) else value
    return cls(**kwargs)


_NESTED = {
    (CommEffConfig, "codec"): CodecConfig,
    (CommEffConfig, "anchor"): AnchorConfig,
    (CommEffConfig, "merger"): MergerConfig,
    (CommEffConfig, "dp_codec"): DPCodecConfig,
    (MergerConfig, "adaptive"): AdaptiveLambdaConfig,
}


def to_commeff_config(node: Any) -> CommEffConfig:
    """A validated ``CommEffConfig`` from the yaml node (DictConfig or dict; None = all defaults).

    The drop-in form (verl's own ``main_ppo`` with ``+commeff.<section>.<knob>=...``
    overrides) gives a partial node: missing knobs take their defaults.

    Raises:
        CommEffConfigError: an unknown key (naming the valid ones) or an invalid value.
    """
    from omegaconf import DictConfig, OmegaConf

    if node is None:
        return CommEffConfig()
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict):
        raise CommEffConfigError(f"commeff config must be a mapping, got {type(node).__name__}")
    return _from_mapping(CommEffConfig, node, "commeff")

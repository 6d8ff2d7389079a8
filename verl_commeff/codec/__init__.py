"""The boundary PowerSGD codec (SPEC §2): simulated pipeline-parallel compression.

- :mod:`~verl_commeff.codec.stages`: stage sizes, boundary layers, finding decoder layers.
- :mod:`~verl_commeff.codec.basis`: stateless basis math (orth, bootstrap, power step, sketch).
- :mod:`~verl_commeff.codec.boundary_codec`: the state object and its forward hooks.
- :mod:`~verl_commeff.codec.telemetry`: per-step metrics, read once per step.
"""

from verl_commeff.codec.basis import (
    bootstrap_basis,
    conditioning,
    derive_seed,
    orthonormalize,
    power_step,
    principal_basis,
    sketch,
)
from verl_commeff.codec.boundary_codec import PASS_NAMES, PROJECTED_PASSES, BoundaryCodec
from verl_commeff.codec.stages import boundary_layers, find_decoder_layers, stage_sizes
from verl_commeff.codec.telemetry import CodecTelemetry

__all__ = [
    "BoundaryCodec",
    "CodecTelemetry",
    "PASS_NAMES",
    "PROJECTED_PASSES",
    "boundary_layers",
    "bootstrap_basis",
    "conditioning",
    "derive_seed",
    "find_decoder_layers",
    "orthonormalize",
    "power_step",
    "principal_basis",
    "sketch",
    "stage_sizes",
]

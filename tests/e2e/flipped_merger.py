"""Test-only merger ``signed_ema_flipped``: signed_ema fed the *negated* anchor signal.

A deliberately broken merger for the learning test's sensitivity check: it pushes every
coordinate towards −sign(M̄), so a run with it must learn measurably worse than with the
real ``signed_ema``. It reaches verl's processes (driver and Ray workers alike) through
verl's own ``VERL_USE_EXTERNAL_MODULES`` hook, never through the package.
"""

from verl_commeff.mergers.sign_bits import PackedSigns
from verl_commeff.mergers.registry import register_merger
from verl_commeff.mergers.signed_ema import SignedEMAMerger


@register_merger("signed_ema_flipped")
class FlippedSignedEMAMerger(SignedEMAMerger):
    """``signed_ema`` with sign(M̄) replaced by sign(−M̄) (test only)."""

    name = "signed_ema_flipped"
    signs_suffice = False  # it negates M̄ itself: anchor.transport=auto resolves to shards

    def hold(self, m_bar, produced_tick, source_tick, fingerprints=None, evidence=None):
        if isinstance(m_bar, PackedSigns):
            raise ValueError("signed_ema_flipped needs commeff.anchor.transport=shards")
        # the anchor's fingerprints are of the M̄ it sent, not of its negation: leave this one unchecked
        super().hold([-m for m in m_bar], produced_tick, source_tick, fingerprints=None, evidence=evidence)

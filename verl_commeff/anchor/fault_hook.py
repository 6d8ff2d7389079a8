"""Test-only fault injection for the anchor worker (never set in a real run).

The reliability tests need an anchor that stalls, raises or dies at a chosen fire, in a
real Ray worker of the real trainer. The anchor worker calls :func:`maybe_inject_fault`
at the start of every fire; it does nothing unless the environment variable
``COMMEFF_TEST_ANCHOR_FAULT`` is set (Ray workers inherit the environment of the
process that started Ray):

- ``stall@F=S``: fire F sleeps S seconds before computing;
- ``raise@F``: fire F raises ``RuntimeError``;
- ``exit@F``: the worker process exits at fire F (Ray reports the actor dead).

``COMMEFF_TEST_ANCHOR_FAULT_GROUP``, if set, limits the fault to the worker group with
that name prefix (so a restarted group, which gets a new prefix, runs clean).
"""

from __future__ import annotations

import os
import time

__all__ = ["FAULT_ENV", "GROUP_ENV", "maybe_inject_fault"]

FAULT_ENV = "COMMEFF_TEST_ANCHOR_FAULT"
GROUP_ENV = "COMMEFF_TEST_ANCHOR_FAULT_GROUP"


def maybe_inject_fault(fire_tick: int) -> None:
    """Apply the fault ``COMMEFF_TEST_ANCHOR_FAULT`` describes if it targets ``fire_tick`` (see module)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    group = os.environ.get(GROUP_ENV)
    if group and os.environ.get("WG_PREFIX") != group:
        return
    kind, _, rest = spec.partition("@")
    fire, _, seconds = rest.partition("=")
    if int(fire) != fire_tick:
        return
    if kind == "stall":
        time.sleep(float(seconds))
    elif kind == "raise":
        raise RuntimeError(f"injected anchor fault at fire {fire_tick} ({FAULT_ENV}={spec})")
    elif kind == "exit":
        os._exit(1)
    else:
        raise ValueError(f"{FAULT_ENV}={spec!r}: the kind must be stall, raise or exit")

"""Count device↔host transfers issued from Python, on any device (CPU included).

On CUDA the real check is ``torch.cuda.set_sync_debug_mode("error")``: every synchronising
call (``.item()``, a blocking copy, ...) raises. A CPU run has no device to synchronise
with, so this counter wraps the Python entry points that WOULD transfer on an accelerator:

- device → host: ``Tensor.item``, ``tolist``, ``cpu``, ``numpy``, ``__bool__``,
  ``__float__``, ``__int__``, ``__index__``, ``torch.equal`` / ``allclose`` / ``is_nonzero``
  (a Python value out of a tensor);
- host → device: ``torch.tensor`` / ``as_tensor`` / ``from_numpy`` (Python or NumPy data
  into a tensor: a copy to the device whenever the tensor ends up there), and ``Tensor.to``
  / ``copy_`` / ``cuda`` between different devices (never on a CPU-only run).

It sees only calls made through these Python attributes (what library code like ours
issues); syncs inside C++ kernels (e.g. a CUDA ``linalg`` error check) need the CUDA mode.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

__all__ = ["HostTransfers", "count_host_transfers"]

_D2H_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
_D2H_FUNCTIONS = ("equal", "allclose", "is_nonzero")
_H2D_FUNCTIONS = ("tensor", "as_tensor", "from_numpy")
_MOVES = ("to", "copy_", "cuda")


@dataclass
class HostTransfers:
    """What :func:`count_host_transfers` saw: one ``(kind, name, call site)`` per transfer."""

    events: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def d2h(self) -> int:
        return sum(kind == "d2h" for kind, _, _ in self.events)

    @property
    def h2d(self) -> int:
        return sum(kind == "h2d" for kind, _, _ in self.events)

    def __len__(self) -> int:
        return len(self.events)

    def describe(self) -> str:
        return "; ".join(f"{kind} {name} at {site}" for kind, name, site in self.events) or "none"


def _call_site(within: Optional[str]) -> Optional[str]:
    """The first frame outside this module and torch (the code that asked for the transfer).

    With ``within``, the innermost frame whose file path contains it, or None when no frame
    does (the transfer was not made on behalf of that code).
    """
    for frame in inspect.stack(context=0)[2:]:
        if within is not None:
            if within in frame.filename:
                return f"{frame.filename}:{frame.lineno} ({frame.function})"
        elif frame.filename != __file__ and "/torch/" not in frame.filename:
            return f"{frame.filename}:{frame.lineno} ({frame.function})"
    return None if within is not None else "?"


def _target_device(args, kwargs):
    """The device a ``Tensor.to`` / ``cuda`` call moves to, or None when it names none."""
    for value in (*args, kwargs.get("device")):
        if isinstance(value, (str, torch.device)):
            return torch.device(value)
        if isinstance(value, torch.Tensor):  # .to(other): other's device
            return value.device
    return None


@contextlib.contextmanager
def count_host_transfers(within: Optional[str] = None) -> Iterator[HostTransfers]:
    """Within the block, record every device↔host transfer made through the wrapped entry points.

    Not thread-safe (it patches ``torch`` and ``torch.Tensor`` attributes for the block).

    Args:
        within: count only transfers with a frame of a file whose path contains this
            (e.g. ``"verl_commeff/"``: ours, not those the model's own code makes); None = all.
    """
    seen = HostTransfers()
    active = [True]  # a wrapped call made by another wrapped call is not counted twice
    patches: list[tuple[object, str, object]] = []

    def wrap(owner, name, kind, moves=False):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if not active[0]:
                return original(*args, **kwargs)
            count = True
            if moves:  # a transfer only between different devices
                src = args[0]
                if name == "copy_":
                    dst_device, src_device = src.device, args[1].device if len(args) > 1 else kwargs["src"].device
                else:
                    dst_device = torch.device("cuda") if name == "cuda" else _target_device(args[1:], kwargs)
                    src_device = src.device
                count = dst_device is not None and dst_device.type != src_device.type
            site = _call_site(within) if count else None
            if site is not None:
                seen.events.append((kind, name, site))
            active[0] = False
            try:
                return original(*args, **kwargs)
            finally:
                active[0] = True

        patches.append((owner, name, original))
        setattr(owner, name, wrapper)

    for name in _D2H_METHODS:
        wrap(torch.Tensor, name, "d2h")
    for name in _D2H_FUNCTIONS:
        wrap(torch, name, "d2h")
    for name in _H2D_FUNCTIONS:
        wrap(torch, name, "h2d")
    for name in _MOVES:
        wrap(torch.Tensor, name, "h2d", moves=True)
    try:
        yield seen
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)

"""Name → merger class registry, in the style of verl's ``register_policy_loss``.

A merger folds the anchor's held signal M̄ into the fast gradient G every tick (SPEC §4).
New mergers register with ``@register_merger("name")`` and are picked by
``commeff.merger.name`` in the config.
"""

from __future__ import annotations

from typing import Callable, TypeVar

MERGER_REGISTRY: dict[str, type] = {}

_M = TypeVar("_M", bound=type)


def register_merger(name: str) -> Callable[[_M], _M]:
    """Register a merger class under ``name``.

    Args:
        name: the value of ``commeff.merger.name`` that selects this class.

    Returns:
        The class decorator.
    """

    def decorator(cls: _M) -> _M:
        if name in MERGER_REGISTRY and MERGER_REGISTRY[name] is not cls:
            raise ValueError(f"merger {name!r} is already registered by {MERGER_REGISTRY[name].__qualname__}")
        MERGER_REGISTRY[name] = cls
        return cls

    return decorator


def merger_names() -> list[str]:
    """The registered merger names, sorted (imports the built-in mergers first)."""
    import verl_commeff.mergers  # noqa: F401  -- registers the built-ins

    return sorted(MERGER_REGISTRY)


def get_merger_cls(name: str) -> type:
    """The merger class registered under ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    names = merger_names()
    if name not in MERGER_REGISTRY:
        raise ValueError(f"unknown merger {name!r}: commeff.merger.name must be one of {names}")
    return MERGER_REGISTRY[name]

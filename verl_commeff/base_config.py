"""The base class of every ``commeff`` config dataclass: verl's ``BaseConfig`` when verl is there.

The core (clock, schedule, boundary codec, mergers, DP codec, the actor's per-tick state)
needs only torch, so it runs and is benchmarked on a machine with torch alone (a GPU box
without verl, Ray or vLLM: ``benchmarks/bench_gpu_tick.py``). With verl installed the
configs are subclasses of :class:`verl.base_config.BaseConfig`, as verl's own configs are;
without it they subclass :class:`TorchOnlyBaseConfig`, which has the same interface: a
dataclass that reads like a mapping and whose fields are frozen after construction.
"""

from __future__ import annotations

import collections.abc
import importlib.util
from dataclasses import FrozenInstanceError, dataclass, fields
from typing import Any

__all__ = ["BaseConfig", "TorchOnlyBaseConfig", "VERL_AVAILABLE"]

VERL_AVAILABLE = importlib.util.find_spec("verl") is not None


@dataclass
class TorchOnlyBaseConfig(collections.abc.Mapping):
    """verl's ``BaseConfig`` interface for a process without verl: a frozen, dict-like dataclass.

    Fields are frozen once set (``FrozenInstanceError``) unless named in ``_mutable_fields``;
    ``cfg["name"]``, ``cfg.get("name", default)``, ``len(cfg)`` and iteration over the field
    names behave as on verl's class.
    """

    _mutable_fields = set()
    _target_: str = ""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__ and name not in getattr(self, "_mutable_fields", set()):
            raise FrozenInstanceError(f"Field '{name}' is frozen and cannot be modified")
        super().__setattr__(name, value)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __iter__(self):
        return (f.name for f in fields(self))

    def __len__(self) -> int:
        return len(fields(self))


if VERL_AVAILABLE:
    from verl.base_config import BaseConfig
else:
    BaseConfig = TorchOnlyBaseConfig

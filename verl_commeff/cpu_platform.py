"""A CPU platform for verl 0.9.1, so the real trainer, workers and engines run without an accelerator.

verl 0.9.1 resolves its device through ``verl.plugin.platform``: it probes the registered
platforms (``nvidia``, ``npu``, …) and, when none is found, falls back to ``nvidia`` and
calls ``torch.cuda.*``. This module registers a ``cpu`` platform in that registry whose
``is_platform_available`` is true only when no accelerator is present on the host
(:mod:`verl_commeff.platform_probe`: device nodes, vendor tools, Ray's resources, not just
``torch.cuda.is_available()``), so verl's own auto-detection picks it on a CPU-only
machine and never on a GPU node, even in a process without an assigned GPU.
``VERL_COMMEFF_PLATFORM=cpu`` (or verl's ``VERL_PLATFORM=cpu``) asks for it explicitly,
``VERL_COMMEFF_PLATFORM=off`` rules it out.

On the CPU platform, :func:`install_engine_support` additionally

* points verl's ``EngineRegistry`` at the FSDP engines it registered for ``cuda``
  (their code is device-agnostic: it asks the platform for devices and backends), through
  the registry's own ``VERL_ENGINE_DEVICE`` override, and
* applies two unavoidable patches, both here and nowhere else:

  1. ``verl.utils.distributed.initialize_global_process_group_ray`` builds the backend
     string ``f"cpu:gloo,{device}:{backend}"``, which is ``"cpu:gloo,cpu:gloo"`` on this
     platform and torch rejects ("Duplicate device type cpu"). Patched to default to
     plain ``"gloo"``.
  2. FSDP1 refuses ``sync_module_states=True`` for CPU parameters, and verl always passes
     it while building non-rank-0 modules on the meta device (relying on that broadcast).
     On CPU every rank loads the real checkpoint (identical parameters) and the
     broadcast is turned off. verl also forces FSDP1's ``CPUOffload`` on forward-only
     (reference) models; offloading moves parameters to an accelerator for compute, which
     does not exist here, and they already live in host memory, so it is dropped. For
     FSDP2 verl forces ``CPUOffloadPolicy(pin_memory=True)`` on them, and pinning needs an
     accelerator: the policy is kept without pinning. Finally verl's
     ``load_fsdp_model_to_gpu`` (before exporting weights, e.g. to the rollout) builds the
     device string ``f"{device}:{id}"``, ``"cpu:cpu"`` here; the parameters are already in
     host memory, so it is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import types
from typing import Any, Optional

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry, get_platform

from verl_commeff.platform_probe import cpu_platform_choice, cpu_platform_wanted

__all__ = ["PlatformCPU", "install_engine_support", "is_cpu_platform"]


def _nothing(*args, **kwargs):
    return None


def _zero(*args, **kwargs):
    return 0


class _NoStream:
    """Stands in for ``torch.cuda.Stream``/``Event``: CPU work is synchronous."""

    def __init__(self, *args, **kwargs):
        pass

    synchronize = wait_stream = record = wait = _nothing

    def record_event(self, *args, **kwargs):
        return _NoStream()

    def query(self):
        return True


def _cpu_device_module() -> types.ModuleType:
    """A ``torch.cuda``-shaped module whose memory and stream calls are CPU no-ops."""
    m = types.ModuleType("verl_commeff_cpu_device")
    m.is_available = lambda: True
    m.device_count = lambda: 1
    m.current_device = lambda: "cpu"
    m.get_device_name = lambda *a, **k: "cpu"
    m.set_device = m.synchronize = m.empty_cache = m.ipc_collect = _nothing
    m.reset_peak_memory_stats = m.set_per_process_memory_fraction = _nothing
    m.memory_allocated = m.memory_reserved = m.max_memory_allocated = m.max_memory_reserved = _zero
    m.mem_get_info = lambda *a, **k: (0, 0)
    m.manual_seed = m.manual_seed_all = torch.manual_seed
    m.get_rng_state = lambda *a, **k: torch.get_rng_state()
    m.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    m.Stream = m.Event = _NoStream
    m.current_stream = lambda *a, **k: _NoStream()
    m.stream = lambda *a, **k: contextlib.nullcontext()
    m.memory = types.SimpleNamespace(_set_allocator_settings=_nothing)
    return m


_DEVICE_MODULE = _cpu_device_module()


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """verl platform for a host without accelerators: device ``cpu``, collectives on gloo."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self):
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return cpu_platform_wanted()

    def current_device(self):
        return "cpu"  # a string: an int would mean cuda:<int> to tensor.to()

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index) -> None:
        pass

    def synchronize(self, device_index: Optional[int] = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_cpus": num_gpus}

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def is_cpu_platform() -> bool:
    """verl resolved (or was told) to run on the CPU platform."""
    return get_platform().device_name == "cpu"


_engine_support_installed = False


def install_engine_support() -> None:
    """On the CPU platform, make verl's FSDP engines and process groups work (idempotent).

    A no-op on any other platform.
    """
    global _engine_support_installed
    cpu_platform_choice()  # a bad VERL_COMMEFF_PLATFORM fails the plugin's load loudly (verl's probe would hide it)
    if _engine_support_installed or not is_cpu_platform():
        return
    # verl's EngineRegistry override: use the engines registered for cuda (device-agnostic code).
    os.environ.setdefault("VERL_ENGINE_DEVICE", "cuda")
    os.environ.setdefault("VERL_ENGINE_VENDOR", "nvidia")
    _patch_process_group_backend()
    _patch_fsdp_for_host_memory()
    _engine_support_installed = True


def _patch_process_group_backend() -> None:
    """Patch 1 (see the module docstring): default the process-group backend to plain gloo."""
    import sys

    import verl.utils.distributed as verl_distributed

    stock = verl_distributed.initialize_global_process_group_ray

    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return stock(timeout_second=timeout_second, backend=backend or "gloo")

    verl_distributed.initialize_global_process_group_ray = initialize_global_process_group_ray
    workers = sys.modules.get("verl.workers.engine_workers")
    if workers is not None:  # already imported: rebind its copy of the name too
        workers.initialize_global_process_group_ray = initialize_global_process_group_ray


def _patch_fsdp_for_host_memory() -> None:
    """Patch 2 (see the module docstring): real weights on every rank, no broadcast, no offload to a device."""
    import warnings

    from torch.distributed.fsdp import CPUOffloadPolicy, FullyShardedDataParallel

    with warnings.catch_warnings():  # verl lists every optional engine it cannot import (megatron, ...)
        warnings.filterwarnings("ignore", message=r".* engine is not available", category=UserWarning)
        from verl.workers.engine.fsdp import transformer_impl

    class FullyShardedDataParallelOnCPU(FullyShardedDataParallel):
        def __init__(self, module, *args, **kwargs):
            kwargs["sync_module_states"] = False
            kwargs["cpu_offload"] = None
            super().__init__(module, *args, **kwargs)

    class CPUOffloadPolicyWithoutPinning(CPUOffloadPolicy):
        def __init__(self, pin_memory: bool = True):
            super().__init__(pin_memory=False)

    def load_fsdp_model_to_host(model) -> None:
        """Parameters already live in host memory on this platform."""

    transformer_impl.FSDP = FullyShardedDataParallelOnCPU
    transformer_impl.CPUOffloadPolicy = CPUOffloadPolicyWithoutPinning
    transformer_impl.load_fsdp_model_to_gpu = load_fsdp_model_to_host
    transformer_impl.get_init_weight_context_manager = lambda use_meta_tensor=True, mesh=None: (
        lambda: torch.device("cpu")
    )

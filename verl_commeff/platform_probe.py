"""When may the CPU platform be chosen? The accelerator probes and the ``VERL_COMMEFF_PLATFORM`` knob.

The CPU platform (:mod:`verl_commeff.cpu_platform`) must never take over a GPU node: a
process that merely cannot *use* a GPU (a Ray actor without an assigned GPU, a container
without the driver utilities) would otherwise ask Ray for CPUs and train on the host. So
``torch.cuda.is_available()`` alone decides nothing here. The choice:

``VERL_COMMEFF_PLATFORM`` (environment variable)
    ``cpu``: use the CPU platform (opt-in; also on a host with accelerators).
    ``off``: never use it.
    ``auto`` or unset: use it only when **every** probe below finds nothing.

Probes (each one alone vetoes the CPU platform in ``auto``):

* ``torch.cuda`` / ``torch.npu`` report a usable device in this process;
* accelerator device nodes exist on the host: ``/dev/nvidia[0-9]*`` or ``/dev/nvidiactl``
  (NVIDIA), ``/dev/kfd`` (ROCm), ``/dev/davinci[0-9]*`` (Ascend) — present even for a
  process that is not assigned a device;
* a vendor tool is on ``PATH``: ``nvidia-smi``, ``rocm-smi``, ``npu-smi``;
* Ray is initialised in this process and its cluster has ``GPU`` or ``NPU`` resources.

``VERL_PLATFORM`` (verl's own override) still wins over all of this: verl reads it before
asking any platform.

The driver usually resolves the platform before ``ray.init`` (the plugin loads with
``import verl``), when the Ray probe cannot run; :func:`check_ray_has_no_accelerators` is
the trainer's second look once Ray is up.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

import torch

__all__ = ["PLATFORM_ENV", "accelerator_evidence", "check_ray_has_no_accelerators", "cpu_platform_choice",
           "cpu_platform_wanted"]

PLATFORM_ENV = "VERL_COMMEFF_PLATFORM"
CHOICES = ("auto", "cpu", "off")
DEV_ROOT = "/dev"  # where device nodes are looked for (tests point it elsewhere)
_DEVICE_NODES = ("nvidia[0-9]*", "nvidiactl", "kfd", "davinci[0-9]*")
_VENDOR_TOOLS = ("nvidia-smi", "rocm-smi", "npu-smi")
_RAY_ACCELERATORS = ("GPU", "NPU")


def cpu_platform_choice() -> str:
    """The value of ``VERL_COMMEFF_PLATFORM`` (``auto`` when unset or empty).

    Raises:
        ValueError: any other value (naming the variable and the valid values).
    """
    value = os.environ.get(PLATFORM_ENV, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{PLATFORM_ENV}={os.environ[PLATFORM_ENV]!r} is not valid: use one of {list(CHOICES)}")
    return value


def _ray_accelerators() -> dict[str, float]:
    """Accelerator resources of the Ray cluster this process is connected to ({} when not connected)."""
    ray = sys.modules.get("ray")  # never import Ray (or connect) just to probe
    if ray is None or not ray.is_initialized():
        return {}
    resources = ray.cluster_resources()
    return {k: v for k, v in resources.items() if k in _RAY_ACCELERATORS and v > 0}


def accelerator_evidence() -> list[str]:
    """Every probe that found an accelerator, as readable strings ([] on a CPU-only host)."""
    found = []
    if torch.cuda.is_available():
        found.append("torch.cuda.is_available()")
    npu = getattr(torch, "npu", None)
    if npu is not None and npu.is_available():
        found.append("torch.npu.is_available()")
    for pattern in _DEVICE_NODES:
        found.extend(sorted(glob.glob(os.path.join(DEV_ROOT, pattern)))[:1])
    found.extend(f"{tool} on PATH" for tool in _VENDOR_TOOLS if shutil.which(tool))
    found.extend(f"Ray cluster resource {k}={v:g}" for k, v in _ray_accelerators().items())
    return found


def cpu_platform_wanted() -> bool:
    """True when verl may auto-detect the CPU platform (see the module doc).

    Raises:
        ValueError: ``VERL_COMMEFF_PLATFORM`` has an invalid value.
    """
    choice = cpu_platform_choice()
    if choice != "auto":
        return choice == "cpu"
    return not accelerator_evidence()


def check_ray_has_no_accelerators() -> None:
    """The trainer's second look, once Ray is up: an auto-selected CPU platform on a cluster with GPUs is an error.

    A no-op when the CPU platform was asked for (``VERL_COMMEFF_PLATFORM=cpu`` or
    ``VERL_PLATFORM=cpu``).

    Raises:
        RuntimeError: Ray reports GPU/NPU resources while the CPU platform was auto-selected.
    """
    if cpu_platform_choice() == "cpu" or os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
        return
    found = _ray_accelerators()
    if found:
        raise RuntimeError(
            f"verl-commeff: the CPU platform was auto-selected in the driver (no accelerator visible to it), but the "
            f"Ray cluster has {', '.join(f'{k}={v:g}' for k, v in found.items())}: training would run on CPUs. "
            f"Run the driver where it can see the accelerators, set VERL_PLATFORM=nvidia (amd, huawei), or set "
            f"{PLATFORM_ENV}=cpu to train on CPUs on purpose"
        )

"""CPU platform detection: never on a host with accelerators, opt-in/out by VERL_COMMEFF_PLATFORM (probes monkeypatched)."""

import sys
import types

import pytest
import torch
import verl  # noqa: F401  -- verl first: its plugin imports verl_commeff.cpu_platform

from verl_commeff import platform_probe
from verl_commeff.cpu_platform import PlatformCPU


@pytest.fixture
def bare_host(monkeypatch, tmp_path):
    """A host with no accelerator: empty /dev, no vendor tools, no CUDA, no Ray connection."""
    monkeypatch.setattr(platform_probe, "DEV_ROOT", str(tmp_path))
    monkeypatch.setattr(platform_probe.shutil, "which", lambda tool: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(platform_probe.PLATFORM_ENV, raising=False)
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    return tmp_path


def _fake_ray(monkeypatch, resources):
    ray = types.SimpleNamespace(is_initialized=lambda: True, cluster_resources=lambda: dict(resources))
    monkeypatch.setitem(sys.modules, "ray", ray)


def test_bare_host_auto_selects_cpu(bare_host):
    assert platform_probe.accelerator_evidence() == []
    assert PlatformCPU().is_platform_available(use_smi_check=True)


@pytest.mark.parametrize("node", ["nvidia0", "nvidiactl", "kfd", "davinci3"])
def test_device_node_vetoes_cpu_without_cuda_or_smi(bare_host, node):
    """The issue's case: torch.cuda unavailable in this process and no nvidia-smi, but the host has devices."""
    (bare_host / node).write_text("")
    assert platform_probe.accelerator_evidence() == [str(bare_host / node)]
    assert not PlatformCPU().is_platform_available(use_smi_check=True)


def test_vendor_tool_or_cuda_vetoes_cpu(bare_host, monkeypatch):
    monkeypatch.setattr(platform_probe.shutil, "which", lambda tool: "/opt/rocm/bin/rocm-smi" if tool == "rocm-smi" else None)
    assert platform_probe.accelerator_evidence() == ["rocm-smi on PATH"]
    assert not PlatformCPU().is_platform_available()
    monkeypatch.setattr(platform_probe.shutil, "which", lambda tool: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not PlatformCPU().is_platform_available()


def test_ray_gpus_veto_cpu_and_fail_the_trainer_check(bare_host, monkeypatch):
    _fake_ray(monkeypatch, {"CPU": 64.0, "GPU": 8.0})
    assert platform_probe.accelerator_evidence() == ["Ray cluster resource GPU=8"]
    assert not PlatformCPU().is_platform_available()
    with pytest.raises(RuntimeError, match=r"Ray cluster has GPU=8: training would run on CPUs.*VERL_COMMEFF_PLATFORM=cpu"):
        platform_probe.check_ray_has_no_accelerators()
    _fake_ray(monkeypatch, {"CPU": 4.0, "GPU": 0.0})
    platform_probe.check_ray_has_no_accelerators()  # a CPU-only cluster passes
    assert PlatformCPU().is_platform_available()


def test_env_opt_in_and_out(bare_host, monkeypatch):
    (bare_host / "nvidia0").write_text("")
    _fake_ray(monkeypatch, {"GPU": 1.0})
    monkeypatch.setenv(platform_probe.PLATFORM_ENV, "cpu")
    assert PlatformCPU().is_platform_available()  # asked for on purpose: probes do not matter
    platform_probe.check_ray_has_no_accelerators()  # and the trainer does not object
    (bare_host / "nvidia0").unlink()
    _fake_ray(monkeypatch, {})
    monkeypatch.setenv(platform_probe.PLATFORM_ENV, "off")
    assert not PlatformCPU().is_platform_available()
    monkeypatch.setenv(platform_probe.PLATFORM_ENV, "gpu")
    with pytest.raises(ValueError, match=r"VERL_COMMEFF_PLATFORM='gpu' is not valid: use one of \['auto', 'cpu', 'off'\]"):
        PlatformCPU().is_platform_available()

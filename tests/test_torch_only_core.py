"""The core runs in a process with torch alone (a GPU box without verl, Ray, omegaconf or tensordict).

It includes one DP-codec exchange through :func:`verl_commeff.dp_codec.exchange_tensors_`.

Each check runs a fresh interpreter in which those packages cannot be imported
(``sys.modules[name] = None`` makes ``import name`` raise), so nothing imported earlier in
the test session can hide a dependency.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = ("verl", "ray", "omegaconf", "hydra", "tensordict", "vllm")


def run_torch_only(body: str) -> str:
    """Run ``body`` in a fresh interpreter with :data:`BLOCKED` unimportable; its stdout."""
    prelude = f"import sys\nfor _m in {BLOCKED!r}:\n    sys.modules[_m] = None\n"
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torch-only run failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_core_imports_and_configs_validate_without_verl():
    out = run_torch_only("""
        import dataclasses
        from verl_commeff.base_config import TorchOnlyBaseConfig
        from verl_commeff.config import CommEffConfig, CommEffConfigError, MergerConfig
        import verl_commeff.workers.actor_state, verl_commeff.dp_codec.hsdp, verl_commeff.anchor.snapshot_delta
        cfg = CommEffConfig()
        assert isinstance(cfg, TorchOnlyBaseConfig)
        assert cfg["anchor"].delay_k == 5 and cfg.get("nope", 7) == 7 and "merger" in list(cfg)
        try:
            cfg.enable = False
        except dataclasses.FrozenInstanceError:
            pass
        else:
            raise AssertionError("a config field could be changed after construction")
        try:
            MergerConfig(alpha=1.5)
        except CommEffConfigError as err:
            print("error:", err)
        from verl_commeff.ledger import payload_bytes
        import torch
        print("bytes:", payload_bytes({"a": torch.zeros(3), "b": [torch.zeros(2, dtype=torch.uint8)]}))
        # the DP codec's exchange, one process (the entry point the GPU benchmark times)
        from verl_commeff.dp_codec import DPCodecState, exchange_tensors_
        state = DPCodecState(rank=4, start_iter=0, params="all_2d", embedding_rank=2, factor_precision="bf16")
        grads = [torch.randn(64, 16), torch.randn(40, 16), torch.randn(16)]
        for _ in range(2):
            exchange_tensors_(state, [g.clone() for g in grads], embeddings=[0])
        m = state.metrics()
        print("dp:", int(m["commeff/dp_codec/compressed_matrices"]), int(m["commeff/bytes/dp_codec/factors_sent"]))
    """)
    assert "error: commeff.merger.alpha=1.5 is out of range: must be a number in [0, 1]" in out
    assert "bytes: 14" in out
    assert "dp: 4 1536" in out  # 2 exchanges × (P, Q of 64×16 at r = 2 and 40×16 at r = 4) × 2 B (bf16)

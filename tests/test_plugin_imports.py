"""The plugin loads whichever verl_commeff module a process imports first (no import cycle)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = """
import {module}
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY
assert "commeff" in TRAINER_REGISTRY, sorted(TRAINER_REGISTRY)
assert "commeff_anchor" in POLICY_LOSS_REGISTRY
print("PLUGIN_OK")
"""


@pytest.mark.parametrize("module", ["verl_commeff.config", "verl_commeff.main"])
def test_first_import_loads_the_plugin(module):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", CHECK.format(module=module)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert "plugin failed to load" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0 and "PLUGIN_OK" in proc.stdout, proc.stderr[-3000:]

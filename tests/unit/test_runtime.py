"""passive_openmp: every entry point sets OMP_WAIT_POLICY before torch loads, and a user's own choice stays."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import os, sys, {module}; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"


@pytest.mark.parametrize("module", ["precompute.cli", "precompute.toyworld.cli"])
@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_a_cli_sets_the_wait_policy_before_torch_loads(module, given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [expected, "False"]  # torch not loaded yet, so libgomp will read the policy when it is

"""`reptile serve` and `reptile train` let idle OpenMP threads sleep (`quiet_openmp`)."""

import os
import subprocess
import sys

PROBE = """
import os, sys
import service.cli
assert "torch" not in sys.modules, "importing the CLI loaded torch: too late to set the policy"
service.cli.quiet_openmp()
import torch  # libgomp reads OMP_WAIT_POLICY as it loads, with torch
print(os.environ["OMP_WAIT_POLICY"])
"""


def _policy(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=base | env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_the_policy_is_set_before_torch_loads_and_a_users_choice_is_kept() -> None:
    assert _policy() == "PASSIVE"
    assert _policy(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"

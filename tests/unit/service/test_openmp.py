"""`reptile serve` and `reptile train` let idle OpenMP threads sleep soon (`quiet_openmp`)."""

import os
import subprocess
import sys

PROBE = """
import os, sys
import api.cli.local
assert "torch" not in sys.modules, "importing the CLI loaded torch: too late to set the policy"
api.cli.local.quiet_openmp()
import torch  # libgomp reads its settings as it loads, with torch
print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"))
"""
OPENMP = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _settings(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in OPENMP}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=base | env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_the_spin_count_is_set_before_torch_loads_and_a_users_choice_is_kept() -> None:
    assert _settings() == "None 1000"
    assert _settings(OMP_WAIT_POLICY="PASSIVE") == "PASSIVE None"
    assert _settings(GOMP_SPINCOUNT="0") == "None 0"

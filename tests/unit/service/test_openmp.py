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


def _settings(*environments: dict[str, str]) -> list[str]:
    """What the probe prints under each environment (the probes run at once)."""
    base = {k: v for k, v in os.environ.items() if k not in OPENMP}
    probes = [
        subprocess.Popen(
            [sys.executable, "-c", PROBE], env=base | env, stdout=subprocess.PIPE, text=True
        )
        for env in environments
    ]
    outputs = [probe.communicate(timeout=120)[0].strip() for probe in probes]
    assert all(probe.returncode == 0 for probe in probes)
    return outputs


def test_the_spin_count_is_set_before_torch_loads_and_a_users_choice_is_kept() -> None:
    assert _settings({}, {"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "0"}) == [
        "None 1000",
        "PASSIVE None",
        "None 0",
    ]

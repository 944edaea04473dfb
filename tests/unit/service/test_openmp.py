"""`reptile serve` and `reptile train` let their own idle OpenMP threads sleep soon
(`quiet_openmp`), and leave their Ray workers OpenMP's defaults."""

import os
import subprocess
import sys

PROBE = """
import os, subprocess, sys
import api.cli.local
assert "torch" not in sys.modules, "importing the CLI loaded torch: too late to set the policy"
api.cli.local.quiet_openmp()
child = "import os; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
seen = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout
print("torch" in sys.modules, seen)  # loaded: libgomp read the setting as it loaded
"""
OPENMP = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _children(*environments: dict[str, str]) -> list[str]:
    """The OpenMP settings a child of the probe sees, under each environment (probes at once)."""
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


def test_the_spin_count_is_this_processs_own_and_a_users_choice_is_kept() -> None:
    assert _children({}, {"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "0"}) == [
        "True None None",  # read by this process's libgomp, not passed on to its workers
        "False PASSIVE None",
        "False None 0",
    ]

"""Freed tensor memory stays in the process's heap for the next step, instead of being unmapped."""

import subprocess
import sys

import pytest

# Allocate and free one 8 MiB tensor (a few Conv4 activations' worth), then print how many bytes
# of free memory malloc's heap holds (glibc's mallinfo2: `fordblks`).
PROGRAM = """
import ctypes, sys, torch
from workers.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
buffer = torch.ones(2 * 2**20)
del buffer
print(libc.mallinfo2().fordblks)
"""


def _free_heap_bytes(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_freed_buffer_stays_in_the_heap_for_reuse() -> None:
    assert _free_heap_bytes("default") < 8 * 2**20  # mapped for itself, unmapped when freed
    assert _free_heap_bytes("keep") >= 8 * 2**20  # kept: the next step's buffer reuses it

"""A CPU process keeps freed memory for reuse: no page faults for every batch's activations."""

import subprocess
import sys

import pytest

# A layer's activations, of sizes that change from call to call (as with image sizes and
# batch sizes) but stay under glibc's 32 MiB ceiling for heap blocks: with glibc's defaults
# freed blocks go back to the kernel, and each new one faults on every page it touches.
ROUNDS = """
import resource, sys, torch
from emovlm_kd.cpu_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
sizes = [3, 5, 7, 9, 11, 13]  # MiB
def layer(k):
    a, b = torch.ones(sizes[k % 6] * 2**18), torch.ones(sizes[(k + 2) % 6] * 2**18)
    c = a * 2
    del a
    return torch.cat([c, b]).sum()
for k in range(12):
    layer(k)
before = faults()
for k in range(12, 60):
    layer(k)
print(faults() - before)
"""


def faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings exist on Linux only")
def test_freed_activations_are_reused_without_page_faults():
    default, kept = faults("default"), faults("keep")
    assert default > 2_000  # 10,000 to 32,000 with glibc's defaults here, 0 to 1,800 kept
    assert kept < default / 10

"""A CPU process keeps freed memory for reuse, unless the user set glibc's thresholds."""

import json
import os
import subprocess
import sys

import pytest

# A fresh process allocates one 20 MiB activation and reports whether glibc mapped it on
# its own (which it hands back to the kernel when freed, and the next one faults on every
# page) or took it from the heap, where it stays for reuse. mallinfo2 counts the bytes in
# separately mapped blocks.
ONE_ACTIVATION = """
import ctypes, json, torch
from emovlm_kd.cpu_memory import keep_freed_memory
kept = keep_freed_memory()
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Info
mapped_before = mallinfo2().hblkhd
activation = torch.ones(20 * 2**18)  # float32: 20 MiB
print(json.dumps({"kept": kept, "mapped_mib": round((mallinfo2().hblkhd - mapped_before) / 2**20)}))
"""


def one_activation(keep: bool, **environment: str) -> dict:
    script = ONE_ACTIVATION if keep else ONE_ACTIVATION.replace("kept = keep_freed_memory()", "kept = False")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env | environment
    )
    return json.loads(done.stdout.splitlines()[-1])


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings exist on Linux only")


@linux_only
def test_an_activation_comes_from_the_heap_where_freed_memory_is_kept():
    assert one_activation(keep=False) == {"kept": False, "mapped_mib": 20}  # glibc's default
    assert one_activation(keep=True) == {"kept": True, "mapped_mib": 0}


@linux_only
@pytest.mark.parametrize(
    "environment",
    [{"MALLOC_MMAP_THRESHOLD_": "131072"}, {"MALLOC_TRIM_THRESHOLD_": "0"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}],
)
def test_the_users_own_malloc_settings_win(environment):
    assert one_activation(keep=True, **environment) == {"kept": False, "mapped_mib": 20}

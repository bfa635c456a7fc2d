"""The CPU kernels the `bench` preset's time goes to, on this machine: a float32 matrix
product of a language-model shape (MKL), and attention of the vision tower's and the
language model's shapes through SDPA's fused CPU kernel, its unfused math kernel and plain
matrix products. Run it again under other ISA limits to see what they change, e.g.

    python scripts/time_cpu_kernels.py
    MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python scripts/time_cpu_kernels.py"""
import os
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def milliseconds(call, repeats: int = 30) -> float:
    for _ in range(3):
        call()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats * 1e3


torch.set_num_threads(int(os.environ.get("THREADS", "2")))
torch.manual_seed(0)
limits = {name: os.environ[name] for name in ("MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
          if name in os.environ}
print(f"{torch.get_num_threads()} threads, ATen capability {torch.backends.cpu.get_cpu_capability()}, limits {limits or 'none'}")
a, b = torch.randn(1280, 512), torch.randn(512, 1536)
print(f"matrix product [1280 x 512] [512 x 1536]: {2 * 1280 * 512 * 1536 / milliseconds(lambda: a @ b) / 1e6:.0f} GFLOP/s")
shapes = {"vision tower [4, 4, 1024, 64], no mask": (torch.randn(4, 4, 1024, 64), None),
          "language model [4, 8, 310, 64], mask [4, 1, 310, 334]": (torch.randn(4, 8, 310, 64), torch.zeros(4, 1, 310, 334))}
for name, (query, mask) in shapes.items():
    keys = query.shape[2] if mask is None else mask.shape[-1]
    key, value = torch.randn(*query.shape[:2], keys, 64), torch.randn(*query.shape[:2], keys, 64)
    times = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        with sdpa_kernel(backend):
            times[backend] = milliseconds(lambda q=query, k=key, v=value, m=mask: F.scaled_dot_product_attention(
                q, k, v, attn_mask=m))

    def products(query=query, key=key, value=value, mask=mask):
        scores = query @ key.transpose(-1, -2) * 0.125
        return (scores if mask is None else scores + mask).softmax(-1) @ value

    print(f"attention, {name}: fused {times[SDPBackend.FLASH_ATTENTION]:.1f} ms, math {times[SDPBackend.MATH]:.1f} ms, "
          f"matrix products {milliseconds(products):.1f} ms")

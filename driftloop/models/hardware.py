"""What this machine's CPU and GPU can do, so precision is chosen, not assumed."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16 run bf16 matmuls natively; elsewhere bf16 is emulated and slow."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def physical_cores() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def resolve_precision(precision: str, device: str, cuda: str = "fp16") -> str:
    """`auto`: `cuda` on a GPU (fp16 for inference; training passes bf16 for its range),
    bf16 on CPUs with fast bf16 units, fp32 otherwise."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return cuda
    return "bf16" if cpu_has_fast_bf16() else "fp32"

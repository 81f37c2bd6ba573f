"""`make test-avx2`: the suite as an AVX2-only CPU (an AMD EPYC Zen 2, say) runs it, on a
machine with AVX512 or AMX. Put on PYTHONPATH with ATEN_CPU_CAPABILITY=avx2 and
ONEDNN_MAX_CPU_ISA=AVX2 (torch's and oneDNN's kernels then dispatch as there), it hides
the avx512*/amx* flags from driftloop in this process and every Python process it
starts, so `precision: auto` resolves to fp32 and an explicit bf16 is emulated, as there."""

import os

if os.environ.get("DRIFTLOOP_EMULATE_AVX2"):
    try:
        import driftloop.models.hardware as _hardware
    except ImportError:  # an interpreter without driftloop (a tool's own venv) has nothing to hide
        _hardware = None
    if _hardware is not None:
        _flags = frozenset(f for f in _hardware.cpu_flags() if not f.startswith(("avx512", "amx")) and f != "avx_vnni")
        _hardware.cpu_flags = lambda: _flags

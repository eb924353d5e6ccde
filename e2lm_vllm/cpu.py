"""What the CPU offers that changes vLLM's speed: its name and the instruction-set flags that matter.

One place for these facts: `doctor` reports them and decides whether a bfloat16 check is worth its
time, `demo` sizes its work by them. Read from /proc/cpuinfo (Linux); elsewhere the flags are empty
and callers treat the CPU as the slowest kind.
"""

from __future__ import annotations

import platform
from pathlib import Path

# vLLM's CPU kernels: AVX2 is the floor, AVX512F the fast path; bfloat16 is native with AVX512-BF16
# or AMX and emulated (several times slower) otherwise.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
BF16_NATIVE_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

_CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in _CPUINFO.read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """All flags of the first CPU in /proc/cpuinfo; empty where there is none."""
    return frozenset((_cpuinfo_field("flags") or "").split())


def speed_flags(flags: frozenset[str]) -> dict[str, bool]:
    """The flags of `SPEED_FLAGS`, present or not, in that order (absent ones are findings too)."""
    return {flag: flag in flags for flag in SPEED_FLAGS}


def bf16_native(flags: frozenset[str]) -> bool:
    return bool(flags & BF16_NATIVE_FLAGS)


def has_avx512(flags: frozenset[str]) -> bool:
    return "avx512f" in flags

"""How many CPUs this process may really use, and how many llama.cpp threads that gives.

The CPU count of the machine is not the answer: a process may be pinned to some
cores (`sched_getaffinity`) and a container may be given a fraction of them (a
cgroup CPU quota). And llama.cpp's threads wait for each other many times a
token, so a thread whose core is taken by anyone else (the gateway's own event
loop, streaming the answer, included) stalls them all: measured on 2 cores
(docs/benchmarks.md), 2 threads fall to a fraction of 1 thread's speed as soon as
another process holds a core. So the default leaves one usable core free.

It also decides whether llama.cpp may use its extra CPU buffer types (see
`extra_buffers_by_default`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
CPUINFO = Path("/proc/cpuinfo")

# The lines of /proc/cpuinfo that list a CPU's features: x86's and Arm's.
_FLAG_KEYS = ("flags", "features")


def usable_cpus() -> int:
    """CPUs this process may run on, bounded by its cgroup's quota where it has one."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux only
    cpus = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_cpu_quota(
    v2: Path = CGROUP_V2_MAX, v1_quota: Path = CGROUP_V1_QUOTA, v1_period: Path = CGROUP_V1_PERIOD
) -> float | None:
    """The cgroup's CPU quota in CPUs (1.5 for "150000 100000"), or None without one."""
    try:
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota != "max":
            return int(quota) / int(period or 100_000)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(v1_quota.read_text())
        period_us = int(v1_period.read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def default_threads(parallelism: int, cpus: int | None = None) -> int:
    """llama.cpp threads per model instance: the usable CPUs but one, shared out."""
    available = usable_cpus() if cpus is None else cpus
    return max(1, (available - 1) // parallelism) if available > 1 else 1


def read_cpuinfo(path: Path = CPUINFO) -> str | None:
    """/proc/cpuinfo's text, or None where there is none (not Linux, a sandbox)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def cpu_flags(cpuinfo: str) -> frozenset[str] | None:
    """Every feature flag any CPU lists, or None when no line lists them."""
    flags: set[str] = set()
    found = False
    for line in cpuinfo.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() in _FLAG_KEYS:
            found = True
            flags.update(value.split())
    return frozenset(flags) if found else None


def extra_buffers_by_default(cpuinfo: str | None) -> bool:
    """Whether llama.cpp's extra CPU buffer types are safe here: only when the CPUs'
    flags are known and none is AMX's (`amx_tile`, `amx_int8`, `amx_bf16`, ...).

    The extra buffers are ggml's weight repacking (CPU_REPACK) and, in a build made for
    AMX, its AMX buffer type, whose kernels crash the process (SIGILL) on some virtual
    machines that advertise AMX. ggml hands the AMX buffer type out only after Linux
    grants the process the AMX tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
    XFEATURE_XTILEDATA)` in ggml-cpu/amx/amx.cpp), and Linux grants it only where it
    has enabled AMX, which is where /proc/cpuinfo lists `amx_tile`. Without an AMX
    flag, then, the extra buffers are the repacking alone, whose kernels use the
    instructions the rest of the library is built for. Unknown flags (no
    /proc/cpuinfo, no flags line) count as unsafe.
    """
    if cpuinfo is None:
        return False
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return False
    return not any(flag.startswith("amx") for flag in flags)

"""Is the machine free? Other processes that keep its CPUs busy slow every timed figure.

On 2 cores a second embedded-LLM process (an eval, a fit, a server) makes both run several times
slower: llama.cpp's threads spin while they wait (measured: 1.7-2.6 mentions/s alone, 0.3-0.5 with two
runs at once). A run's seconds then describe the contention, not the machine. :func:`busy_note`
samples the CPU use of the other processes for a moment, so that a run can say so before it starts
(on stderr) and in its report; nothing is stopped.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

BUSY_CPUS = 0.75
"""Other processes using at least this many CPUs' worth (summed) make the machine busy."""


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_note(seconds: float = 0.25, threshold: float = BUSY_CPUS) -> str | None:
    """A sentence naming the busiest other processes when, over ``seconds``, they used ``threshold``
    CPUs or more in all; ``None`` when the machine is free (or psutil cannot see)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - a dependency; without it the check is skipped
        return None
    me = os.getpid()
    procs = []
    for p in psutil.process_iter(["pid", "name"]):
        if p.info["pid"] == me:
            continue
        try:
            p.cpu_percent(None)  # the first call starts the process's count
            procs.append(p)
        except (psutil.Error, OSError):
            continue
    time.sleep(seconds)
    used = []
    for p in procs:
        try:
            share = p.cpu_percent(None) / 100.0
        except (psutil.Error, OSError):
            continue
        if share > 0:
            used.append((share, p.info["pid"], p.info["name"] or "?"))
    total = sum(s for s, _, _ in used)
    if total < threshold:
        return None
    used.sort(reverse=True)
    top = ", ".join(f"{name} (pid {pid}) {share:.1f}" for share, pid, name in used[:3])
    return (f"the machine was busy when this run started: other processes used {total:.1f} of its "
            f"{usable_cpus()} CPUs ({top}); seconds measured now describe that contention, not this machine "
            "(a second embedded-LLM process slows both several times)")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU model, cores, Python and platform: what a benchmark's figures name."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}

"""Small helpers shared by the bench scripts (not a stage of edge; imports nothing of it)."""

from __future__ import annotations

import os
import resource
import statistics
from pathlib import Path


def percentile(values: list[float], fraction: float) -> float:
    """The value at ``fraction`` of the sorted values (nearest rank); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def proc_status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB (MiB).

    ``VmHWM`` is this process's own peak RSS: unlike ``ru_maxrss`` right after a
    fork, it never carries the parent's peak over. ``VmRSS`` is the RSS now.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def cpu_s() -> float:
    """CPU seconds (user + system) this process has used so far, all its threads, plus
    its children that have ended (the outbox seals in a child process)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def load_text() -> str:
    """The machine's load averages and CPU count, for printing beside the figures."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)"


def threads_cpu_s() -> dict[int, tuple[str, float]]:
    """CPU seconds per thread of this process: {native id: (name, seconds)}.

    Python threads are named by their ``threading`` name, the others (libx264's
    worker threads, ...) by the kernel's ``comm``. Read from /proc/self/task.
    """
    import threading

    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    result = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        tid = int(task.name)
        # fields[0] is field 3 of proc(5)'s stat: utime and stime are fields 14 and 15.
        used_s = (int(fields[11]) + int(fields[12])) * tick_s
        result[tid] = (names.get(tid, f"native:{comm}"), used_s)
    return result


def threads_cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds per thread name between two ``threads_cpu_s`` readings (same names summed)."""
    delta: dict[str, float] = {}
    for tid, (name, seconds) in after.items():
        used = seconds - before.get(tid, (name, 0.0))[1]
        delta[name] = delta.get(name, 0.0) + used
    return delta

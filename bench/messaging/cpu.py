"""Where the CPU goes: seconds used by each process that carries the pipeline (Linux ``/proc``).

On a small machine the pipeline is bound by the sum of these, not by any one server's ceiling.
The servers' figures include whatever else they served meanwhile (other sessions' tests).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
SERVERS = {"postgresql": "postgres", "rabbitmq": "beam.smp"}  # label → process name


def _cpu_s(pid: int | str) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _by_name(name: str) -> dict[int, float]:
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found[int(entry.name)] = _cpu_s(entry.name)
            except OSError:
                continue
    return found


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (every process: ours and other work)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / _TICKS  # all but idle and iowait


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    own: dict[str, float]
    servers: dict[str, dict[int, float]]


class CpuMeter:
    """CPU seconds of named child processes, the servers and this process, between snapshots."""

    def __init__(self, children: dict[str, int]):
        self._children = children

    def snapshot(self) -> CpuSnapshot:
        own = {label: _cpu_s(pid) for label, pid in self._children.items()}
        own["bench"] = time.process_time()
        return CpuSnapshot(time.perf_counter(), own,
                           {label: _by_name(name) for label, name in SERVERS.items()})

    @staticmethod
    def per_message_ms(before: CpuSnapshot, after: CpuSnapshot, messages: int) -> dict[str, float]:
        """CPU milliseconds per message by process, their total, and the cores kept busy."""
        used = {label: after.own[label] - before.own[label] for label in after.own}
        for label, pids in after.servers.items():
            earlier = before.servers[label]
            used[label] = sum(cpu - earlier.get(pid, 0.0) for pid, cpu in pids.items())
        total = sum(used.values())
        result = {label: round(1000 * cpu / messages, 3) for label, cpu in used.items()}
        result["total"] = round(1000 * total / messages, 3)
        result["busy_cores"] = round(total / (after.at - before.at), 2)
        return result

"""What the benchmarks print about the machine they ran on."""

import os
import platform


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (the platform's processor name elsewhere)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"

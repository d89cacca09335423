"""What every benchmark records about the machine it ran on.

Timings are only comparable within one run on one machine, so each results JSON says
which CPU it was, which instruction set gmmfast's dispatcher chose there, how many
threads ran and how busy the machine was (``uptime`` before and after).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def uptime() -> str:
    """`uptime`'s line (load averages over 1, 5 and 15 minutes), or the load averages."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        if hasattr(os, "getloadavg"):
            return "load average: %.2f, %.2f, %.2f" % os.getloadavg()
        return ""


def isa() -> str:
    """The instruction set of the kernels gmmfast's dispatcher runs on this CPU."""
    import gmmfast

    return gmmfast.build_info()["isa"]


def summary(threads) -> dict:
    """The machine block of a results JSON (add ``uptime_after`` at the end of the run)."""
    import numpy as np

    import gmmfast

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "isa": isa(),
        "logical_cores": os.cpu_count(),
        "threads": threads,
        "uptime_before": uptime(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gmmfast": gmmfast.__version__,
    }

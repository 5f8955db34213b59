"""Keep the daemon's memory off the disk: frames and face crops must never reach it, and on a Pi
the swap file (dphys-swapfile) and any core dump would land on the SD card. Pages are locked as they are first touched
(MCL_ONFAULT), so nothing is faulted in ahead and the memory use stays what it was."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
from pathlib import Path

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4  # <sys/mman.h>, the same on arm64 and x86-64
PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def no_core_dumps() -> str | None:
    """Mark the process undumpable before it sees a frame; None when done, else why not. A crash then
    leaves no core file holding camera frames whatever `ulimit -c` or systemd-coredump say (the
    unit's LimitCORE=0 covers only the service, not `make run` or `sudo feedbackd check`), and no
    other process of the same user may read its memory."""
    if _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        return f"prctl: {os.strerror(ctypes.get_errno())}"
    return None


def swap_in_use() -> bool:
    try:
        return len(Path("/proc/swaps").read_text().splitlines()) > 1  # a header, then one line per swap area
    except OSError:
        return False


def lock_memory() -> str | None:
    """Lock all present and future memory; None when locked, else why not. Only with an unlimited
    RLIMIT_MEMLOCK (the unit's LimitMEMLOCK=infinity): under a finite one, MCL_FUTURE would make
    allocations past it fail, and the daemon with them."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != resource.RLIM_INFINITY:
        return f"RLIMIT_MEMLOCK is {soft} bytes, not unlimited (LimitMEMLOCK=infinity in the unit)"
    libc = _libc()
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        return f"mlockall: {os.strerror(ctypes.get_errno())}"
    return None

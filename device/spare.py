"""Room on disk, taken while there is some, for entries the log cannot take. A full SD card fails
the log's write, and journald keeps its journal in memory on Raspberry Pi OS: an entry kept only
in memory would not survive a power cut. The spare file is filled with zeros when the daemon
starts, so its blocks are the file's already; writing an entry over them needs no free space."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("feedbackd")

SIZE = 64 * 1024  # about 150 entries: a full card is an error screen staff see within minutes


class SpareFile:
    """JSON lines written over zeros; the first zero byte ends them. Each line is on the disk
    (fdatasync) before `append` returns; a line cut short by a power cut is skipped when read."""

    def __init__(self, path: Path, size: int = SIZE):
        self.path, self.size = Path(path), size
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            data = os.pread(self.fd, os.fstat(self.fd).st_size, 0)
            written = data.split(b"\0", 1)[0]
            self.lines, self.end = written.decode(errors="replace").splitlines(), len(written)
            if len(data) != size:  # new (or cut short): its room taken now, after the lines it holds
                self._zero(self.end)
        except OSError:
            os.close(self.fd)
            raise

    def entries(self) -> list[dict]:
        """The entries written before the last start, in order; a line that is not whole is left out."""
        found = []
        for line in self.lines:
            try:
                entry = json.loads(line)
            except ValueError:
                log.error("%s: a line cut short is left out: %r", self.path, line[:80])
                continue
            if isinstance(entry, dict):
                found.append(entry)
        return found

    def append(self, line: str) -> bool:
        """Write one line to the disk; False when it does not fit or the write fails."""
        data = line.encode() + b"\n"
        if self.end + len(data) > self.size:
            log.error("%s: full; the entry is in the journal only", self.path)
            return False
        try:
            os.pwrite(self.fd, data, self.end)
            os.fdatasync(self.fd)
        except OSError as e:
            log.error("%s: cannot write the entry (%s); it is in the journal only", self.path, e)
            return False
        self.end += len(data)
        return True

    def clear(self) -> None:
        """Every entry in it is in the log now."""
        if self.end:
            self._zero()
            self.lines = []

    def _zero(self, start: int = 0) -> None:
        os.pwrite(self.fd, bytes(max(0, self.size - start)), start)
        os.ftruncate(self.fd, max(self.size, start))
        os.fsync(self.fd)
        self.end = start

    def close(self) -> None:
        os.close(self.fd)

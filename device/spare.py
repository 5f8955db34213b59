"""Room on disk, taken while there is some, for entries the log cannot take. A full SD card fails
the log's write, and journald keeps its journal in memory on Raspberry Pi OS: an entry kept only
in memory would not survive a power cut. The spare file is filled with zeros when the daemon
starts, so its blocks are the file's already; on ext4 (Raspberry Pi OS's root) writing an entry
over them needs no free space (a copy-on-write file system such as btrfs gives no such promise)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path

log = logging.getLogger("feedbackd")

# About 4000 entries (a line is some 500 bytes: its 7 probabilities are unrounded): days of a busy
# kiosk on a card that filled up, or was remounted read-only, before staff free room. An entry past
# it is kept in memory only, lost at a power cut; zeroing 2 MiB at a start or after the log took the
# entries back is a moment.
SIZE = 2 * 2**20
# Free space the spare file leaves to the log when it grows: a log's -wal file grows to some 4 MiB
# (1000 pages) before SQLite starts it over, and its -shm takes 32 KiB. A spare file that took the
# card's last free space would leave the log failing from the first entry.
LOG_ROOM = 4 * 2**20


def beside(log_path: Path | str) -> Path:
    """The spare file of a feedback log: the daemon writes it, the reports count what waits there."""
    return Path(f"{log_path}.spare")


def aside(spare_path: Path | str) -> Path:
    """Where a spare file's lines that no start could restore are kept, for a technician."""
    return Path(f"{spare_path}.rejected")


def set_aside_count(spare_path: Path | str) -> int:
    """How many lines wait in `aside(spare_path)` for a technician; 0 where there is none."""
    try:
        return len(aside(spare_path).read_text(errors="replace").splitlines())
    except FileNotFoundError:
        return 0


def _joined(lines: list[str]) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode()


def _lines(data: bytes) -> list[str]:
    """The lines a spare file's bytes hold: the first zero byte ends them."""
    return data.split(b"\0", 1)[0].decode(errors="replace").splitlines()


def _parse(lines: list[str]) -> tuple[list[dict], list[str]]:
    """The entries among `lines`, and the lines cut short (a power cut mid-write)."""
    found, cut, seen = [], [], set()
    for line in lines:
        if line in seen:  # a line found twice (copied back by hand) is one entry, not two
            continue
        seen.add(line)
        try:
            entry = json.loads(line)
        except ValueError:
            cut.append(line)
            continue
        if isinstance(entry, dict):
            found.append(entry)
    return found, cut


def fsync_folder(folder: Path) -> None:
    """Put a name made or replaced in `folder` on the disk: fsync of the file keeps only its bytes."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def in_use(path: Path) -> bool:
    """Whether a running daemon holds this spare file's lock: `check` then leaves alone the camera,
    display and button it holds, where opening them would fail or blank the screen staff read. A
    PermissionError where this user cannot open it (the service's folder is 0750): it cannot tell."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except PermissionError:
        raise
    except OSError:  # no spare file: no daemon ever ran on this log
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released at once by the close below
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def waiting(path: Path) -> list[dict]:
    """The entries a spare file holds for the daemon to restore, read without changing the file
    (`feedbackd export`, `summary`, `check`); none where there is no file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return _parse(_lines(data))[0]


class SpareFile:
    """JSON lines written over zeros; the first zero byte ends them. Each line is on the disk
    (fdatasync) before `append` returns; a line cut short by a power cut is closed at the next
    start, so the next line starts afresh, and is left out when read."""

    def __init__(self, path: Path, size: int = SIZE):
        self.path, self.size = Path(path), size
        self.unwritten: list[str] = []  # lines whose write failed: written again before the next one
        self.unsure = False  # bytes past `end` may not be zeros on the disk (a write or clearing failed)
        self.refused = ""  # why nothing is written to it: the file is still read and restored
        self.aside = aside(self.path)  # lines no start could restore
        self._set_aside: set[str] | None = None  # the lines already there, read at the first
        self._unkept: list[str] = []  # lines not yet set aside: this file is their only copy, not cleared
        self._reported: set[str] = set()  # lines whose problem the journal has: each said once a process
        created = not self.path.exists()
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as e:  # a card remounted read-only: what it holds can still be restored
            if e.errno not in (errno.EROFS, errno.EACCES) or not self.path.exists():
                raise
            self.fd, self.refused = os.open(self.path, os.O_RDONLY), "read-only"
        # One daemon a log: a second one's start would clear lines the first has just kept. Tried
        # for half a second: `check` looks at the lock for a moment (in_use), and a start meeting
        # that moment must not run without its spare file.
        for wait in (*(0.05,) * 10, None):
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if wait is None:
                    os.close(self.fd)
                    raise OSError(errno.EBUSY, "another feedbackd is using this log and its spare file") from None
                time.sleep(wait)
        try:
            data = os.pread(self.fd, os.fstat(self.fd).st_size, 0)
            self.lines, self.end = _lines(data), len(data.split(b"\0", 1)[0])
        except OSError:
            os.close(self.fd)
            raise
        if not self.refused:
            try:
                self._take_room(data)
                if created:  # its name too must outlive a power cut, not only its bytes
                    fsync_folder(self.path.parent)
            except OSError as e:  # a failing card: the lines read are still restored
                self.refused = f"its room could not be taken ({e})"
                log.error("%s: %s; nothing more is written to it", self.path, self.refused)

    def _take_room(self, data: bytes) -> None:
        """Zeros after the lines, the whole size allocated: a line cut short is closed first, and
        bytes after a zero (a write or a clearing cut short) are zeroed, not read as lines later. It
        grows only into free space past LOG_ROOM, and gives back what it took where the card had less
        (a smaller file then, or none: room taken and left unused would only be lost to the log)."""
        if self.end and not data[:self.end].endswith(b"\n"):
            self._write(b"\n", self.end)
            self.end += 1
        st = os.fstat(self.fd)
        if st.st_size == self.size and st.st_blocks * 512 >= self.size and not any(data[self.end:]):
            return
        kept = st.st_size if st.st_blocks * 512 >= st.st_size else self.end  # the room that is the file's already
        wanted = self.size
        if st.st_blocks * 512 < wanted:  # to grow: into the free space past the log's
            fs = os.statvfs(self.path.parent)
            room = st.st_blocks * 512 + fs.f_bavail * fs.f_frsize - LOG_ROOM
            self.size = min(wanted, max(kept, room // fs.f_frsize * fs.f_frsize))
        try:
            self._zero(self.end)
        except OSError as e:  # fewer free blocks than statvfs said: what it took is given back
            with contextlib.suppress(OSError):  # the error that stopped the growth is the one to report
                os.ftruncate(self.fd, kept)
            if e.errno != errno.ENOSPC:
                raise
            self.size = min(wanted, kept)
            self._zero(self.end)  # over blocks the file holds: no free space needed
        if not self.size:
            self.refused = "no room for it on its card (the free space is left to the log)"
            log.error("%s: %s; an entry the log cannot take is in the journal only", self.path, self.refused)
        elif self.size < wanted:
            log.warning("%s: no room to grow it to %d bytes (the log's %d left free); it keeps %d", self.path,
                        wanted, LOG_ROOM, self.size)

    def entries(self) -> list[dict]:
        """The entries written before this start, in order; a line that is not whole is left out."""
        found, cut = _parse(self.lines)
        for line in cut:
            if self.first_report(line):
                log.error("%s: a line cut short is left out, kept in %s: %r", self.path, self.aside, line[:80])
            self.set_aside(line)
        return found

    def first_report(self, line: str) -> bool:
        """Whether `line`'s problem is not yet in the journal: while the log cannot say which entries it
        holds, the daemon reads this file again every few seconds, and would say the same lines each time."""
        new = line not in self._reported
        self._reported.add(line)
        return new

    def set_aside(self, line: str) -> None:
        """Copy a line no start can restore (cut short, a byte a failing card flipped, another
        version's) to `<spare>.rejected` before the spare is cleared: it may be the only copy of an
        entry a customer was thanked for, and Raspberry Pi OS keeps the journal in memory only. One
        that cannot be copied holds the clearing off until a later try copies it."""
        try:
            if self._set_aside is None:  # a start before this one set aside the same lines
                self._set_aside = set(_lines(self.aside.read_bytes())) if self.aside.exists() else set()
            if line not in self._set_aside:
                self._append_aside(line)
        except OSError as e:
            if line not in self._unkept:
                self._unkept.append(line)
                log.error("%s: cannot keep a line there (%s); %s is not cleared until it can", self.aside, e,
                          self.path)
            return
        self._set_aside.add(line)
        if line in self._unkept:
            self._unkept.remove(line)

    def _append_aside(self, line: str) -> None:
        """One line at the end of `<spare>.rejected`, on the disk; after a newline first where an
        append was cut short, so that two lines are never run together."""
        created = not self.aside.exists()
        fd = os.open(self.aside, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            size = os.fstat(fd).st_size
            cut = size and os.pread(fd, 1, size - 1) != b"\n"
            data = (b"\n" if cut else b"") + line.encode(errors="replace") + b"\n"
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_folder(self.aside.parent)

    def append(self, line: str) -> bool:
        """Write one line to the disk, after any whose write failed (over the same bytes, so a write
        cut short there cannot splice two entries); False when they do not fit or the write fails."""
        fits = not self.refused and self.end + len(_joined([*self.unwritten, line])) <= self.size
        if fits:
            self.unwritten.append(line)
        else:  # no room will come before the log takes it: not tried again
            log.error("%s: %s; the entry is in the journal only", self.path, self.refused or "full")
            if self.refused or not self.unwritten:
                return False
        return self.write_unwritten() and fits

    def has_room(self, line_bytes: int = 1024) -> bool:
        """Whether another entry's line would be written now (an entry's line is about 500 bytes)."""
        return not self.refused and not self.unwritten and self.end + line_bytes <= self.size

    def kept_times(self) -> set[datetime]:
        """The press times ("utc") of the entries on the disk now: the ones the next start restores,
        as times, since a restored line may write its time with another offset than this version."""
        times = set()
        for e in _parse(_lines(os.pread(self.fd, self.end, 0)))[0]:
            with contextlib.suppress(TypeError, ValueError):  # a time the next start cannot read either
                times.add(datetime.fromisoformat(e.get("utc")))
        return times

    def write_unwritten(self) -> bool:
        """Write the lines whose write failed (the lines before them fitted, and still do); True once
        none is left. The daemon tries again while the log is down, not only at the next entry."""
        if not self.unwritten:
            return True
        data = _joined(self.unwritten)
        try:
            self._write(data, self.end)
            os.fdatasync(self.fd)
        except OSError as e:
            self.unsure = True
            log.error("%s: cannot write the entry (%s); it is in the journal only", self.path, e)
            return False
        self.end += len(data)
        self.unwritten = []
        return True

    def clear(self) -> None:
        """Every entry in it is in the log now; a failed clearing is tried again next time."""
        self.unwritten = []
        for line in list(self._unkept):  # tried again: room may have been freed since
            self.set_aside(line)
        if (self.end or self.unsure) and not self.refused and not self._unkept:
            try:
                self._zero()
            except OSError as e:
                self.unsure = True
                log.error("%s: cannot clear it (%s); the log holds its entries, none is stored twice", self.path, e)
                return
            self.unsure, self.lines = False, []

    def _write(self, data: bytes, at: int) -> None:
        if os.pwrite(self.fd, data, at) != len(data):  # a short write on a full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _zero(self, start: int = 0) -> None:
        self.end = start  # first: after a clearing that fails part-way, the next line goes at `start`,
        # not after old lines whose bytes may be zeros on the disk by then (a line there would be lost)
        self._write(bytes(max(0, self.size - start)), start)
        os.ftruncate(self.fd, max(self.size, start))
        os.fsync(self.fd)
        if os.fstat(self.fd).st_blocks * 512 < self.size:  # holes: the room is not the file's
            raise OSError(errno.ENOSPC, f"{self.path}: fewer blocks than its size")

    def close(self) -> None:
        os.close(self.fd)

"""The feedback log: SQLite in WAL mode with synchronous=FULL, so an entry acknowledged by
`add()` survives a power cut a moment later. The schema is versioned (PRAGMA user_version)
and migrated forward in order at open."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from device import spare

MIGRATIONS = (
    # 1: the first schema
    """
    CREATE TABLE entries (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        utc           TEXT NOT NULL,
        local_date    TEXT NOT NULL,
        local_time    TEXT NOT NULL,
        emotion       TEXT NOT NULL,
        rating        REAL NOT NULL,
        confidence    REAL NOT NULL,
        probabilities TEXT NOT NULL,
        model_sha256  TEXT NOT NULL,
        device_id     TEXT NOT NULL
    );
    CREATE INDEX entries_utc ON entries (utc);
    """,
    # 2: whether the clock was synchronized when the entry was stored (NULL: unknown)
    "ALTER TABLE entries ADD COLUMN clock_synced INTEGER",
    # 3: the top of the rating scale the entry was rated on (NULL: unknown), so a changed scale
    # does not mix 5-star and 10-point ratings in one mean
    "ALTER TABLE entries ADD COLUMN rating_max REAL",
)
SALVAGE_SLACK = 100_000  # ids a salvage looks up past the highest it finds, where the seq says there are more
SALVAGE_HINT = "'feedbackd export --salvage' rescues the entries still readable"
EXPORT_FIELDS = ("date", "time", "rating", "emotion", "confidence", "utc", "probabilities",
                 "model_sha256", "device_id", "id", "clock_synced", "rating_max")
CLOCK = {1: "yes", 0: "no", None: ""}


class StorageError(RuntimeError):
    """The log cannot be opened or written (full disk, read-only file system, corrupt file)."""


@dataclass(frozen=True)
class Entry:
    emotion: str
    rating: float
    confidence: float
    probabilities: dict[str, float]
    model_sha256: str
    device_id: str
    clock_synced: bool | None = None
    rating_max: float | None = None


def number(v) -> bool:
    """A finite number, as a rating, confidence or scale must be: a hand-edited line or a damaged row
    may hold text, a bool or NaN there."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def unwritable(path: Path) -> str:
    """What of the log this user cannot write, as an error's end ("" if nothing): the log, its folder
    (SQLite makes the -wal and -shm there), and the -wal, -shm and spare file where they exist. SQLite
    opens a log or -wal it cannot write (restored by `sudo cp`, owned by root) read-only, without an
    error: the daemon would then run as on a full card, refusing every entry. An admin who chowns only
    the log leaves the others root's, so every one is named. A card remounted read-only refuses every
    user, root too: it is named as such, not as files to chown."""
    if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
        return f"{path.parent} is on a read-only file system"
    beside = [Path(f"{path}{end}") for end in ("-wal", "-shm")] + [spare.beside(path)]
    denied = [str(p) for p in (path, path.parent, *(p for p in beside if p.exists())) if not os.access(p, os.W_OK)]
    return f"{', '.join(denied)} {'is' if len(denied) == 1 else 'are'} not writable for this user" if denied else ""


def absent(path: Path) -> bool:
    """Whether nothing is at `path`, not even a link: a file that cannot be looked at (an I/O error on a
    failing card, a folder this user cannot search) may be a log, never removed as one this open made."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        pass
    return False


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file is at `path` (device, inode); None where none can be looked at."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class FeedbackLog:
    def __init__(self, path: str | Path, create: bool = True):
        """create=False opens only an existing log and migrates nothing: reading commands never make
        one from a typo, nor change a copied log's schema (an older one reads as is)."""
        self.path = Path(path)
        if os.path.isdir(self.path):  # `--db /var/lib/feedbackd` or `--db ""`: SQLite would say "disk I/O error"
            raise StorageError(f"{self.path}: a folder; name the log file, such as {self.path / 'feedback.db'}")
        self.unreadable = 0  # entries the last salvage() could not read
        self.db: sqlite3.Connection | None = None
        # what a new log's first open makes: sqlite3.connect makes an empty file at once, which a full card
        # then leaves as is; kept, it would read as "not a feedback log" at every later start and command
        files = (self.path, Path(f"{path}-wal"), Path(f"{path}-shm"))
        made = [p for p in files if absent(p)] if create and absent(self.path) else []
        self._made: tuple[int, int] | None = None  # the file this open made, as (device, inode)
        try:
            self._open(create)
        except BaseException as e:
            if self.db is not None:  # closed now, not when collected: a daemon on a full card tries every
                self.db.close()  # few seconds, and a connection left open keeps the -wal after the last close
            if made and self._made and _identity(self.path) == self._made:  # not a log moved in meanwhile
                for p in made:
                    with contextlib.suppress(OSError):  # the error that stopped the open is the one to report
                        p.unlink(missing_ok=True)
            if isinstance(e, OSError | sqlite3.Error):
                raise StorageError(f"{self.path}: cannot open the feedback log: {e}") from None
            raise

    def _open(self, create: bool) -> None:
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
            self._made = _identity(self.path)
            if denied := unwritable(self.path):
                raise StorageError(f"{self.path}: cannot open the feedback log: {denied}")
        else:
            self.db = self._reader()
        version = self._check_is_log(create)
        self.db.text_factory = text_or_bytes  # one entry's flipped bit must not stop reading the rest
        if version > len(MIGRATIONS):
            raise StorageError(f"{self.path}: schema version {version} is newer than this feedbackd "
                               f"({len(MIGRATIONS)}); upgrade feedbackd")
        if create:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self._migrate(version)

    def _reader(self) -> sqlite3.Connection:
        """A connection that reads the log as it is. A reader of a WAL log makes its 32 KiB -shm
        file, which a full or read-only card has no room for once the daemon stopped cleanly (and
        SQLite removed it): then, with no -wal file holding newer entries, the main file holds them
        all and is read as an immutable file, so the owner can still export before replacing the card.
        A -wal with entries (a running daemon's, or one stopped by a power cut) is read read-only: the
        last read-write connection to close copies it into the main file and deletes it, a write that
        a failing card (`check`, `export --salvage`) may not survive. Without one, read-write: a
        read-only reader would leave an empty -wal and -shm of its own behind."""
        uri = self.path.resolve().as_uri()
        wal = Path(f"{self.path}-wal")
        held = wal.exists() and wal.stat().st_size > 0
        db = None
        try:
            db = sqlite3.connect(f"{uri}?mode={'ro' if held else 'rw'}", timeout=5, isolation_level=None, uri=True)
            db.execute("PRAGMA user_version")
            return db
        except sqlite3.OperationalError:
            if db is not None:
                db.close()
            if held:
                raise
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", isolation_level=None, uri=True)

    def _check_is_log(self, create: bool) -> int:
        """Refuse another program's database (or an empty file, when reading) before changing it."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        # Other programs number their schemas too: a numbered file is a log only if it has entries.
        if "entries" not in tables if version else tables or not create:
            what = (f"an SQLite file with tables {', '.join(tables)}" if tables
                    else "an SQLite file with no tables" if version else "an empty file")
            raise StorageError(f"{self.path}: not a feedback log ({what}); check storage.path or --db")
        return version

    def _migrate(self, version: int) -> None:
        for v in range(version, len(MIGRATIONS)):
            try:  # one transaction per step: the schema and its version number move together
                self.db.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[v]}; PRAGMA user_version = {v + 1}; COMMIT;")
            except sqlite3.Error:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def add(self, entry: Entry, now: datetime | None = None) -> int:
        """Store one entry; returns its id only once it is committed to disk."""
        now = now or datetime.now(UTC)
        time.tzset()  # a time zone set since the daemon started (raspi-config) dates this entry
        local = now.astimezone()
        row = (
            utc_text(now),
            local.strftime("%Y-%m-%d"),
            local.strftime("%H:%M:%S"),
            entry.emotion,
            float(entry.rating),
            float(entry.confidence),
            json.dumps({k: round(float(v), 4) for k, v in entry.probabilities.items()}),
            entry.model_sha256,
            entry.device_id,
            None if entry.clock_synced is None else int(entry.clock_synced),
            None if entry.rating_max is None else float(entry.rating_max),
        )
        try:
            cur = self.db.execute(
                "INSERT INTO entries (utc, local_date, local_time, emotion, rating, confidence, probabilities,"
                " model_sha256, device_id, clock_synced, rating_max) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            return int(cur.lastrowid)
        except sqlite3.Error as e:
            raise StorageError(f"{self.path}: cannot store the entry: {e}") from None

    def contains(self, at: datetime, device_id: str) -> bool:
        """Whether the entry pressed at `at` on `device_id` is stored: one restored from the spare
        file after a power cut may have reached the log already."""
        try:
            found = self.db.execute("SELECT 1 FROM entries WHERE utc = ? AND device_id = ? LIMIT 1",
                                    (utc_text(at), device_id)).fetchone()
        except sqlite3.DatabaseError as e:
            raise StorageError(f"{self.path}: cannot read the log: {e}") from None
        return found is not None

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def rows(self, since: str | None = None, until: str | None = None) -> Iterator[dict]:
        """Entries in order; since/until are local dates (YYYY-MM-DD), both inclusive."""
        q = "SELECT * FROM entries WHERE 1=1"
        args: list[str] = []
        if since:
            q += " AND local_date >= ?"
            args.append(since)
        if until:
            q += " AND local_date <= ?"
            args.append(until)
        try:
            cur = self.db.execute(q + " ORDER BY id", args)
            for values in cur:
                yield _entry_row(cur, values)
        except sqlite3.DatabaseError as e:  # damaged pages past an intact header
            raise StorageError(f"{self.path}: cannot read the log: {e} ('feedbackd export --salvage' "
                               "rescues the entries still readable)") from None

    def rating_scales(self) -> tuple[float | None, float | None]:
        """The oldest and the newest scale top logged in the whole log (None: none logged, as in a
        log from before v3): the entries before the first are on the oldest, the kiosk rates on
        the newest now."""
        try:
            if "rating_max" not in {c[1] for c in self.db.execute("PRAGMA table_info(entries)")}:
                return None, None
            q = "SELECT rating_max FROM entries WHERE rating_max IS NOT NULL ORDER BY id {} LIMIT 1"
            oldest, newest = (self.db.execute(q.format(order)).fetchone() for order in ("ASC", "DESC"))
        except sqlite3.DatabaseError as e:
            raise StorageError(f"{self.path}: cannot read the log: {e}") from None
        return (oldest or (None,))[0], (newest or (None,))[0]

    def salvage(self, since: str | None = None, until: str | None = None) -> Iterator[dict]:
        """The entries of a damaged log that can still be read, in id order, fetched one id at a time
        so that one bad page costs only its own rows; those a lookup by id misses (a damaged inner
        page) are looked for in a scan of the table. `self.unreadable` counts the ids found neither
        way: AUTOINCREMENT leaves no gap for a rolled-back insert, and feedbackd deletes nothing."""
        self.unreadable = 0
        top, high = self._last_id()
        ids = range(1, top + 1)
        missed = {i for i in ids if self._lookup(i) is None}
        scanned: dict[int, dict] = {}  # only those missed and above top: a Pi's memory holds ids, not years of rows
        if missed or high > top:  # a healthy log is read once; a stale seq leaves rows above it to the scan
            try:
                cur = self.db.execute("SELECT * FROM entries ORDER BY id")
                for values in cur:
                    row = _entry_row(cur, values)
                    if row["id"] in missed or row["id"] > top:  # a damaged page may list a row twice: it is one
                        scanned.setdefault(row["id"], row)
            except sqlite3.DatabaseError:
                pass  # the rows before the bad page are in
        for entry_id in itertools.chain(ids, sorted(i for i in scanned if i > top)):
            row = scanned.get(entry_id) if entry_id in missed or entry_id > top else self._lookup(entry_id)
            if row is None:
                self.unreadable += 1
                continue
            day = row["local_date"]  # a damaged row's bytes compare as SQLite compares them, not as their repr
            day = day if isinstance(day, bytes) else str(day).encode()
            if (not since or day >= since.encode()) and (not until or day <= until.encode()):
                yield row

    def _last_id(self) -> tuple[int, int]:
        """The highest id to look up one at a time, and the highest id the table gives. The first is the
        seq AUTOINCREMENT keeps on its own page, else max(id), which reads the table's last leaf. On a
        failing card those are the pages every insert rewrites, so either may be stale, garbage or
        unreadable: a garbage rowid in the last leaf would have a lookup made for every id below it, and
        a seq more than SALVAGE_SLACK above the highest id found is garbage, not lost entries (a bad
        page holds a few dozen rows), a lookup for each of its ids keeping a Pi busy for days. Rows above
        the first figure, up to the second, are found by a scan."""
        try:
            seq = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
        except sqlite3.DatabaseError:
            seq = None
        seq = seq[0] if seq and isinstance(seq[0], int) else None  # a damaged page may hold text or a real there
        error: sqlite3.DatabaseError | None = None
        try:
            high = self.db.execute("SELECT max(id) FROM entries").fetchone()[0] or 0
        except sqlite3.DatabaseError as e:
            high, error = 0, e
            with contextlib.suppress(sqlite3.DatabaseError):  # the last leaf unreadable: the ids a scan reaches
                for (entry_id,) in self.db.execute("SELECT id FROM entries"):
                    high = max(high, entry_id)
        if seq is not None and seq <= high + SALVAGE_SLACK:
            return seq, high
        if error:  # no count of the entries left: an export that looked whole might not be
            raise StorageError(f"{self.path}: cannot tell how many entries the log held: {error}")
        return high, high

    def _lookup(self, entry_id: int) -> dict | None:
        """The entry with this id, None where the log cannot give it."""
        try:
            cur = self.db.execute("SELECT * FROM entries WHERE id = ?", (entry_id,))
            values = cur.fetchone()
        except sqlite3.DatabaseError:
            return None
        return None if values is None else _entry_row(cur, values)

    def export_csv(self, out: IO[str], since: str | None = None, until: str | None = None,
                   salvage: bool = False) -> int:
        """Every entry read before the first line is written: a log damaged halfway stops an export
        to stdout (`> feedback.csv`) with nothing in the file, not with a CSV that looks complete.
        Held as CSV text meanwhile, a quarter of the rows' size: years of entries on a 512 MB Pi."""
        text = io.StringIO()
        w = csv.writer(text)
        w.writerow(EXPORT_FIELDS)
        n = 0
        for r in (self.salvage if salvage else self.rows)(since, until):
            # each text value, whatever its column: a damaged or hand-edited row may hold text in any
            w.writerow([cell(v) for v in (
                r["local_date"], r["local_time"], r["rating"], r["emotion"], r["confidence"], r["utc"],
                r["probabilities"], r["model_sha256"], r["device_id"], r["id"],
                CLOCK[r["clock_synced"]] if r["clock_synced"] in CLOCK else str(r["clock_synced"]),
                "" if r["rating_max"] is None else r["rating_max"])])
            n += 1
        out.write(text.getvalue())
        return n

    def integrity_ok(self) -> bool:
        """True for a sound log; a damage that stops the check itself (a page past the header) is a
        StorageError naming the file, as `check` is where the README sends the owner to confirm it."""
        try:
            return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        except sqlite3.DatabaseError as e:
            raise StorageError(f"{self.path}: integrity_check failed: {e} ({SALVAGE_HINT})") from None

    def close(self) -> None:
        self.db.close()


class ReopeningLog:
    """The log of a daemon that started on a full or read-only card, where SQLite cannot open it
    (it makes a -shm file first). Each use tries to open it again and fails as a write to a full
    card does, so the kiosk runs meanwhile and keeps its entries in memory and the spare file."""

    def __init__(self, path: str | Path, error: str):
        self.path, self._log = Path(path), None
        self.error: str | None = error  # why it is not open: the daemon shows it from the start

    def _opened(self) -> FeedbackLog:
        if self._log is None:
            try:
                self._log = FeedbackLog(self.path)
            except StorageError as e:
                self.error = str(e)
                raise
            self.error = None
        return self._log

    def reopen(self) -> str | None:
        """Try to open it now, with no entry waiting: why it still cannot, or None once it is open."""
        with contextlib.suppress(StorageError):
            self._opened()
        return self.error

    def add(self, entry: Entry, now: datetime | None = None) -> int:
        return self._opened().add(entry, now)

    def contains(self, at: datetime, device_id: str) -> bool:
        return self._opened().contains(at, device_id)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


def cell(text) -> object:
    """A text field as a spreadsheet shows it and never runs it: one starting like a formula (a
    device id set to "=HYPERLINK(...)", a salvaged row's stray bytes) gets the apostrophe that makes
    Excel and LibreOffice read it as text."""
    return f"'{text}" if isinstance(text, str) and text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


def text_or_bytes(data: bytes) -> str | bytes:
    """A text value as read from the log: UTF-8, or its bytes as they are where a failing card flipped
    a bit in them (integrity_check still says "ok"). Only that entry is then damaged, not the log: the
    summary leaves it out as any value of the wrong type, export and salvage write it as a blob is
    written, escaped (b'\\xd3ad'), so the CSV stays strict UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def utc_text(at: datetime) -> str:
    """A press time as the log's `utc` column has it."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a restored line may carry another offset


def _entry_row(cur: sqlite3.Cursor, values: tuple) -> dict:
    """One entry as a dict; a column a log of an older schema lacks reads as unknown (None)."""
    return {"clock_synced": None, "rating_max": None, **dict(zip([c[0] for c in cur.description], values, strict=True))}

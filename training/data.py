"""Read FER-2013 in its public forms into uint8 arrays, with a checksum-keyed cache.

Forms: the challenge CSV (``emotion,pixels,Usage``); the image-folder layout
``train/<class>/*.jpg`` + ``test/<class>/*.jpg`` (no other folder) as a folder or a zip read in place; a
bare folder (or zip) of ``<class>/`` subfolders, read whole as the split ``all``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import sys
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from device.model import sha256_file
from device.preprocess import CLASSES, DISPLAY_NAMES

SIZE = 48
CSV_USAGE = {"train": "Training", "test": "PublicTest", "private": "PrivateTest"}
SPLIT_DIRS = {"train": "train", "test": "test", "private": "test"}
# Kaggle's image-folder FER-2013 puts PublicTest and PrivateTest together in test/ (7,178 faces);
# its file names say which is which.
NAME_PREFIX = {"test": "PublicTest_", "private": "PrivateTest_"}
LOADER_VERSION = 6  # part of the cache key: a loader change re-reads the data
# The challenge CSV's `emotion` codes 0-6 name the classes in its own order, not CLASSES' (alphabetical).
CSV_EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
CSV_CODE_TO_CLASS = tuple(CLASSES.index(name) for name in CSV_EMOTIONS)
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".pgm"}
# Folder names accepted for each class: FER-2013's own and the display names.
CLASS_ALIASES = {name: i for i, name in enumerate(CLASSES)}
CLASS_ALIASES.update({name.lower(): i for i, name in enumerate(DISPLAY_NAMES)})


class DataError(ValueError):
    """Bad input data; the message names the file or line."""


class _Unreadable(DataError):
    """A file that cannot be read (an I/O error, no read permission): not bad data, so never skipped."""


@dataclass
class Split:
    """One split of a data set: faces (N, 48, 48) uint8, labels (N,) int64."""

    x: np.ndarray
    y: np.ndarray
    source: str
    split: str
    checksum: str
    skipped: list[str] = field(default_factory=list)
    # a layout's test/ read whole (no PublicTest_/PrivateTest_ file names): it may hold PrivateTest too, which the
    # card must not then call held back
    mixed: bool = False

    def __len__(self) -> int:
        return len(self.y)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.y, minlength=len(CLASSES))


def cache_dir() -> Path:
    root = os.environ.get("FEEDBACKD_CACHE") or Path.home() / ".cache" / "feedbackd"
    return Path(root)


def _files(root: Path) -> list[Path]:
    """The files under a folder, through linked folders too (a class folder linked in from
    elsewhere; Path.rglob would skip it), each real folder once (a link loop is not followed round)."""
    def unreadable(e: OSError):
        raise _unreadable(e.filename, e)

    seen, files = set(), []
    for folder, dirs, names in os.walk(root, followlinks=True, onerror=unreadable):
        if (real := os.path.realpath(folder)) in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()  # the same first path to a folder linked twice, on any machine
        for name in names:
            if (f := Path(folder, name)).is_file():
                files.append(f)
            # os.walk lists a link whose face or class folder has gone as a file: dropping it would lose up to a
            # class unsaid (an editor's .#lock link is no data)
            elif f.is_symlink() and not f.exists() and not _hidden(f.relative_to(root).as_posix()):
                raise DataError(f"{f}: broken link (nothing at {os.readlink(f)})")
    return files


def _hidden(name: str) -> bool:
    """A file no loader reads (.DS_Store, a zip's __MACOSX/ copies): not data, nor part of its checksum."""
    return any(part.startswith((".", "__MACOSX")) for part in name.split("/"))


def _tree_sha256(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(p for p in _files(root) if not _hidden(p.relative_to(root).as_posix())):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(_read(p))
    return h.hexdigest()


def _unreadable(path, e: OSError) -> DataError:
    """A failing card, a file without read permission: named, even with --skip-bad."""
    return _Unreadable(f"{path}: cannot read ({e.strerror or e})")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise _unreadable(path, e) from None


def source_checksum(path: Path) -> str:
    """sha256 of a file source, or of every path and byte under a folder source."""
    if path.is_dir():
        return _tree_sha256(path)
    try:
        return sha256_file(path)
    except OSError as e:
        raise _unreadable(path, e) from None


def detect_form(path: Path) -> str:
    """Return 'csv', 'layout' (train/ and test/ folders) or 'classes' (bare class folders)."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    prefix, names = _strip_prefix(_entries(path))
    if {n.split("/", 1)[0].lower() for n in names} & set(SPLIT_DIRS.values()):  # Train/ and Test/ too
        # only train/ and test/ are read: a val/ beside them would be dropped, and test/ (PublicTest to
        # the loader) might then be PrivateTest, on which training would choose its epochs
        if other := sorted({top for n in names if "/" in n
                            and (top := n.split("/", 1)[0]).lower() not in SPLIT_DIRS.values()}):
            raise DataError(f"{path}: {', '.join(f'{t}/' for t in other)} beside train/ and test/: an image-folder "
                            "layout has only train/ (Training) and test/ (PublicTest, and PrivateTest named "
                            "PrivateTest_*); move it out or merge it into those")
        return "layout"
    # Kaggle's archive.zip wraps fer2013.csv; a download folder holds the zip (or the CSV) beside a README
    held = [n for n in names if n.lower().endswith((".csv", ".zip"))]
    if held and not any(PurePosixPath(n).suffix.lower() in IMAGE_EXT for n in names):
        kind = "CSV" if held[0].lower().endswith(".csv") else "zip"
        where = f"--data {path / prefix / held[0]}" if path.is_dir() else "unpacked"
        raise DataError(f"{path}: holds {held[0]} and no images: give that {kind} itself ({where})")
    return "classes"


def _entries(path: Path) -> list[str]:
    """Relative POSIX paths of the files in a folder or zip, hidden files left out,
    with one common top-level folder stripped (archives often wrap everything in one)."""
    if path.is_dir():
        names = [p.relative_to(path).as_posix() for p in _files(path)]
    elif zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if not n.endswith("/")]
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{path}: damaged zip archive ({e})") from None
    elif path.suffix.lower() == ".zip" or _read_head(path) == b"PK\x03\x04":  # no end record: cut short
        raise DataError(f"{path}: damaged or truncated zip archive (no central directory; download it again)")
    else:
        raise DataError(f"{path}: not a CSV file, a folder or a zip archive")
    names = [n for n in names if not _hidden(n)]
    if twice := sorted(n for n, k in Counter(names).items() if k > 1):  # a zip appended to: only its last copy reads
        raise DataError(f"{path}: {twice[0]} is in the archive more than once ({len(twice)} such names)")
    return names


def _read_head(path: Path) -> bytes:
    """A file's first 4 bytes: a zip's local header signature where it is one."""
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError as e:
        raise _unreadable(path, e) from None


def _strip_prefix(names: list[str]) -> tuple[str, list[str]]:
    """One top folder that wraps every folder is stripped; a plain file beside it (a README.txt) is
    no data and is left out, as beside train/ and test/."""
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    if len(tops) == 1:
        top = tops.pop()
        if top.lower() not in SPLIT_DIRS.values() and top.lower() not in CLASS_ALIASES:
            return top + "/", [n.split("/", 1)[1] for n in names if "/" in n]
    return "", names


def _decode(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != (SIZE, SIZE):  # before decoding: a huge header costs nothing then
                raise DataError(f"{where}: image is {im.size[0]}x{im.size[1]}, expected {SIZE}x{SIZE}")
            if im.mode.startswith(("I", "F")):  # 16-bit or float: convert("L") would clip, not scale
                raise DataError(f"{where}: {im.mode} image; FER faces are 8-bit grayscale")
            return np.asarray(im.convert("L"))
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from None


def _untagged(name: str) -> bool:
    return not name.rsplit("/", 1)[-1].startswith(tuple(NAME_PREFIX.values()))


def _by_name_prefix(path: Path, names: list[str], split: str) -> tuple[list[str], bool]:
    """In test/, keep PublicTest_* for 'test' and PrivateTest_* for 'private' when the file
    names carry those prefixes, and files with neither (bad input: they belong to no split);
    otherwise test/ is all of 'test' and there is no 'private'. Also says whether tagged."""
    if split not in NAME_PREFIX:
        return names, False
    if all(_untagged(n) for n in names):
        if split == "private":
            raise DataError(f"{path}: test/ has no PrivateTest_* files, so no split 'private'")
        return names, False
    return [n for n in names if _untagged(n) or n.rsplit("/", 1)[-1].startswith(NAME_PREFIX[split])], True


def _read_images(path: Path, split: str, form: str, skip_bad: bool) -> tuple[list, list, list, str]:
    """Faces, labels, skipped files, and the test/ folder read whole for 'test' (no file name in it says
    PublicTest_ or PrivateTest_), else ''."""
    prefix, names = _strip_prefix(_entries(path))
    tagged = False
    if form == "layout":
        if split not in SPLIT_DIRS:
            raise DataError(f"{path}: split {split!r} is not in an image-folder layout (train, test, private)")
        want = SPLIT_DIRS[split] + "/"
        spellings = sorted({n[: len(want)] for n in names if n[: len(want)].lower() == want})  # Train/, TEST/
        if len(spellings) > 1:  # reading one would silently drop the other's faces
            raise DataError(f"{path}: the {split} split is in both " + " and ".join(spellings)
                            + ": merge them into one folder")
        want = spellings[0] if spellings else want
        names = [n[len(want) :] for n in names if n.startswith(want)]
        prefix += want
        names, tagged = _by_name_prefix(path, names, split)
    else:  # a README.txt beside the class folders is no data, as beside train/ and test/ or a wrapping folder
        names = [n for n in names if "/" in n]
    faces, labels, skipped = [], [], []
    zf = zipfile.ZipFile(path) if path.is_file() else None
    try:
        for name in sorted(names):
            where = f"{path}:{prefix}{name}" if zf else str(path / prefix / name)
            parts = name.split("/")
            try:
                if len(parts) != 2:
                    raise DataError(f"{where}: expected <class>/<image>, found a file at the wrong depth")
                label = CLASS_ALIASES.get(parts[0].lower())
                if label is None:
                    raise DataError(
                        f"{where}: unknown class folder {parts[0]!r} (expected one of {', '.join(CLASSES)})"
                    )
                if PurePosixPath(name).suffix.lower() not in IMAGE_EXT:
                    raise DataError(f"{where}: not an image file")
                if tagged and _untagged(name):
                    raise DataError(f"{where}: neither PublicTest_ nor PrivateTest_ in its name, "
                                    "though test/ uses them: it belongs to no split")
                try:
                    data = zf.read(prefix + name) if zf else (path / prefix / name).read_bytes()
                except OSError as e:
                    # a failing card, a file without read permission: not bad data to skip, since the set
                    # trained on would silently differ from the one named; it stops the load even with --skip-bad
                    raise _unreadable(where, e) from None
                except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as e:
                    # a damaged member (its CRC), a compression zipfile lacks, an encrypted member: bad data
                    raise DataError(f"{where}: cannot read ({e})") from None
                faces.append(_decode(data, where))
                labels.append(label)
            except DataError as e:
                if not skip_bad or isinstance(e, _Unreadable):
                    raise
                skipped.append(str(e))
    finally:
        if zf:
            zf.close()
    mixed = prefix if split == "test" and not tagged else ""  # a layout's test/ (a bare set's split is 'all')
    return faces, labels, skipped, mixed


def _warn_mixed(path: Path, folder: str, n: int) -> None:
    """Said on every load, from the cache too: epochs chosen on this split may have been chosen on PrivateTest."""
    where = f"{path}:{folder}" if path.is_file() else f"{path / folder}/"
    print(f"warning: {where} is read whole as the split 'test' ({n} faces): no file name in it carries "
          "PublicTest_ or PrivateTest_, so it may hold PublicTest and PrivateTest together (Kaggle's test/ "
          "does), and no PrivateTest is held back", file=sys.stderr)


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each CSV row; a broken quote or a byte that is not UTF-8 stops
    with the line named, whatever --skip-bad says: the rows after it cannot be trusted. FER rows
    never span lines, so one that does began with an unclosed quote."""
    # utf-8-sig: a CSV saved again by Excel or pandas starts with a byte-order mark; bad bytes are found per row
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f)
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(f"{path}:{start}: unreadable CSV ({e})") from None
            if reader.line_num > start:
                raise DataError(f"{path}:{start}: a quoted field runs on to line {reader.line_num}")
            try:
                ",".join(row).encode("utf-8")
            except UnicodeEncodeError:
                raise DataError(f"{path}:{start}: unreadable CSV (a byte that is not UTF-8)") from None
            yield start, row


def _read_csv(path: Path, split: str, skip_bad: bool) -> tuple[list, list, list, list]:
    """Faces, labels, skipped rows, and which of those (indexes) are rows of no split skipped by a load other
    than 'train': the 'train' load of a pair counts them, so its 'test' load may leave them out."""
    if split not in CSV_USAGE:
        raise DataError(f"{path}: split {split!r} is not in the FER-2013 CSV (train, test, private)")
    usage = CSV_USAGE[split]
    faces, labels, skipped, unassigned = [], [], [], []
    rows = _csv_rows(path)
    header = next(rows, (1, None))[1]
    if header is None or [h.strip().lower() for h in header[:3]] != ["emotion", "pixels", "usage"]:
        raise DataError(f"{path}:1: expected the header 'emotion,pixels,Usage', got {header!r}")
    for line, row in rows:
        where = f"{path}:{line}"
        try:
            if len(row) < 3:
                raise DataError(f"{where}: expected 3 fields, got {len(row)}")
            if row[2] not in CSV_USAGE.values():
                raise DataError(f"{where}: unknown Usage {row[2]!r}")
            if row[2] != usage:
                continue
            try:
                code = int(row[0])
                pixels = np.array(row[1].split(), dtype=np.int64)
            except (ValueError, OverflowError):
                raise DataError(f"{where}: emotion and pixels must be integers") from None
            if not 0 <= code < len(CSV_EMOTIONS):
                raise DataError(f"{where}: emotion {code} out of range 0..{len(CSV_EMOTIONS) - 1}")
            if pixels.size != SIZE * SIZE or pixels.min() < 0 or pixels.max() > 255:
                raise DataError(f"{where}: pixels must be {SIZE * SIZE} values in 0..255, got {pixels.size}")
            faces.append(pixels.astype(np.uint8).reshape(SIZE, SIZE))
            labels.append(CSV_CODE_TO_CLASS[code])
        except DataError as e:
            if not skip_bad:
                raise
            if split != "train" and (len(row) < 3 or row[2] not in CSV_USAGE.values()):
                unassigned.append(len(skipped))
            skipped.append(str(e))
    return faces, labels, skipped, unassigned


def load_split(source: str | Path, split: str, skip_bad: bool = False, use_cache: bool = True,
               count_unassigned: bool = True) -> Split:
    """Load one split ('train', 'test', 'private' or 'all') of any supported form. With skip_bad, a CSV row of no
    split is skipped by every load and counted by each; count_unassigned=False leaves it out of a 'test' or
    'private' load's count, for a load whose 'train' load counts it already (a run's record has it once)."""
    path = Path(source)
    form = detect_form(path)
    if form == "classes" and split != "all":
        raise DataError(f"{path}: a bare class-folder set has only the split 'all', not {split!r}")
    checksum = source_checksum(path)
    cached = cache_dir() / "data" / f"{checksum[:32]}-{split}-{int(skip_bad)}-v{LOADER_VERSION}.npz"
    if use_cache and cached.exists():
        try:  # an entry from before `mixed` (or a CSV's `unassigned`) was kept lacks it (KeyError): a miss too
            with np.load(cached) as z:
                unassigned = z["unassigned"].tolist() if form == "csv" else []
                skipped = _counted(list(z["skipped"]), unassigned, count_unassigned)
                hit = Split(z["x"], z["y"], str(path), split, checksum, skipped, mixed=bool(z["mixed"]))
                if hit.mixed:
                    _warn_mixed(path, str(z["mixed"]), len(hit))
                return hit
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a damaged (or, after a power cut, empty) cache entry is a miss: read the data again
    mixed, unassigned = "", []
    if form == "csv":
        faces, labels, skipped, unassigned = _read_csv(path, split, skip_bad)
    else:
        faces, labels, skipped, mixed = _read_images(path, split, form, skip_bad)
    if not faces:
        raise DataError(f"{path}: split {split!r} holds no faces")
    x = np.stack(faces).astype(np.uint8)
    y = np.asarray(labels, dtype=np.int64)
    if mixed:
        _warn_mixed(path, mixed, len(y))
    if use_cache:
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")  # two loaders at once each write their own
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, x=x, y=y, skipped=np.asarray(skipped, dtype=str), mixed=np.asarray(mixed),
                     unassigned=np.asarray(unassigned, dtype=np.int64))
            os.replace(tmp, cached)
        except OSError as e:  # a full disk or a read-only cache costs the next load its speed, not this one's data
            with contextlib.suppress(OSError):  # its folder may be what failed
                tmp.unlink()
            print(f"warning: cannot cache the decoded faces in {cached.parent} ({e.strerror or e}); "
                  "the next load decodes them again", file=sys.stderr)
    return Split(x, y, str(path), split, checksum, _counted(skipped, unassigned, count_unassigned), mixed=bool(mixed))


def _counted(skipped: list[str], unassigned: list[int], count_unassigned: bool) -> list[str]:
    """The skipped rows a load reports: the cache keeps every one, so either kind of load can be served from it."""
    if count_unassigned:
        return skipped
    drop = set(unassigned)
    return [s for i, s in enumerate(skipped) if i not in drop]


def eval_split_name(source: str | Path) -> str:
    """The split to evaluate: 'test' for a split layout or CSV, 'all' for bare class folders."""
    return "all" if detect_form(Path(source)) == "classes" else "test"


def train_and_test(source: str | Path, skip_bad: bool = False) -> tuple[Split, Split]:
    """Training and PublicTest: what a run learns from and what chooses its epochs."""
    return (load_split(source, "train", skip_bad=skip_bad),
            load_split(source, "test", skip_bad=skip_bad, count_unassigned=False))

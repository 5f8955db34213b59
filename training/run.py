"""A run folder: what a training run leaves on disk, and how it stays whole. Power may go at any
instant, so an epoch's files are written to a staging folder and `state.json` is the one
commit point: a resume finds the run at the end of the last committed epoch, never between."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from device.model import ModelError

STATE = "state.json"
XLA_ENGINE = "XLA, oneDNN"  # what compiled the step: every run asked for XLA before the card said which
STAGED = ".pending-commit"  # + the commit's number: committed once state.json's "commits" reaches it
OLD_STAGED = ".pending-epoch"  # + the epoch: how a run begun by an older feedbackd staged its epochs
# Everything a run writes; a new run in the folder of a finished one removes these first. The
# teachers' targets stay: they are reused only for the same teachers and faces.
RUN_FILES = (STATE, "config.json", "code_commit", "history.csv", "last.keras", "best.weights.h5",
             "average.weights.h5", "epoch*.weights.h5", ".pending-*", "*.tmp", "*.tmp.*")


def read_json(path: Path, what: str, keys: tuple[str, ...] = ()) -> dict:
    """A JSON object a run or export wrote, with `keys` in it; refused naming the file (a truncated,
    hand-edited or older file) rather than a bare JSONDecodeError or KeyError later."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable {what} ({e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: unreadable {what} (a JSON {type(data).__name__}, not an object)")
    if missing := [k for k in keys if k not in data]:
        raise ModelError(f"{path}: unreadable {what} (no {', '.join(map(repr, missing))})")
    return data


def read_state(run: Path, *keys: str) -> dict:
    return read_json(run / STATE, "run state", keys)


def read_config(run: Path, *keys: str) -> dict:
    return read_json(run / "config.json", "run config", keys)


def fsync(path: Path) -> None:
    """Flush a file's data (or a folder's entries) to the disk: a rename commits only what has
    reached it, and after a power cut an unflushed file can be there but empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    fsync(tmp)
    os.replace(tmp, path)
    fsync(path.parent)


def write_whole(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` a file beside `path` and move it over `path`: a kill leaves the old file or the new
    one, never a truncated one. The name is this process's own: two writers at once each write their own."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.x")  # hidden, and ignored as models/.*.tmp.*
    try:
        write(tmp)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def holding(run: Path | None, work: Callable[[], int]) -> int:
    """`work()` with the run folder held for this process alone, else exit 2 saying why: a second
    training, average or export there (or a --restart clearing the files of a run still training) would
    mix two runs' state.json, last.keras and config.json. A folder that does not exist (or no --run-dir)
    holds no run, so there is nothing to hold. The folder itself is locked: nothing is written there, so
    a run this user cannot write is still exported. The kernel drops the lock with the process: a killed
    run never leaves its folder held."""
    try:
        fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY) if run else None
    except FileNotFoundError:
        return work()
    except OSError as e:
        print(f"error: --run-dir {run}: cannot open it ({e.strerror})", file=sys.stderr)
        return 2
    if fd is None:
        return work()
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"error: {run}: in use by another process (a training, average or export on it); wait for it "
                  "or use another --run-dir", file=sys.stderr)
            return 2
        return work()
    finally:
        os.close(fd)


def save_state(state: dict, path: Path) -> None:
    """Write a run's state.json whole or not at all."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    replace_durably(tmp, path)


def commit_files(run: Path, state: dict, write: Callable[[Path], None]) -> None:
    """`write(folder)` puts an epoch's files (checkpoint, best, kept weights, history) or an average
    in a staging folder; saving `state` commits them, then they move in. Each commit has its own
    number, so a second average staged after the same epoch is never taken for the first."""
    n = state.get("commits", 0) + 1
    pending = run / f"{STAGED}{n}"
    shutil.rmtree(pending, ignore_errors=True)
    pending.mkdir()
    write(pending)
    for f in [*pending.iterdir(), pending]:  # on the disk before state.json says they are
        fsync(f)
    save_state({**state, "commits": n}, run / STATE)
    state["commits"] = n
    finish_pending(run, state)


def staged(run: Path, state: dict) -> tuple[list[Path], list[Path]]:
    """A run's staging folders: (committed ones oldest first, uncommitted ones)."""
    def order(pending: Path) -> tuple[bool, int]:
        new = pending.name.startswith(STAGED)
        return new, int(pending.name[len(STAGED if new else OLD_STAGED):])

    committed, uncommitted = [], []
    for pending in sorted(run.glob(".pending-*"), key=order):
        new, n = order(pending)
        (committed if n <= (state.get("commits", 0) if new else state["epochs_done"]) else uncommitted).append(pending)
    return committed, uncommitted


def finish_pending(run: Path, state: dict) -> None:
    """Move committed staged files into place, oldest commit first (a later one's files win); drop
    uncommitted ones. Whatever changes a run's files calls it first: a power cut may have come
    between a commit and its move."""
    committed, uncommitted = staged(run, state)
    for pending in committed:
        for f in pending.iterdir():
            os.replace(f, run / f.name)
    for pending in committed + uncommitted:
        shutil.rmtree(pending)
    fsync(run)


def clear_run(run: Path) -> int:
    """Remove a finished run's files so that a new run cannot mix with them; returns how many."""
    files = {f for pattern in RUN_FILES for f in run.glob(pattern)}
    for f in files:
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    return len(files)


def other_data(run: Path, state: dict, checksum: str, data: str) -> str | None:
    """The error for data other than the run was trained on (averaging, re-exporting), else None."""
    if checksum != state.get("data_sha256", checksum):
        return f"error: --data {data}: not the data {run} was trained on"
    return None


def finished_state(run: Path, then: str) -> tuple[dict, str | None]:
    """A finished run's state with any committed staged files moved in, and None; or ({}, the error)
    for no run or one stopped between epochs (averaging, re-exporting: its record would name a
    longer run), ending with what to do `then`."""
    if not (run / STATE).exists():
        return {}, f"error: --run-dir {run}: no run there (no {STATE})"
    try:
        state = read_state(run, "config", "epochs_done")
    except ModelError as e:
        return {}, f"error: {e}"
    done, epochs = state["epochs_done"], state["config"]["epochs"]
    if done < epochs:
        return {}, f"error: --run-dir {run}: the run stopped after epoch {done} of {epochs}; {then}"
    finish_pending(run, state)  # a commit (an average) may have come just before a power cut
    return state, None


def chosen_weights(run: Path, state: dict) -> Path:
    """The weights a run exports: its average when `training.average` chose one, else its best epoch.
    A committed copy not yet moved in wins, so that a reader which must not move files (evaluate,
    while the run may still be training) reads what the state says."""
    name = "average.weights.h5" if "average" in state else "best.weights.h5"
    return next((f for d in reversed(staged(run, state)[0]) if (f := d / name).is_file()), run / name)

"""The appliance loop: source -> face detector -> crop -> emotion model -> steady reading ->
display, with the submit button and the durable log beside it.

Each stage is a plain object handed in (Frigate-style), so tests run the real loop on an
image folder, a gpiozero MockFactory pin and luma's dummy display."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from device.clock import clock_synced
from device.detector import MAX_BOX_AGE_S, Box, CropGeometry, FaceFinder, crop_face, same_face
from device.display import Screen
from device.notify import Notifier
from device.reading import Reading, Smoother
from device.spare import SpareFile, beside
from device.storage import Entry, StorageError, number

log = logging.getLogger("feedbackd")


def _well_typed(e: Entry) -> bool:
    """A line edited by hand or written by another version: one the log would fail on must not
    stop the daemon, nor hold up the entries in line behind it."""
    def text(v) -> bool:
        if not isinstance(v, str):
            return False
        try:
            v.encode()
        except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON): SQLite cannot store it
            return False
        return True

    return (all(text(v) for v in (e.emotion, e.model_sha256, e.device_id))
            and number(e.rating) and number(e.confidence) and e.clock_synced in (None, True, False)
            and (e.rating_max is None or number(e.rating_max))
            and isinstance(e.probabilities, dict) and all(number(v) for v in e.probabilities.values()))


def entry_json(entry: Entry, at: datetime) -> str:
    """An entry as one JSON line for the journal, from which a technician can restore it by hand."""
    return json.dumps({"utc": at.isoformat(), **asdict(entry)})


class Stop:
    """The daemon's stop request, set from a signal handler: a plain flag, because a handler runs
    between two bytecodes of the code it interrupts, and one that took threading.Event's lock while
    that code held it (entering or leaving `wait`) would hang the daemon until systemd's SIGKILL."""

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True

    def is_set(self) -> bool:
        return self.requested

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)  # at most a frame's interval; a signal's handler runs at once


STAGES = ("capture", "detect", "classify", "render")
IN_VIEW_S = 0.5  # a face seen within this of the newest frame looked at is in view: the screen's face dot
# A backlog of thousands (a spare file that filled while the card was full) takes minutes of synced
# commits on an SD card: a retry stores it this long a pass, the frames and the screen going on between.
DRAIN_S = 1.0
# A stop stores for STOP_S at most: systemd kills the service TimeoutStopSec (10 s) after asking, the
# camera's close may take 3.5 s, and the journal lines for what is left come after. Entries the spare
# file holds (the next start restores them) get STOP_DRAIN_S of it, those only in memory the rest.
STOP_S = 6.0
STOP_DRAIN_S = 3.0
# A log failing for one reason (a full card, for days) is said once, then this often with the entries waiting:
# a line at each retry, 720 an hour, pushed the CRITICAL kept-entry lines out of the journal kept in memory.
STILL_FAILING_S = 3600.0


@dataclass
class Stats:
    frames: int = 0
    faces: int = 0
    entries: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    since: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        """Each stage's time over the frames that went through it: a pass with no new frame adds none."""
        span = max(1e-9, time.monotonic() - self.since)
        per = " ".join(f"{s} {1000 * self.seconds[s] / max(1, self.frames):.1f}ms" for s in STAGES)
        return (f"stats: {self.frames / span:.1f} frames/s, {self.faces} with a face, {self.entries} entries; "
                f"per frame: {per}")


class Daemon:
    def __init__(self, cfg: dict, source, detector, classifier, display, button, store,
                 notifier: Notifier | None = None, device_id: str = "feedbackd"):
        self.cfg = cfg
        self.source, self.classifier = source, classifier
        self.display, self.button, self.store = display, button, store
        self.notifier = notifier or Notifier({})
        self.device_id = device_id
        sm, rt = cfg["smoothing"], cfg["rating"]
        self.smoother = Smoother(classifier.manifest.display_names, rt["map"], sm["window_s"],
                                 sm["reset_after_s"], sm["min_confidence"])
        self.geometry = CropGeometry.from_config(cfg["detector"])
        self.finder = FaceFinder(detector, cfg["detector"]["every_n_frames"],  # a press in that window is theirs
                                 hold_s=cfg["button"]["face_window_s"])
        self._box: Box | None = None  # the last face classified
        # The last two screens drawn: when each was up, its kind, and the reading it showed. A press stores the one
        # up at it: on a Zero 2 W a frame reaches the screen most of a second after it is read, and a press
        # meanwhile is handled only after that frame is added to the reading and the next screen drawn.
        self._shown: deque[tuple[float, str, Reading | None]] = deque(maxlen=2)
        self._face_gap_s = max(MAX_BOX_AGE_S, 2 / cfg["camera"]["fps"])  # no face this long: the next is someone else
        self._missed_at: float | None = None  # the first frame since the last face that showed none
        self._missed = 0  # and how many frames since have shown none
        self._looked_at: float | None = None  # when the newest frame looked at for a face was read
        self.stats = Stats()
        self._last_accepted = -1e9
        self._thanks: tuple[float, Screen] | None = None  # the last press's answer: thanks, or "Not saved"
        self._thanks_undrawn = False  # that answer not on the screen yet: it shows, then lasts its time from there
        self._unsaved: tuple[str, Screen] | None = None  # an entry shown "Not saved": its line, and its thanks
        self._no_face = (0.0, 0.0)  # "No face - try again": since the refused press was handled, and until
        self._pending: list[tuple[Entry, datetime]] = []  # writes that failed, with their press time
        self._retry_at = 0.0
        self._reported: tuple[str, float] | None = None  # the log's failure last said in the journal, and when
        self.storage_error: str | None = getattr(store, "error", None)  # a log that could not open at start
        # The log could not say which of the spare's lines it holds: they stay there, retried with
        # the pending entries, and the spare is not cleared until they are back in line.
        self._unrestored = False
        self.spare = self._open_spare(beside(store.path))  # the log's spare file

    def _open_spare(self, path: Path) -> SpareFile | None:
        """The spare file, and the entries it kept through a stop or a power cut back in line for
        the log (each once: one the log took before the spare was cleared is not stored again)."""
        try:
            spare = SpareFile(path)
        except OSError as e:
            log.warning("%s: no spare file (%s): an entry the log cannot take is kept in memory and "
                        "the journal only", path, e)
            return None
        self._restore_spare(spare)
        if not self._pending and not self._unrestored:
            spare.clear()
        return spare

    def _restore_spare(self, spare: SpareFile) -> None:
        """Put the spare's entries from before this start back in line, all or none: while the log
        cannot say which it holds, they stay in the spare (`_unrestored`) and are tried again."""
        try:
            restored = [kept for saved in spare.entries() if (kept := self._restore(saved, spare))]
            for entry, at in restored:  # once, not at each try the log failed part-way through
                log.warning("%s: restoring an entry kept before the last stop: %s", spare.path, entry_json(entry, at))
        except StorageError as e:
            if not self._unrestored:
                log.warning("%s: not restored yet, the log cannot tell which entries it holds (%s); kept there, "
                            "and new entries the log cannot take are written after them", spare.path, e)
            self._unrestored = True
            self._retry_at = time.monotonic() + self.cfg["storage"]["retry_s"]
            return
        self._unrestored = False
        self._pending[:0] = restored  # pressed before this start's own entries

    def _restore(self, saved: dict, spare: SpareFile) -> tuple[Entry, datetime] | None:
        """One saved entry to put back in line, None if the log has it or it cannot be read."""
        fields = {k: v for k, v in saved.items() if k in Entry.__dataclass_fields__}  # a newer one's extras
        try:
            at, entry = datetime.fromisoformat(saved["utc"]), Entry(**fields)
            if at.tzinfo is None or not _well_typed(entry):
                raise ValueError("a field of the wrong type")
            at.astimezone()  # as the log dates it: a year 1 time overflows there
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            line = json.dumps(saved)
            if spare.first_report(line):  # read again at each retry while the log cannot say what it holds
                log.critical("%s: an entry that cannot be read (%s) is left out, kept in %s: %s", spare.path, e,
                             spare.aside, line)
            spare.set_aside(line)
            return None
        if self.store.contains(at, entry.device_id):
            return None
        return entry, at

    # --- one frame
    def step(self) -> None:
        t0 = time.monotonic()
        frame = self.source.read()
        t1 = time.monotonic()
        thanked = self._handle_presses()  # before this frame is seen: its face may be the next customer's
        if frame is not None:
            self._see(frame, t1)
        if not thanked:  # a backlog waits a pass: the customer's thank-you is drawn at once
            self._retry_pending()
        t2 = time.monotonic()
        screen = self.screen(t2)
        self.display.show(screen)
        t3 = time.monotonic()
        if frame is not None:  # per frame, as detect and classify: a pass with none new is not one
            self.stats.seconds["capture"] += t1 - t0
            self.stats.seconds["render"] += t3 - t2
        # as screen() had it, and only where it showed it: a press under "No face" or a camera error stores
        # nothing; under a storage error shown to all it is still taken (kept in memory, "Not saved")
        shown = screen.kind == "live" or screen.title == "Storage error"
        kind = "thanks" if self._thanks and screen is self._thanks[1] else screen.kind  # "Not saved" too
        self._shown.append((t3, kind, self.smoother.reading(t2) if shown else None))
        if kind == "thanks" and self._thanks_undrawn:  # its time counts from when the customer sees it
            self._thanks_undrawn = False
            self._thanks = (max(self._thanks[0], t3 + self.cfg["display"]["thank_you_s"]), self._thanks[1])
        self.stats.frames += frame is not None

    def _see(self, frame: np.ndarray, captured_at: float) -> None:
        # the dot is judged by the newest frame looked at, not the clock: on a Pi that detects for most
        # of a second, a face in every frame is always older than IN_VIEW_S by the time it is drawn
        self._looked_at = captured_at
        start = time.monotonic()
        box = self.finder.find(frame)
        t = time.monotonic()
        self.stats.seconds["detect"] += t - start
        if box is None:
            self._missed_at = captured_at if self._missed_at is None else self._missed_at
            self._missed += 1
            return
        face = crop_face(frame, box, self.geometry, self.classifier.spec.size)
        probs = self.classifier.predict(face)[0]
        self.stats.seconds["classify"] += time.monotonic() - t
        self.stats.faces += 1
        # someone else: a box elsewhere, or a face after frames that showed none for longer than the
        # gap (the next customer stepping into the same spot); the reading then averages only their
        # face. Timed from the first frame without one, and never on one frame alone: on a slow Pi
        # (a Zero 2 W detects for most of a second) one missed detection is longer than the gap, and
        # one customer blinking in it stays one customer.
        last_box, self._box = self._box, box
        new_face = last_box is not None and (
            not same_face(last_box, box)
            or (self._missed > 1 and captured_at - self._missed_at > self._face_gap_s))
        gap_began, self._missed_at, self._missed = self._missed_at, None, 0
        # The next customer, in the last one's spot too, is followed with the usual lead; not the
        # logged one looking up again from the button they pressed while out of sight.
        if new_face and (not same_face(last_box, box) or gap_began > self._last_accepted):
            self.finder.release(None)
        self.smoother.add(captured_at, probs, new_face)  # when the frame was read, not when its face was classified

    # --- the button
    def _handle_presses(self) -> bool:
        """Store or refuse each new press; True if one was thanked (its screen is to be drawn without delay). A
        refused one is not: a button bouncing with no one in front would otherwise hold every retry back."""
        bt, thanked = self.cfg["button"], False
        for pressed_at in self.button.presses():
            if pressed_at - self._last_accepted < bt["cooldown_s"] or (self._thanks and pressed_at < self._thanks[0]):
                continue  # one press, one entry: none while the thank-you shows, however late it was handled
            now = time.monotonic()  # judged at the press: handling may lag (a camera reconnect)
            kind, reading = next(((k, r) for drawn, k, r in reversed(self._shown) if drawn <= pressed_at),
                                 ("idle", None))  # as shown
            if kind == "thanks":  # its time up, but not yet drawn over: the customer still saw "Thank you!"
                continue
            if reading and reading.face != self.smoother.face_at(pressed_at):  # the last customer's, still up
                reading = None  # while the next one's face is classified: theirs is not on the screen yet
            if reading is None or not self.smoother.face_seen_within(pressed_at, bt["face_window_s"]):
                # a camera error stays up: trying again cannot help
                if not getattr(self.source, "error", None):
                    self._no_face = (now, now + self.cfg["display"]["thank_you_s"])
                log.info("press without a face: nothing stored")
                continue  # and the customer may press again at once
            thanked = True
            self._last_accepted = pressed_at
            self.finder.release(self._box)  # logged: the next customer's face need not outscore this one's by far
            entry, at = self._entry(reading), datetime.now(UTC) - timedelta(seconds=now - pressed_at)
            self._pending.append((entry, at))  # after any entries still waiting: ids follow press order
            # Behind a backlog the log is taking (a card with room again), this one waits its turn in the
            # spare file, thanked at once: storing any of it first (a second's worth of synced commits on an
            # SD card) held the thank-you back. A log that failed is tried again: room may be back.
            behind = len(self._pending) > 1 and self.spare is not None and self.storage_error is None
            stored = not behind and self._store_pending(now, DRAIN_S if self.spare else math.inf)
            line = entry_json(entry, at)
            kept = stored or self._keep(line, behind=self.storage_error is None)
            if not kept and self.storage_error is None:  # behind a backlog with the spare file full: the log
                stored = kept = self._store_pending(now)  # takes the rest now, the screen waiting, not memory
                if not kept:
                    log.critical("entry kept in memory until the log can be written: %s", line)
            # This customer's thanks, stored or kept on the disk: a storage error shown instead would
            # invite a second press, and a second entry once the log is back. An entry in memory only
            # is lost at a power cut: that customer and staff see it was not saved. Either screen lasts
            # the cooldown too, so that no press meets a screen that ignores it; a reading the screen
            # called "Not sure" is thanked without the emotion the entry keeps. The LED means stored.
            # Timed again once drawn (step): the frame seen meanwhile takes most of a second on a slow Pi.
            until = max(time.monotonic() + self.cfg["display"]["thank_you_s"], pressed_at + bt["cooldown_s"])
            shown = (entry.emotion, entry.rating) if reading.sure else (None, None)
            thanks = Screen("thanks", *shown, self.cfg["rating"]["max"])
            self._thanks = (until, thanks if kept
                            else Screen("error", title="Not saved", detail="storage error: please tell staff"))
            self._thanks_undrawn = True
            self._unsaved = None if kept else (line, thanks)
            if stored:
                self.button.acknowledge()
        return thanked

    def _keep(self, line: str, behind: bool = False) -> bool:
        """An entry the log did not take, to the journal and the spare file now (a power cut may
        come first); True once it is on the disk. `behind`: the log works, but earlier entries go first."""
        if behind:
            log.info("entry waits in the spare file while the log takes the %d before it: %s", len(self._pending) - 1,
                     line)
        else:
            log.critical("entry kept in memory until the log can be written: %s", line)
        return self.spare is not None and self.spare.append(line)

    def _entry(self, r: Reading) -> Entry:
        return Entry(r.emotion, r.rating, r.confidence, r.probabilities, self.classifier.sha256, self.device_id,
                     clock_synced(), self.cfg["rating"]["max"])

    def _store(self, entry: Entry, at: datetime, now: float) -> bool:
        """Commit one entry stamped with its press time `at` (a retry keeps the original time)."""
        try:
            row = self.store.add(entry, at)
        except StorageError as e:
            self.storage_error = str(e)
            self._retry_at = now + self.cfg["storage"]["retry_s"]
            self._report_failure(str(e), now)
            return False
        self.storage_error, self._reported = None, None
        self.stats.entries += 1
        log.info("stored entry %d: %s, rating %s, confidence %.2f, pressed %s", row, entry.emotion, entry.rating,
                 entry.confidence, at.isoformat())  # matches a journal line of an entry kept in memory
        return True

    def _report_failure(self, reason: str, now: float) -> None:
        """Each new reason once, then a reminder every STILL_FAILING_S with the entries waiting."""
        if self._reported and self._reported[0] == reason:
            if now - self._reported[1] < STILL_FAILING_S:
                return
            log.error("%s (still failing, entries waiting: %d)", reason, len(self._pending))
        else:
            log.error("%s (kept in memory, retrying every %.0f s)", reason, self.cfg["storage"]["retry_s"])
        self._reported = (reason, now)

    def _store_pending(self, now: float, budget_s: float = math.inf) -> bool:
        """Store the waiting entries oldest first, for at most `budget_s`; True once none is left.
        Each stored one feeds the watchdog: a long backlog is progress, not a hang to restart."""
        if self._unrestored and self.spare:
            self._restore_spare(self.spare)
        deadline = time.monotonic() + budget_s
        while self._pending:
            if not self._store(*self._pending[0], now):
                return False
            self._pending.pop(0)
            if self.notifier.watchdog_s:
                self.notifier.watchdog()
            if self._pending and time.monotonic() >= deadline:
                return False  # the rest at the next pass
        if self.spare and not self._unrestored:
            self.spare.clear()
        return True

    def _store_pending_or_spare(self, now: float, budget_s: float = math.inf) -> None:
        """Store the waiting entries; while the log cannot, write the spare's lines whose write failed
        again, rather than only before the next entry the log refuses (maybe never, before a power cut)."""
        if self._store_pending(now, budget_s):
            self._saved_late(stored=True)
        elif self.spare:
            # that entry's line among those written: one a full spare refused is still in memory only
            retried = self._unsaved is not None and self._unsaved[0] in self.spare.unwritten
            if self.spare.write_unwritten() and retried:
                self._saved_late(stored=False)

    def _saved_late(self, stored: bool) -> None:
        """The entry shown "Not saved" is on the disk now. While that screen still shows, the thanks
        its press would have had replace it, until the same time: "Not saved" would invite a second
        press, and a second entry. The LED, as at the press, means stored in the log."""
        if self._unsaved and self._thanks and time.monotonic() < self._thanks[0]:
            self._thanks = (self._thanks[0], self._unsaved[1])
            if stored:
                self.button.acknowledge()
        self._unsaved = None

    def _retry_pending(self) -> None:
        now = time.monotonic()
        if now < self._retry_at:
            return
        if self._pending or self._unrestored:
            self._store_pending_or_spare(now, DRAIN_S)
        elif self.storage_error and hasattr(self.store, "reopen"):  # no entry waiting: the error screen clears
            self.storage_error = self.store.reopen()  # once the log opens, not at the next press
            self._retry_at = now + self.cfg["storage"]["retry_s"]

    def close(self) -> None:
        if self.spare:
            self.spare.close()

    def flush_pending(self) -> None:
        """At shutdown: one last try for entries still in memory, for STOP_S at most (those the spare
        file holds for STOP_DRAIN_S); any the log cannot take go to the journal in full. Only those the spare
        file lacks are for a technician to restore by hand: the next start restores the spare's, and
        one restored twice by then would be counted twice."""
        self._handle_presses()  # a press in the last frame before the stop is a customer's feedback too
        started = time.monotonic()
        self._store_pending_or_spare(started, STOP_DRAIN_S)
        kept = set()
        if self.spare and self._pending:
            with contextlib.suppress(OSError):  # unreadable: each entry is then for the technician
                kept = self.spare.kept_times()
        if self._pending and self.storage_error is None:  # the time ran out, not the log: one only in memory
            left = []                                      # is lost at the kill unless stored now
            for entry, at in self._pending:
                if at in kept or self.storage_error or time.monotonic() >= started + STOP_S \
                        or not self._store(entry, at, time.monotonic()):
                    left.append((entry, at))
                elif self.notifier.watchdog_s:
                    self.notifier.watchdog()
            self._pending = left
        for entry, at in self._pending:
            if at in kept:
                log.warning("entry not stored, kept in %s for the next start (not to restore by hand): %s",
                            self.spare.path, entry_json(entry, at))
            else:
                log.critical("entry not stored (the log cannot be written): %s", entry_json(entry, at))

    # --- what the screen shows
    def screen(self, now: float) -> Screen:
        if self._thanks and (self._thanks_undrawn or now < self._thanks[0]):
            return self._thanks[1]
        since, until, seen = *self._no_face, self.smoother.last_face_at
        if now < until and (seen is None or seen <= since):
            return Screen("no_face")  # until a face is seen again: the customer trying again sees what a press stores
        r = self.smoother.reading(now)
        # a press would store nothing: no reading on screen that a press refuses. Judged at the draw, as a
        # press is at its own time: by the newest frame read instead, a camera that stalled (no new frame for
        # seconds) or a slow draw kept a reading up past the window, and a press on it met "No face"
        if r is not None and not self.smoother.face_seen_within(now, self.cfg["button"]["face_window_s"]):
            r = None
        # While the spare file keeps what the log cannot take (days of a full card), a customer in
        # front sees their reading and may press; the error waits for staff between customers.
        keeping = self.spare is not None and self.spare.has_room()
        if self.storage_error and (r is None or not keeping):
            return Screen("error", title="Storage error",
                          detail="entries kept on disk, retrying" if keeping else "feedback not saved yet, retrying")
        if getattr(self.source, "error", None):
            return Screen("error", title="Camera error", detail="retrying...")
        if r is None:
            return Screen("idle")
        return Screen("live", r.emotion if r.sure else None, r.rating if r.sure else None,
                      self.cfg["rating"]["max"], face=self._looked_at is not None
                      and self.smoother.face_seen_within(self._looked_at, IN_VIEW_S))

    # --- the loop
    def run(self, stop: Stop | threading.Event) -> None:
        self.notifier.ready()
        self.notifier.status("running")
        log.info("running")
        next_stats = time.monotonic() + self.cfg["daemon"]["stats_interval_s"]
        next_ping = 0.0
        fps = self.cfg["camera"]["fps"]
        try:
            while not stop.is_set():
                started = time.monotonic()
                self.step()
                # fed right after each step, at most once a second: one slow step (a camera
                # reconnect) may then take nearly the whole WatchdogSec, not half of it
                if self.notifier.watchdog_s and (done := time.monotonic()) >= next_ping:
                    self.notifier.watchdog()
                    next_ping = done + min(1.0, self.notifier.watchdog_s)
                if started >= next_stats:
                    log.info(self.stats.line())
                    self.stats = Stats(entries=self.stats.entries)
                    next_stats = started + self.cfg["daemon"]["stats_interval_s"]
                stop.wait(max(0.0, 1.0 / fps - (time.monotonic() - started)))
        finally:  # a crash too: entries still in memory reach the log or the journal
            self.notifier.stopping()
            self.flush_pending()

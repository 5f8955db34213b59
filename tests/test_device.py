"""The appliance at the level people see it: the daemon loop on a real photo, the GPIO button
(gpiozero MockFactory), luma's dummy display, the SQLite log, and the CLI."""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import io
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import FACE_DIR, ROOT, moved_clock, photo

from device import cli, sources
from device.button import GpioButton
from device.config import DEFAULT_RATINGS, ConfigError, example_toml, load_config
from device.daemon import Daemon, entry_json
from device.detector import Box, FaceDetector
from device.display import Display, Screen, render
from device.model import EmotionClassifier, Manifest, ModelError
from device.preprocess import DISPLAY_NAMES
from device.sources import ImageSource, LatestFrame, ReconnectingSource, SourceError, SourceStuck
from device.spare import SIZE, SpareFile, beside, waiting
from device.storage import Entry, FeedbackLog, StorageError


@pytest.fixture
def face_folder(tmp_path) -> Path:
    d = tmp_path / "frames"
    d.mkdir()
    shutil.copy(photo(), d / "customer.jpg")
    return d


@pytest.fixture
def empty_folder(tmp_path) -> Path:
    import cv2

    d = tmp_path / "empty"
    d.mkdir()
    cv2.imwrite(str(d / "nobody.png"), np.full((480, 640, 3), 90, np.uint8))
    return d


@pytest.fixture
def model(converted) -> Path:
    return converted / "fer_vgg16_int8.tflite"


class Rig:
    """The real daemon with a mock GPIO pin and luma's dummy display."""

    def __init__(self, model: Path, frames: Path, db: Path, store=None, **cfg_overrides):
        from gpiozero.pins.mock import MockFactory
        from luma.core.device import dummy

        overrides = {"button.cooldown_s": 3.0, "smoothing.min_confidence": 0.0, **cfg_overrides}
        self.cfg = load_config(None, overrides)
        self.factory = MockFactory()
        self.button = GpioButton(17, pull_up=True, bounce_s=0, led_pin=27, pin_factory=self.factory)
        self.pin, self.led = self.factory.pin(17), self.factory.pin(27)
        self.screen = dummy(width=128, height=64, mode="1")
        self.store = store or FeedbackLog(db)
        self.daemon = Daemon(self.cfg, ImageSource(str(frames), fps=30), FaceDetector(FACE_DIR),
                             EmotionClassifier(model), Display(self.screen), self.button, self.store,
                             device_id="till-3")

    def press(self) -> None:
        self.pin.drive_low()
        self.pin.drive_high()

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.daemon.step()

    def close(self) -> None:
        self.button.close()
        self.daemon.close()
        self.store.close()


class ScriptedFinder:
    """A face finder showing `box` in each frame whose scripted emotion is not None (the classifier
    then says that emotion for sure); the releases the daemon asks for are noted."""

    def __init__(self, box, emotions):
        self.box, self.emotions, self.released, self.emotion = box, iter(emotions), [], None

    def find(self, frame):
        self.emotion = next(self.emotions)
        return self.box if self.emotion else None

    def release(self, face):
        self.released.append(face)


def script_faces(rig: Rig, monkeypatch, box, emotions) -> ScriptedFinder:
    finder = rig.daemon.finder = ScriptedFinder(box, emotions)
    monkeypatch.setattr(rig.daemon.classifier, "predict", lambda face: np.eye(7)[[DISPLAY_NAMES.index(finder.emotion)]])
    return finder


def test_end_to_end_press_stores_one_entry_and_thanks(model, face_folder, tmp_path):
    rig = Rig(model, face_folder, tmp_path / "feedback.db")
    assert rig.daemon.finder.hold_s == rig.cfg["button"]["face_window_s"]  # a press in it is this customer's
    rig.steps(3)
    assert rig.daemon.screen(time.monotonic()).kind == "live"
    before = time.monotonic()  # before the press: the cooldown runs from the press's own time
    rig.press()
    rig.steps(1)
    after = time.monotonic()
    rows = list(rig.store.rows())
    assert len(rows) == 1
    row = rows[0]
    # what the model says of this photo's face, found and cropped as the daemon does, is what is stored
    import cv2

    from device.detector import CropGeometry, crop_face

    clf, frame = rig.daemon.classifier, cv2.imread(str(face_folder / "customer.jpg"))
    (box,) = FaceDetector(FACE_DIR).detect(frame)
    said = clf.predict(crop_face(frame, box, CropGeometry.from_config(rig.cfg["detector"]), clf.spec.size))[0]
    names = clf.manifest.display_names
    probs = json.loads(row["probabilities"])
    assert list(probs) == list(names)
    np.testing.assert_allclose([probs[n] for n in names], said, atol=1e-3)  # every frame is the same photo
    assert row["emotion"] == names[int(said.argmax())] and row["confidence"] == pytest.approx(said.max(), abs=1e-3)
    assert row["rating"] == rig.cfg["rating"]["map"][row["emotion"]]
    assert row["model_sha256"] == clf.sha256 and row["device_id"] == "till-3"
    assert row["utc"].endswith("Z") and len(row["local_date"]) == 10 and len(row["local_time"]) == 8
    expected = render(Screen("thanks", row["emotion"], row["rating"], 5), (128, 64), "1")
    assert rig.screen.image.tobytes() == expected.tobytes()
    # "Thank you!" for 2 s from the press's handling, inside that step, and through the 3 s cooldown
    # (README), then the camera's screens
    assert rig.daemon.screen(before + 2.9).kind == "thanks" and rig.daemon.screen(after + 3.1).kind in ("live", "idle")
    rig.close()


def test_entries_carry_the_local_date_and_time_of_the_kiosk(tmp_path, monkeypatch):
    """The export's date and time are the store's own, not UTC: a Tokyo till at 05:00. The zone
    is the one set now, not when the daemon started (a technician sets it after installing)."""
    entry, at = Entry("Happy", 5, 0.9, {"Happy": 0.9}, "ab", "till-1"), datetime(2026, 11, 3, 20, tzinfo=UTC)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()  # the zone the daemon started with
    try:
        log = FeedbackLog(tmp_path / "f.db")
        log.add(entry, at)
        monkeypatch.setenv("TZ", "Asia/Tokyo")  # then set, as raspi-config would, with no restart
        log.add(entry, at)
        utc_row, row = log.rows()
        assert (utc_row["local_date"], utc_row["local_time"]) == ("2026-11-03", "20:00:00")
        assert (row["utc"], row["local_date"], row["local_time"]) == ("2026-11-03T20:00:00.000000Z", "2026-11-04",
                                                                      "05:00:00")
        assert [r["id"] for r in log.rows(since="2026-11-04")] == [row["id"]]
        log.close()
    finally:
        monkeypatch.undo()
        time.tzset()


def test_ten_presses_within_100ms_store_one_entry(model, face_folder, tmp_path):
    rig = Rig(model, face_folder, tmp_path / "feedback.db")
    rig.steps(2)
    for _ in range(10):
        rig.press()
        time.sleep(0.008)
    rig.steps(2)
    assert rig.store.count() == 1
    rig.close()


def test_press_without_a_face_stores_nothing(model, empty_folder, face_folder, tmp_path):
    rig = Rig(model, empty_folder, tmp_path / "feedback.db")
    rig.steps(2)
    assert rig.daemon.screen(time.monotonic()).kind == "idle"
    rig.press()
    rig.steps(1)
    assert rig.store.count() == 0
    assert rig.daemon.screen(time.monotonic()) == Screen("no_face")
    assert rig.screen.image.tobytes() == render(Screen("no_face"), (128, 64), "1").tobytes()
    rig.daemon.source = ImageSource(str(face_folder), fps=30)  # the customer steps in and presses again
    rig.steps(2)
    rig.press()
    rig.steps(1)
    assert rig.store.count() == 1  # a refused press starts no cooldown
    rig.close()


def test_presses_within_the_cooldown_are_ignored_until_it_ends(model, face_folder, tmp_path, monkeypatch):
    """The cooldown: a press within button.cooldown_s of the last entry stores nothing, and the
    thank-you lasts as long, so no press meets a screen that ignores it (a clock the test moves:
    a loaded machine cannot blur it)."""
    from device import daemon as D

    rig = Rig(model, face_folder, tmp_path / "feedback.db", **{"button.cooldown_s": 1.5, "display.thank_you_s": 0.5})
    clock = moved_clock(monkeypatch, D)

    def press_at(t: float) -> None:
        clock[0] = t - 0.1
        rig.steps(1)  # a face seen just before the press
        clock[0] = t
        rig.press()
        rig.steps(1)

    press_at(100.0)
    assert rig.store.count() == 1 and rig.daemon.screen(clock[0]).kind == "thanks"
    press_at(100.8)  # the thank-you's own 0.5 s are over; the cooldown lasts until 101.5
    assert rig.store.count() == 1 and rig.daemon.screen(clock[0]).kind == "thanks"
    assert rig.daemon.screen(101.45).kind == "thanks" and rig.daemon.screen(101.55).kind == "live"
    press_at(101.6)
    assert rig.store.count() == 2
    monkeypatch.undo()
    rig.close()


def test_the_face_dot_follows_the_newest_frame_and_a_reading_shows_while_a_press_would_store_it(
        model, face_folder, tmp_path, monkeypatch):
    """The dot says the newest frame looked at shows a face, however long a slow Pi took to find it
    (a Zero 2 W detects for most of a second); the reading stays up while a press would store it
    (a face within button.face_window_s), not the longer smoothing.reset_after_s its average is kept."""
    from device import daemon as D

    rig = Rig(model, face_folder, tmp_path / "feedback.db", **{"smoothing.reset_after_s": 2.0})
    clock = moved_clock(monkeypatch, D)
    finder = script_faces(rig, monkeypatch, Box(100, 100, 200, 200, 0.9), ["Happy"] * 3 + [None] * 2)
    find = finder.find

    def slow(frame):
        clock[0] += 0.8
        return find(frame)

    finder.find = slow
    rig.steps(3)  # a face in every frame, each found 0.8 s after it was read
    face_at = clock[0] - 0.8
    seen = rig.daemon.screen(clock[0])
    assert seen.kind == "live" and seen.face is True
    # judged at the draw, as a press is at its own time: a draw that lags the newest face by more than the
    # window shows no reading, since a press on it would be refused
    assert rig.daemon.screen(face_at + 1.4).kind == "live" and rig.daemon.screen(face_at + 1.8).kind == "idle"
    finder.find = find
    rig.steps(1)  # the customer looks down at the button: no face in the next frame
    gone = rig.daemon.screen(clock[0])
    assert gone.kind == "live" and gone.face is False and (gone.emotion, gone.rating) == (seen.emotion, seen.rating)
    assert rig.daemon.screen(face_at + 1.4).kind == "live"
    assert rig.daemon.smoother.reading(face_at + 1.6) is not None  # kept for their glance back up
    clock[0] = face_at + 1.6
    rig.steps(1)  # still no face
    assert rig.daemon.screen(clock[0]).kind == "idle"  # but a press now would store nothing
    monkeypatch.undo()
    rig.close()


def test_a_stalled_camera_takes_the_reading_off_the_screen_as_a_press_would_refuse_it(
        model, face_folder, tmp_path, monkeypatch):
    """A camera that stalls hands out no new frame (LatestFrame.read: None, for up to 5 s): the screen,
    judged by the last frame read, kept a pressable reading up that the press, judged at its own time,
    refused with "No face - try again"."""
    from device import daemon as D

    rig = Rig(model, face_folder, tmp_path / "feedback.db")
    clock = moved_clock(monkeypatch, D)
    script_faces(rig, monkeypatch, Box(100, 100, 200, 200, 0.9), ["Happy"])
    frames = iter([rig.daemon.source.read()])
    rig.daemon.source = SimpleNamespace(read=lambda: next(frames, None), error=None)
    rig.steps(1)  # the customer's face at 100.0, then the camera stalls
    assert rig.daemon.display.current.kind == "live"
    clock[0] += rig.cfg["button"]["face_window_s"] + 0.2
    rig.steps(1)  # no new frame
    shown = rig.daemon.display.current
    rig.press()
    rig.steps(1)
    assert (shown.kind == "live") == (rig.store.count() == 1)  # the screen and the press agree
    assert shown.kind == "idle" and rig.daemon.display.current == Screen("no_face")
    monkeypatch.undo()
    rig.close()


def test_the_thank_you_lasts_its_time_from_when_it_is_drawn(model, face_folder, tmp_path, monkeypatch):
    """On a slow Pi the frame seen after the press is handled takes most of a second before the
    thank-you is drawn: timed from the handling, it was up that much less than display.thank_you_s."""
    from device import daemon as D

    rig = Rig(model, face_folder, tmp_path / "feedback.db", **{"button.cooldown_s": 0.5})
    clock = moved_clock(monkeypatch, D)
    finder = script_faces(rig, monkeypatch, Box(100, 100, 200, 200, 0.9), ["Happy"] * 2)
    find = finder.find

    def slow(frame):
        clock[0] += 0.8
        return find(frame)

    finder.find = slow
    rig.steps(1)
    rig.press()
    rig.steps(1)  # the press handled at 100.8, the thank-you drawn at 101.6
    assert rig.store.count() == 1 and rig.daemon.display.current.kind == "thanks" and clock[0] == pytest.approx(101.6)
    thank_you_s = rig.cfg["display"]["thank_you_s"]
    assert rig.daemon.screen(clock[0] + thank_you_s - 0.05).kind == "thanks"
    assert rig.daemon.screen(clock[0] + thank_you_s + 0.05).kind != "thanks"
    monkeypatch.undo()
    rig.close()


def test_no_second_entry_while_the_thank_you_shows(model, face_folder, tmp_path):
    """A cooldown shorter than the thank-you, or a press handled late: the customer still looking
    at "Thank you!" and pressing again gives no second entry."""
    rig = Rig(model, face_folder, tmp_path / "feedback.db", **{"button.cooldown_s": 0.2, "display.thank_you_s": 2.0})
    rig.steps(2)
    rig.press()
    rig.steps(1)
    thanked = time.monotonic()
    time.sleep(0.4)  # past the cooldown, inside the thank-you
    assert rig.daemon.screen(time.monotonic()).kind == "thanks"
    rig.press()
    rig.steps(1)
    assert rig.store.count() == 1
    time.sleep(max(0.0, thanked + 2.1 - time.monotonic()))
    rig.steps(2)  # the next customer steps up
    rig.press()  # the thank-you is over
    rig.steps(1)
    assert rig.store.count() == 2
    rig.close()


def test_a_press_on_a_thank_you_not_yet_drawn_over_is_ignored_not_refused(model, face_folder, tmp_path, monkeypatch):
    """The thank-you's time is up but the next screen is not drawn yet (most of a second on a Zero 2 W):
    a press on it stores nothing, as on any thank-you, and shows no "No face" to a customer in view."""
    from device import daemon as D

    rig = Rig(model, face_folder, tmp_path / "feedback.db", **{"button.cooldown_s": 0.2, "display.thank_you_s": 1.0})
    clock = moved_clock(monkeypatch, D)
    rig.steps(1)
    rig.press()
    rig.steps(1)
    assert rig.store.count() == 1
    clock[0] = 100.5
    rig.steps(1)  # "Thank you!" drawn, up until 101.0
    clock[0] = 101.2
    rig.press()
    rig.steps(1)
    assert rig.store.count() == 1 and rig.daemon.screen(clock[0]).kind == "live"
    clock[0] = 101.4
    rig.press()  # on the reading drawn since: stored
    rig.steps(1)
    assert rig.store.count() == 2
    monkeypatch.undo()
    rig.close()


def test_a_reading_below_min_confidence_shows_not_sure_and_a_press_stores_it(model, face_folder, tmp_path):
    rig = Rig(model, face_folder, tmp_path / "feedback.db", **{"smoothing.min_confidence": 1.0})
    rig.steps(3)
    now = time.monotonic()
    assert rig.daemon.smoother.reading(now).confidence < 1.0
    screen = rig.daemon.screen(now)
    assert screen.kind == "live" and screen.emotion is None and screen.text() == "Not sure"
    expected = render(Screen("live", None, None, 5, face=True), (128, 64), "1")
    assert rig.screen.image.tobytes() == expected.tobytes()
    rig.press()  # the customer still gave feedback: the best guess is stored with its low confidence
    rig.steps(1)
    row = next(rig.store.rows())
    assert row["emotion"] in rig.daemon.classifier.manifest.display_names and row["confidence"] < 1.0
    thanks = rig.daemon.screen(time.monotonic())  # without the emotion and stars the screen never showed
    assert thanks == Screen("thanks", None, None, 5) and thanks.text() == "Thank you!"
    assert rig.screen.image.tobytes() == render(thanks, (128, 64), "1").tobytes()
    rig.close()

def _break_storage(rig: Rig, db: Path, broken: bool) -> None:
    os.chmod(db, 0o444 if broken else 0o644)  # read-only file: the write fails
    rig.store.db.execute(f"PRAGMA query_only = {'ON' if broken else 'OFF'}")  # root ignores file modes


def test_storage_failure_is_retried_and_nothing_lost(model, face_folder, tmp_path, caplog):
    caplog.set_level("INFO", logger="feedbackd")
    db = tmp_path / "feedback.db"
    rig = Rig(model, face_folder, db, **{"storage.retry_s": 0.1, "button.cooldown_s": 0.5, "display.thank_you_s": 0.5})
    rig.store.add(Entry("Sad", 2, 0.7, {"Sad": 0.7}, "ab", "till-3"))  # yesterday's customer
    stored = list(rig.store.rows())
    rig.steps(2)
    _break_storage(rig, db, True)
    pressed = []
    for _ in range(2):  # two customers, the same reading
        time.sleep(0.5)  # the cooldown
        rig.steps(1)  # a face seen just before the press, however slow the last step was
        pressed.append(datetime.now(UTC))
        rig.press()
        rig.steps(1)
    # after the thank-you: the next customer sees their reading, as the spare file keeps what they give;
    # the error shows for staff between customers, and once the spare has no room, to all
    now, spare = time.monotonic(), rig.daemon.spare
    assert rig.daemon.screen(now + 0.6).kind == "live"
    assert rig.daemon.screen(now + 2.5) == Screen("error", title="Storage error",
                                                  detail="entries kept on disk, retrying")
    size, spare.size = spare.size, spare.end + 1000
    assert rig.daemon.screen(now + 0.6) == Screen("error", title="Storage error",
                                                  detail="feedback not saved yet, retrying")
    spare.size = size
    assert list(rig.store.rows()) == stored  # nothing stored is touched
    time.sleep(1.1)
    _break_storage(rig, db, False)
    rig.steps(1)
    rows = list(rig.store.rows())
    assert rows[:1] == stored and len(rows) == 3 and rig.daemon.storage_error is None
    kept_records = [r for r in caplog.records if r.getMessage().startswith("entry kept in memory")]
    assert {r.levelname for r in kept_records} == {"CRITICAL"}  # journald puts these on disk at once
    kept = [json.loads(r.getMessage().split(": ", 1)[1])["utc"] for r in kept_records]
    taken = [r.getMessage().rsplit("pressed ", 1)[1] for r in caplog.records if "stored entry" in r.getMessage()]
    assert len(kept) == 2 and taken[-2:] == kept  # the journal says which kept entries the log took
    for row, at in zip(rows[1:], pressed, strict=True):  # stamped when pressed, not when the retry got through
        utc = datetime.strptime(row["utc"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs((utc - at).total_seconds()) < 0.3
    rig.close()


def _no_room_for_shm(db: Path) -> Path:
    """A stopped daemon's log on a full or read-only card: SQLite cannot make the 32 KiB -shm file a
    WAL log is opened with (here it would be made in a folder that is not there)."""
    shm = Path(f"{db}-shm")
    shm.symlink_to(db.parent / "gone" / "shm")
    return shm


def test_a_restart_on_a_full_card_takes_entries_and_stores_them_once_there_is_room(model, face_folder, tmp_path,
                                                                                   monkeypatch, caplog):
    """systemd restarts the daemon (a camera given up on, a reboot) on a card that filled up: it must
    start and keep entries in its spare file, as it did while running, not fail every 10 s."""
    db = tmp_path / "feedback.db"
    log = FeedbackLog(db)
    log.add(Entry("Sad", 2, 0.7, {"Sad": 0.7}, "ab", "till-3"))  # yesterday's customer
    log.close()
    SpareFile(beside(db)).close()  # its room taken at yesterday's start, while the card had some
    shm = _no_room_for_shm(db)
    with pytest.raises(StorageError, match="cannot open the feedback log"):  # room on the card: not a full card,
        cli.open_store(db)  # so the start stops on what is wrong
    disk = SimpleNamespace(f_flag=0, f_bavail=1, f_frsize=4096)
    statvfs = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda path: disk)
    caplog.set_level("INFO", logger="feedbackd")
    store = cli.open_store(db)
    assert "only 0.0 MiB free on its file system" in caplog.text and "starting without it" in caplog.text
    rig = Rig(model, face_folder, db, store=store, **{"storage.retry_s": 0.1})
    rig.steps(3)
    now = time.monotonic()  # the technician sees it once nobody is in front, a customer their reading
    assert rig.daemon.screen(now + 2.5).title == "Storage error" and rig.daemon.screen(now).kind == "live"
    rig.press()
    rig.steps(1)
    assert [e["emotion"] for e in waiting(beside(db))] == [rig.daemon._pending[0][0].emotion]  # on the card
    assert rig.daemon.screen(time.monotonic()).kind == "thanks" and not rig.led.state  # thanked, not stored
    shm.unlink()  # room again
    monkeypatch.setattr(os, "statvfs", statvfs)
    time.sleep(0.15)
    rig.steps(1)
    rig.close()
    log = FeedbackLog(db, create=False)
    assert [r["emotion"] for r in log.rows()][0] == "Sad" and log.count() == 2 and waiting(beside(db)) == []
    log.close()
    assert not Path(f"{db}-wal").exists()  # every connection closed, the failed opens' too: a clean stop
    shm = _no_room_for_shm(db)  # full again at the next start; then room, with no customer pressing
    monkeypatch.setattr(os, "statvfs", lambda path: disk)
    rig = Rig(model, face_folder, db, store=cli.open_store(db), **{"storage.retry_s": 0.1})
    rig.steps(2)
    assert rig.daemon.screen(time.monotonic() + 2.5).title == "Storage error"
    shm.unlink()
    time.sleep(0.15)
    rig.steps(1)
    assert rig.daemon.screen(time.monotonic()).kind == "live"  # the error clears once the log opens
    rig.close()
    db.write_bytes(b"yesterday's notes")  # not a log, on a full card: the start stops on that
    monkeypatch.setattr(os, "statvfs", lambda path: disk)
    with pytest.raises(StorageError, match="file is not a database"):
        cli.open_store(db)


def test_a_first_start_on_a_full_card_starts_without_the_log_and_leaves_no_empty_file(tmp_path, monkeypatch, capsys):
    """sqlite3.connect makes the log's file before a full card refuses its first page: the start goes on
    without the log, as a restart on a full card does, and leaves no empty file that every later start
    and command would take for "not a feedback log"."""
    db = tmp_path / "feedback.db"
    connect = sqlite3.connect

    class FullCard(sqlite3.Connection):
        def execute(self, sql, *args):
            if sql.startswith("PRAGMA journal_mode"):
                raise sqlite3.OperationalError("database or disk is full")
            return super().execute(sql, *args)

    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: connect(*a, **kw, factory=FullCard))
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_flag=0, f_bavail=1, f_frsize=4096))
    store = cli.open_store(db)
    assert store.error.startswith(f"{db}: only 0.0 MiB free on its file system")
    assert store.reopen() is not None and list(tmp_path.iterdir()) == []  # each retry too
    assert cli.main(["export", "--db", str(db)]) == 2
    assert capsys.readouterr().err == f"feedbackd: error: {db}: no feedback log here\n"
    monkeypatch.undo()  # room again
    assert store.reopen() is None
    store.close()
    assert FeedbackLog(db, create=False).schema_version == 3


@pytest.mark.parametrize("command", ["export", "summary"])
def test_a_wrong_setting_elsewhere_in_the_config_says_how_to_read_the_feedback_anyway(tmp_path, capsys, command):
    """A mistyped display pin stops the service, as it should; the owner must still get the feedback out."""
    db, config = tmp_path / "f.db", tmp_path / "config.toml"
    log = FeedbackLog(db)
    log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", "pi"), datetime(2026, 11, 30, 11, tzinfo=UTC))
    log.close()
    config.write_text(f'[storage]\npath = "{db}"\n[display]\ngpio_dc = "eight"\n')
    assert cli.main([command, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "display.gpio_dc" in err and err.rstrip().endswith(  # the log the config names
        f"(to read the feedback meanwhile, without the config: feedbackd {command} --config /dev/null "
        f"--db {db}" + (', its ratings and "Not sure" counts then by the default settings)'
                        if command == "summary" else ")"))
    assert cli.main([command, "--config", "/dev/null", "--db", str(db)]) == 0  # as it says, with this log
    assert "Happy" in capsys.readouterr().out
    assert cli.main(["check", "--config", str(config)]) == 2 and "meanwhile" not in capsys.readouterr().err


def test_reports_read_a_stopped_log_on_a_full_card(tmp_path, capsys, monkeypatch):
    """The owner exports before the card is replaced: every entry is in the main file once the daemon
    stopped, and check names the card, not a disk I/O error."""
    db = tmp_path / "f.db"
    log = FeedbackLog(db)
    log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", "pi"), datetime(2026, 11, 30, 11, tzinfo=UTC))
    log.close()
    _no_room_for_shm(db)
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_flag=0, f_bavail=1, f_frsize=4096))
    assert cli.main(["export", "--db", str(db)]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("2026-11-30,")
    assert cli.main(["summary", "--db", str(db)]) == 0 and "Happy" in capsys.readouterr().out
    check = ["check", "--db", str(db), *(f"--skip={p}" for p in cli.CHECK_PARTS if p != "storage")]
    assert cli.main(check) == 1
    assert f"FAIL storage        {db}: only 0.0 MiB free on its file system" in capsys.readouterr().out
    Path(f"{db}-wal").write_bytes(b"newer entries")  # a -wal file may hold entries the main file lacks:
    assert cli.main(["export", "--db", str(db)]) == 2  # not read past
    assert "cannot open the feedback log" in capsys.readouterr().err


def test_under_systemd_each_log_line_carries_its_journal_priority():
    from device.cli import JournalFormatter

    fmt = JournalFormatter("%(levelname)s %(message)s")
    lines = [fmt.format(logging.LogRecord("feedbackd", level, __file__, 1, "kept", None, None))
             for level in (logging.INFO, logging.ERROR, logging.CRITICAL)]
    assert lines == ["<6>INFO kept", "<3>ERROR kept", "<2>CRITICAL kept"]


def test_the_journal_is_told_apart_from_a_terminal_that_inherited_its_variable(tmp_path, monkeypatch):
    from device.cli import to_journal

    with open(tmp_path / "stream", "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert to_journal()
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")  # another stream: a shell's
        assert not to_journal()
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not to_journal()


def blinks(led, due: int) -> int:
    """The mock LED pin's blinks so far, once `due` of them ended (none due: after as long as two take)."""
    deadline = time.monotonic() + (5 if due else 0.7)
    while time.monotonic() < deadline:
        states = [state for _, state in led.states]
        if due and states.count(1) >= due and states[-1] == 0:
            time.sleep(0.3)  # and no more
            break
        time.sleep(0.01)
    return [state for _, state in led.states].count(1)


def test_the_led_blinks_only_when_an_entry_is_stored(model, face_folder, empty_folder, tmp_path):
    db = tmp_path / "feedback.db"
    rig = Rig(model, empty_folder, db,
              **{"storage.retry_s": 60.0, "button.cooldown_s": 0.5, "display.thank_you_s": 0.5})
    rig.steps(2)
    rig.press()  # no face
    rig.steps(1)
    rig.daemon.source = ImageSource(str(face_folder), fps=30)
    rig.steps(2)
    _break_storage(rig, db, True)
    rig.press()  # the write fails
    before = time.monotonic()
    rig.steps(1)
    after = time.monotonic()
    assert rig.store.count() == 0 and blinks(rig.led, 0) == 0
    assert rig.daemon.screen(before + 0.4).kind == "thanks"  # kept: the customer need not press again
    assert rig.daemon.screen(after + 2.5).title == "Storage error"  # then, for staff, once nobody is in front
    _break_storage(rig, db, False)
    rig.steps(1)  # the next customer, seen
    rig.press()  # long before the retry is due: the kept entry goes first, then this one
    rig.steps(1)
    assert rig.store.count() == 2 and blinks(rig.led, 2) == 2  # one acknowledgement, this customer's
    first, second = rig.store.rows()
    assert first["utc"] < second["utc"]  # ids follow press order
    rig.close()

def no_spare_file(path: Path, *args, **kwargs):
    """A card remounted read-only before the spare file was first made: none can be."""
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))


def test_an_entry_the_log_cannot_take_survives_a_power_cut_in_the_spare_file(model, face_folder, tmp_path, caplog):
    """A full SD card fails the log's write, and Raspberry Pi OS keeps the journal in memory: the
    kept entry is on the disk, in room taken at start-up, before the customer is thanked."""
    db, spare = tmp_path / "feedback.db", tmp_path / "feedback.db.spare"
    rig = Rig(model, face_folder, db)
    assert spare.read_bytes() == bytes(SIZE)  # the room, taken while there is some
    rig.steps(2)
    _break_storage(rig, db, True)
    rig.press()
    rig.steps(1)
    [kept] = [json.loads(r.getMessage().split(": ", 1)[1]) for r in caplog.records
              if r.getMessage().startswith("entry kept in memory")]
    assert json.loads(spare.read_bytes().split(b"\0", 1)[0]) == kept and rig.store.count() == 0
    rig.close()  # the power is cut: no last try, nothing to the journal
    os.chmod(db, 0o644)  # (a file this user cannot write stops the start; a full card does not)
    rig = Rig(model, face_folder, db)  # back on, the card still full: the kept entry stays in the spare,
    _break_storage(rig, db, True)  # and the next customer's joins it
    rig.steps(2)
    rig.press()
    rig.steps(1)
    rig.close()  # cut again; the card is freed later
    os.chmod(db, 0o644)
    rig = Rig(model, face_folder, db)
    rig.steps(1)
    row, _ = rig.store.rows()
    pressed = datetime.fromisoformat(kept["utc"])
    assert (row["emotion"], json.loads(row["probabilities"]), row["utc"]) == (
        kept["emotion"], {k: round(v, 4) for k, v in kept["probabilities"].items()},  # as the log rounds them
        pressed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))  # stamped when pressed, before the power cut
    assert spare.read_bytes() == bytes(SIZE)  # in the log now: the room is free again
    rig.close()
    # a power cut after the log took it but before the spare was cleared: stored once, not twice,
    # whatever offset the line writes the time with (edited by hand, another version's)
    elsewhere = dict(kept, utc=pressed.astimezone(timezone(timedelta(hours=1))).isoformat())
    spare.write_bytes("".join(json.dumps(e) + "\n" for e in (kept, elsewhere)).encode().ljust(SIZE, b"\0"))
    rig = Rig(model, face_folder, db)
    rig.steps(1)
    assert rig.store.count() == 2 and spare.read_bytes() == bytes(SIZE)
    rig.close()
    # lines the log would fail on (edited by hand, another version's) neither stop the daemon nor
    # hold up the entry behind them
    later = dict(kept, utc=(pressed + timedelta(minutes=1)).isoformat())
    bad = [dict(later, rating="5"), dict(later, emotion=None), dict(later, probabilities=None),
           dict(later, utc=later["utc"][:-6]), dict(later, utc="0001-01-01T00:00:00+14:00"),  # no zone; year 0 in UTC
           dict(later, rating=10**400)]
    spare.write_bytes("".join(json.dumps(e) + "\n" for e in [*bad, later]).encode().ljust(SIZE, b"\0"))
    rig = Rig(model, face_folder, db)
    rig.steps(1)
    assert rig.store.count() == 3 and rig.daemon.storage_error is None and spare.read_bytes() == bytes(SIZE)
    assert caplog.text.count("an entry that cannot be read") == 6
    rig.close()


def test_without_a_spare_file_an_entry_the_log_refuses_is_kept_in_memory_and_shown_not_saved(
        model, face_folder, tmp_path, monkeypatch, caplog):
    """A card remounted read-only at start-up: no spare file can be made. The kiosk runs on, an
    entry the log cannot take is kept in memory and the journal, and, since a power cut would lose
    it, the screen says it was not saved rather than thanking the customer."""
    from device import daemon as D

    monkeypatch.setattr(D, "SpareFile", no_spare_file)
    caplog.set_level("INFO", logger="feedbackd")
    db = tmp_path / "feedback.db"
    rig = Rig(model, face_folder, db, **{"storage.retry_s": 0.1})
    assert rig.daemon.spare is None
    [warning] = [r for r in caplog.records if "no spare file" in r.getMessage()]
    assert warning.levelname == "WARNING" and os.strerror(errno.EROFS) in warning.getMessage()
    rig.steps(2)
    _break_storage(rig, db, True)
    rig.press()
    rig.steps(1)
    [kept] = [r for r in caplog.records if r.getMessage().startswith("entry kept in memory")]
    assert kept.levelname == "CRITICAL" and rig.store.count() == 0
    assert rig.daemon.screen(time.monotonic()).title == "Not saved"
    assert rig.screen.image.tobytes() == render(rig.daemon.screen(time.monotonic()), (128, 64), "1").tobytes()
    assert not beside(db).exists()
    _break_storage(rig, db, False)
    time.sleep(0.2)  # the retry is due
    rig.steps(1)
    [row] = rig.store.rows()
    assert row["utc"] == datetime.fromisoformat(json.loads(kept.getMessage().split(": ", 1)[1])["utc"]).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ") and rig.daemon.storage_error is None
    rig.close()


def mock_button() -> GpioButton:
    """The real button on gpiozero's mock pins (as the Rig's), for a daemon run without camera,
    detector or model: the press on BCM 17, the LED on 27."""
    from gpiozero.pins.mock import MockFactory

    return GpioButton(17, pull_up=True, bounce_s=0, led_pin=27, pin_factory=MockFactory())


def bare_daemon(store) -> tuple[Daemon, GpioButton]:
    """The daemon's presses, log and spare file alone: no camera, detector, model or display."""
    classifier = SimpleNamespace(manifest=SimpleNamespace(display_names=DISPLAY_NAMES), path=Path("m"), sha256="ab")
    button = mock_button()
    return Daemon(load_config(None), None, None, classifier, None, button, store, device_id="till-3"), button


def press(daemon: Daemon, button: GpioButton, at: float, emotion: str = "Happy") -> None:
    """A customer showing `emotion` presses at `at` (monotonic seconds), and the daemon handles it."""
    daemon.smoother.add(at, np.eye(len(DISPLAY_NAMES))[DISPLAY_NAMES.index(emotion)])
    daemon._shown.append((at, "live", daemon.smoother.reading(at)))  # and the screen shows it
    with pytest.MonkeyPatch.context() as clock:
        clock.setattr(time, "monotonic", lambda: at)  # the button notes the pin's edge at `at`
        button.button.pin.drive_low()
        button.button.pin.drive_high()
    daemon._handle_presses()


class FullLog:
    """A log on a full card: it refuses every entry, and holds none."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, entry: Entry, now: datetime | None = None) -> int:
        raise StorageError(f"{self.path}: cannot store the entry: database or disk is full")

    def contains(self, at: datetime, device_id: str) -> bool:
        return False


def kept_on_a_full_card(db: Path, n: int) -> None:
    """`n` entries pressed and thanked while the log's card was full: they wait in its spare file."""
    daemon, button = bare_daemon(FullLog(db))
    start = time.monotonic()
    for i in range(n):
        press(daemon, button, start + 10 * i)
    daemon.close()


def nearly_full_card(monkeypatch, free: list[int]) -> None:
    """A card with `free[0]` bytes free: statvfs says so, and a write past a file's end takes only what is left."""
    pwrite = os.pwrite

    def write(fd: int, data: bytes, at: int) -> int:
        size = os.fstat(fd).st_size
        allowed = max(0, len(data) - max(0, at + len(data) - max(size, at) - free[0]))
        free[0] -= max(0, at + allowed - max(size, at))
        return pwrite(fd, data[:allowed], at)

    monkeypatch.setattr(os, "pwrite", write)
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_flag=0, f_bavail=free[0] // 4096, f_frsize=4096))


def test_a_first_start_on_a_nearly_full_card_leaves_the_log_its_room(tmp_path, monkeypatch, caplog):
    """A new spare file that took the card's last free space would leave the log failing too, every entry
    then lost at a power cut: it grows only into the free space past the log's, and keeps no room it
    does not use."""
    path, free = tmp_path / "feedback.db.spare", [200 * 1024]
    nearly_full_card(monkeypatch, free)
    spare = SpareFile(path)
    assert free == [200 * 1024] and path.stat().st_size == 0 and spare.refused and not spare.append('{"a": 1}')
    assert "no room for it on its card" in caplog.text
    spare.close()
    free[0] = cli.spare.LOG_ROOM + 100 * 1024 + 1000  # room for some: it takes that, block by block
    spare = SpareFile(path)
    assert free == [cli.spare.LOG_ROOM + 1000] and spare.size == path.stat().st_size == 100 * 1024
    assert not spare.refused and spare.append('{"a": 1}') and waiting(path) == [{"a": 1}]
    assert "no room to grow it" in caplog.text
    spare.close()
    free[0] = 0  # the card fuller at the next start: it keeps its room and its line
    spare = SpareFile(path)
    assert spare.size == 100 * 1024 and spare.lines == ['{"a": 1}'] and not spare.refused
    spare.close()
    path.unlink()
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_flag=0, f_bavail=2**20, f_frsize=4096))
    free[0] = 300 * 1024  # statvfs says more than the card has: what it took is given back
    spare = SpareFile(path)
    assert spare.refused and path.stat().st_size == 0 and path.stat().st_blocks == 0


def test_days_of_entries_a_full_card_refuses_wait_in_the_spare_file_and_are_all_stored_later(tmp_path):
    """Each entry is on the disk before its customer is thanked, hundreds past the 150 a 64 KiB
    spare file held: none is in memory only, and the next start, with room, stores them all."""
    db = tmp_path / "feedback.db"
    daemon, button = bare_daemon(FullLog(db))
    start = time.monotonic()
    for i in range(400):  # each after the last one's cooldown
        press(daemon, button, start + 10 * i)
        assert daemon.screen(start + 10 * i).kind == "thanks"
    daemon.close()  # the power is cut
    store = FeedbackLog(db)
    daemon, _ = bare_daemon(store)
    daemon._store_pending(time.monotonic())
    assert store.count() == 400 and beside(db).read_bytes() == bytes(SIZE)
    daemon.close()
    store.close()


def test_a_backlog_is_stored_a_little_each_pass_and_feeds_the_watchdog(tmp_path, monkeypatch, caplog):
    """Thousands of spare entries take minutes of synced commits on an SD card: stored in one pass,
    the screen froze and systemd's watchdog killed the daemon before the backlog was in."""
    import device.daemon as D

    db = tmp_path / "feedback.db"
    daemon, button = bare_daemon(FullLog(db))
    start = time.monotonic()
    for i in range(5):
        press(daemon, button, start + 10 * i)
    daemon.close()
    store = FeedbackLog(db)
    daemon, _ = bare_daemon(store)
    pings = []
    daemon.notifier = SimpleNamespace(watchdog_s=15.0, watchdog=lambda: pings.append(store.count()))
    monkeypatch.setattr(D, "DRAIN_S", 0.0)  # each pass's time is spent once it has stored one
    for n in range(1, 4):
        daemon._retry_pending()
        assert store.count() == n and pings == list(range(1, n + 1))
    caplog.clear()
    caplog.set_level(logging.INFO)
    press(daemon, daemon.button, time.monotonic())  # a customer meanwhile: thanked at once, not after the backlog
    assert store.count() == 3 and daemon.screen(time.monotonic()).kind == "thanks"  # none stored first
    assert "entry waits in the spare file while the log takes the 2 before it" in caplog.text  # 3 of 5 in
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # nothing is wrong with the log
    for n in range(4, 7):
        daemon._retry_pending()
        assert store.count() == n
    assert beside(db).read_bytes() == bytes(SIZE)  # all in the log: the spare file is cleared
    daemon.close()
    store.close()


def test_a_press_behind_a_slow_backlog_is_thanked_on_its_own_pass_for_the_whole_thank_you(tmp_path, monkeypatch):
    """On an SD card a backlog takes a second's worth of synced commits a pass: the press's pass stored
    that much before its entry, and the retry after it as much again, so "Thank you!" came 2-3 s late
    and, timed from the store, was up for about a second."""
    import device.daemon as D

    db = tmp_path / "feedback.db"
    kept_on_a_full_card(db, 8)
    clock = moved_clock(monkeypatch, D)

    class SlowLog(FeedbackLog):
        def add(self, entry: Entry, now: datetime | None = None) -> int:
            clock[0] += 0.4  # a synced commit on a slow card
            return super().add(entry, now)

    store = SlowLog(db)
    daemon, button = bare_daemon(store)
    monkeypatch.setitem(daemon.cfg["button"], "cooldown_s", 0.5)  # the thank-you's own time is what lasts
    drawn = []
    daemon.source = SimpleNamespace(read=lambda: None, error=None)  # the faces are added below
    daemon.display = SimpleNamespace(show=lambda screen: drawn.append((clock[0], screen.kind)))
    happy = np.eye(len(DISPLAY_NAMES))[DISPLAY_NAMES.index("Happy")]
    daemon.smoother.add(clock[0], happy)
    daemon.step()  # a second's worth of the backlog, then the customer's reading
    assert store.count() == 3 and drawn[-1] == (pytest.approx(101.2), "live")
    daemon.smoother.add(clock[0], happy)
    button.button.pin.drive_low()
    button.button.pin.drive_high()
    pressed = clock[0]
    daemon.step()
    assert drawn[-1] == (pressed, "thanks") and store.count() == 3  # at once: the backlog waits a pass
    thank_you_s = daemon.cfg["display"]["thank_you_s"]
    assert daemon.screen(pressed + thank_you_s - 0.05).kind == "thanks"
    assert daemon.screen(pressed + thank_you_s + 0.05).kind != "thanks"
    daemon.step()
    daemon.step()  # the backlog goes on, the press's entry in its turn
    assert store.count() == 9 and [r["emotion"] for r in store.rows()] == ["Happy"] * 9
    assert beside(db).read_bytes() == bytes(SIZE)
    monkeypatch.undo()
    daemon.close()
    store.close()


def test_a_button_pressed_on_every_pass_with_no_face_holds_no_backlog_back(tmp_path, monkeypatch):
    """Only a thanked press puts the backlog off a pass: a button bouncing (or wet) with nobody in front,
    refused on every pass, held back every retry, and the kept entries never reached the log."""
    import device.daemon as D

    db = tmp_path / "feedback.db"
    kept_on_a_full_card(db, 3)
    clock = moved_clock(monkeypatch, D)
    store = FeedbackLog(db)
    daemon, button = bare_daemon(store)
    daemon.source = SimpleNamespace(read=lambda: None, error=None)
    daemon.display = SimpleNamespace(show=lambda screen: None)
    for _ in range(3):
        clock[0] += 0.5
        button.button.pin.drive_low()
        button.button.pin.drive_high()
        daemon.step()
        assert daemon.screen(clock[0]).kind == "no_face"
    assert store.count() == 3
    monkeypatch.undo()
    daemon.close()
    store.close()


def test_the_stats_line_times_each_stage_over_the_frames_that_went_through_it(tmp_path, monkeypatch):
    """Capture and render were added at every pass but divided by the passes with a new frame only: a
    loop that outruns the camera (LatestFrame hands each frame out once) read as a slow display."""
    import device.daemon as D

    store = FeedbackLog(tmp_path / "feedback.db")
    daemon, _ = bare_daemon(store)
    clock = moved_clock(monkeypatch, D)
    frames = iter([np.zeros((48, 48, 3), np.uint8), None, None])
    daemon.source = SimpleNamespace(read=lambda: next(frames), error=None)
    daemon.finder = SimpleNamespace(find=lambda frame: None, release=lambda face: None)  # nobody in view
    daemon.display = SimpleNamespace(show=lambda screen: clock.__setitem__(0, clock[0] + 0.01))  # 10 ms a draw
    for _ in range(3):
        daemon.step()
    assert daemon.stats.frames == 1 and "render 10.0ms" in daemon.stats.line()
    monkeypatch.undo()
    daemon.close()
    store.close()


def test_a_card_that_stays_full_is_reported_once_per_reason_not_at_every_retry(tmp_path, monkeypatch, caplog):
    """A retry every storage.retry_s (5 s) logged the same error each time, 720 lines an hour, pushing
    the CRITICAL lines of the entries kept out of the journal Raspberry Pi OS keeps in memory."""
    import device.daemon as D

    db = tmp_path / "feedback.db"
    log = FullLog(db)
    daemon, button = bare_daemon(log)
    clock = moved_clock(monkeypatch, D)
    caplog.set_level(logging.INFO, logger="feedbackd")
    press(daemon, button, clock[0])

    def retry_for(seconds: float) -> list[str]:
        caplog.clear()
        end = clock[0] + seconds
        while clock[0] < end:
            clock[0] += daemon.cfg["storage"]["retry_s"]
            daemon._retry_pending()
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]

    said = retry_for(2 * D.STILL_FAILING_S)  # 1440 retries: the reason was said at the press
    assert said == [f"{daemon.storage_error} (still failing, entries waiting: 1)"] * 2  # hourly
    monkeypatch.setattr(log, "add", lambda *_: (_ for _ in ()).throw(StorageError("read-only file system")))
    said = retry_for(60)
    assert len(said) == 1 and said[0].startswith("read-only file system (kept in memory")  # a new reason: once
    monkeypatch.undo()
    daemon.close()


def test_a_stop_behind_a_long_backlog_stores_it_only_until_systemd_would_kill_it(tmp_path, monkeypatch, caplog):
    """Thousands of entries kept while the card was full take minutes to store: a stop that stored
    them all was killed by systemd mid-way, before the journal said where the rest are."""
    import device.daemon as D

    db = tmp_path / "feedback.db"
    daemon, button = bare_daemon(FullLog(db))
    for i in range(3):
        press(daemon, button, time.monotonic() + 10 * i)
    daemon.close()  # the card is full until the power is cut
    store = FeedbackLog(db)
    daemon, button = bare_daemon(store)
    monkeypatch.setattr(D, "STOP_DRAIN_S", 0.0)  # a slow card: the stop has time for one
    daemon.flush_pending()
    kept = [r.getMessage() for r in caplog.records if "for the next start (not to restore by hand)" in r.getMessage()]
    assert store.count() == 1 and len(kept) == 2 and len(waiting(beside(db))) == 3  # the next start restores 2
    daemon.close()
    store.close()
    monkeypatch.setattr(D, "SpareFile", functools.partial(SpareFile, size=4096))  # full in a few entries
    for stop_s, stored in ((6.0, 2), (0.0, 0)):  # those only in memory: past the spare's budget, not the kill
        monkeypatch.setattr(D, "STOP_S", stop_s)
        beside(db).unlink()
        db.unlink()
        daemon, button = bare_daemon(FullLog(db))
        start, n = time.monotonic(), 0
        while daemon.screen(start + 10 * n).kind == "thanks" or not n:  # until one finds the spare file full
            n += 1
            press(daemon, button, start + 10 * n)
        press(daemon, button, start + 10 * n + 10, "Sad")  # in memory only too
        daemon.store = store = FeedbackLog(db)  # staff freed room just before the stop
        caplog.clear()
        daemon.flush_pending()
        assert store.count() == 1 + stored and ([r["emotion"] for r in store.rows()][-1] == "Sad") == bool(stored)
        lost = [r for r in caplog.records if r.levelno == logging.CRITICAL and "not stored" in r.getMessage()]
        assert len(lost) == 2 - stored  # the journal names each one left, before systemd's kill
        daemon.close()
        store.close()


def test_a_stop_finds_a_restored_entry_in_the_spare_file_whatever_offset_its_line_writes(tmp_path, caplog):
    """A line written with "Z" (by hand, by another version) is restored at the start; at the stop
    it was not found by its text, and the journal sent a technician to restore it by hand."""
    db = tmp_path / "feedback.db"
    daemon, button = bare_daemon(FullLog(db))
    press(daemon, button, time.monotonic())
    daemon.close()
    [line] = waiting(beside(db))
    zulu = datetime.fromisoformat(line["utc"]).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    beside(db).write_bytes((json.dumps({**line, "utc": zulu}) + "\n").encode().ljust(SIZE, b"\0"))
    daemon, _ = bare_daemon(FullLog(db))
    caplog.clear()
    daemon.flush_pending()
    assert "for the next start (not to restore by hand)" in caplog.text
    assert not [r for r in caplog.records if r.levelno == logging.CRITICAL]
    daemon.close()


def test_a_press_behind_a_backlog_that_fills_the_spare_file_is_stored_not_held_in_memory(tmp_path, monkeypatch):
    """The spare file stays full until the log has taken its whole backlog: a press then had no room
    there, was held in memory only (lost at a power cut) and shown "Not saved" by a log that works."""
    import device.daemon as D

    monkeypatch.setattr(D, "SpareFile", functools.partial(SpareFile, size=4096))  # full in a few entries
    db = tmp_path / "feedback.db"
    daemon, button = bare_daemon(FullLog(db))
    start, kept = time.monotonic(), 0
    while daemon.screen(start + 10 * kept).kind == "thanks" or not kept:  # until one finds the spare file full
        kept += 1
        press(daemon, button, start + 10 * kept)
    kept -= 1  # the last, shown "Not saved", was in memory only
    daemon.close()  # the power is cut
    store = FeedbackLog(db)
    daemon, button = bare_daemon(store)
    monkeypatch.setattr(D, "DRAIN_S", 0.0)  # a slow card: each pass stores one
    daemon._retry_pending()
    assert store.count() == 1 and len(daemon._pending) == kept - 1
    press(daemon, button, time.monotonic(), emotion="Sad")
    assert store.count() == kept + 1 and daemon.screen(time.monotonic()).kind == "thanks"  # on the disk, in order
    assert [r["emotion"] for r in store.rows()][-1] == "Sad"
    daemon.close()
    store.close()


def test_an_entry_in_memory_only_is_not_thanked_and_its_failed_spare_write_is_tried_again(tmp_path, monkeypatch):
    """An entry neither the log nor the spare file took is lost at a power cut: the customer and
    staff see "Not saved", not the thanks. A spare write that failed is tried again with the log's
    retries and at the stop, not only before the next entry the log refuses."""
    from device import daemon as D

    db = tmp_path / "feedback.db"
    daemon, button = bare_daemon(FullLog(db))
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: 0)  # the card fails the spare's write
    press(daemon, button, now := time.monotonic())
    monkeypatch.undo()
    assert daemon.screen(now).title == "Not saved" and waiting(beside(db)) == []
    daemon._retry_at = 0.0
    daemon._retry_pending()
    assert [e["emotion"] for e in waiting(beside(db))] == ["Happy"]  # on the disk now
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: 0)
    press(daemon, button, now + 10, "Sad")
    monkeypatch.undo()
    daemon.flush_pending()  # the service stops
    assert [e["emotion"] for e in waiting(beside(db))] == ["Happy", "Sad"]
    daemon.close()
    monkeypatch.setattr(D, "SpareFile", no_spare_file)
    daemon, button = bare_daemon(FullLog(db))
    press(daemon, button, now)
    assert daemon.spare is None and daemon.screen(now).title == "Not saved"


def test_not_saved_turns_to_the_thanks_once_a_retry_keeps_the_entry_while_it_shows(tmp_path, monkeypatch):
    """"Not saved" still up once a retry got the entry to the disk would invite a second press, and
    a second entry: the thanks that press would have had replaces it, until the same time. The LED
    blinks only for an entry the log took, as at a press."""
    db = tmp_path / "feedback.db"
    store = FeedbackLog(db)
    store.db.execute("PRAGMA query_only = ON")  # a full card: the log refuses the entry
    daemon, button = bare_daemon(store)
    led = button.led.pin
    start = time.monotonic()
    for emotion, room in (("Happy", False), ("Sad", True)):  # the spare's write works again, then the log's
        monkeypatch.setattr(os, "pwrite", lambda fd, data, at: 0)  # and the card fails the spare's write
        press(daemon, button, now := start + 10 * room, emotion)
        monkeypatch.undo()
        until = daemon._thanks[0]
        assert daemon.screen(now).title == "Not saved" and not led.states[1:]  # the LED not lit since set up
        store.db.execute(f"PRAGMA query_only = {'OFF' if room else 'ON'}")
        daemon._retry_at = 0.0
        daemon._retry_pending()
        rating = load_config(None)["rating"]
        assert daemon.screen(now) == Screen("thanks", emotion, rating["map"][emotion], rating["max"])
        assert daemon._thanks[0] == until and blinks(led, 2 * room) == 2 * room  # one blink (two flashes), once stored
    assert [r["emotion"] for r in store.rows()] == ["Happy", "Sad"] and waiting(beside(db)) == []
    daemon.close()
    store.close()


def test_a_log_that_cannot_say_what_it_holds_still_leaves_the_spare_file_open(tmp_path, monkeypatch, caplog):
    """A damaged index fails the start-up check of which kept entries the log has: those stay in
    the spare, tried again with the pending entries, and an entry the log refuses meanwhile still
    goes to the disk after them, not to memory only. Each reaches the log once."""
    db, path = tmp_path / "feedback.db", tmp_path / "feedback.db.spare"
    earlier = datetime(2026, 11, 30, 12, tzinfo=UTC)
    kept = entry_json(Entry("Sad", 2, 0.7, {"Sad": 0.7}, "ab", "till-3"), earlier)
    path.write_bytes(f"{kept}\n".encode().ljust(SIZE, b"\0"))

    def start() -> tuple[Daemon, FeedbackLog, GpioButton]:
        store = FeedbackLog(db)
        daemon, button = bare_daemon(store)
        return daemon, store, button

    def unreadable(*_):
        raise StorageError(f"{db}: cannot read the log: database disk image is malformed")

    monkeypatch.setattr(FeedbackLog, "contains", unreadable)
    daemon, store, button = start()
    assert "not restored yet, the log cannot tell which entries it holds" in caplog.text and daemon.spare
    store.db.execute("PRAGMA query_only = ON")  # and the card is full: the next customer's entry is refused
    press(daemon, button, time.monotonic())
    assert store.count() == 0
    assert [json.loads(line)["emotion"] for line in path.read_bytes().split(b"\0", 1)[0].splitlines()] == [
        "Sad", "Happy"]  # on the disk: a power cut now loses neither
    store.db.execute("PRAGMA query_only = OFF")  # room again: the log takes the new entry
    daemon._store_pending(time.monotonic())
    assert [r["emotion"] for r in store.rows()] == ["Happy"]
    assert path.read_bytes().startswith(kept.encode())  # the one not yet restored is still kept
    monkeypatch.undo()  # the index repaired: the next retry, not the next start, restores the kept entry
    daemon._retry_at = 0.0
    daemon._retry_pending()
    assert sorted(r["emotion"] for r in store.rows()) == ["Happy", "Sad"] and path.read_bytes() == bytes(SIZE)
    daemon.close()
    store.close()
    path.write_bytes(f"{kept}\n".encode().ljust(SIZE, b"\0"))  # cleared just before a power cut: once still
    daemon, store, _ = start()
    assert store.count() == 2 and not daemon._pending and path.read_bytes() == bytes(SIZE)
    daemon.close()
    store.close()


def test_a_spare_line_no_start_can_restore_is_kept_for_a_technician_not_cleared_away(tmp_path, capsys):
    """A byte a failing card flipped in an entry the customer was thanked for: the spare file was its
    only copy (the journal lives in memory), and the clearing after the restore erased it."""
    db, path = tmp_path / "feedback.db", tmp_path / "feedback.db.spare"
    at = datetime(2026, 11, 30, 12, tzinfo=UTC)
    lines = [entry_json(Entry(e, 3, 0.7, {e: 0.7}, "ab", "till-3"), at + timedelta(minutes=i))
             for i, e in enumerate(("Sad", "Happy", "Neutral"))]
    flipped = lines[0].replace('"emotion"', '"emotion\x01', 1)  # no longer JSON
    bad_field = lines[1].replace('"rating": 3', '"rating": "3"')  # JSON, but no entry
    spare_bytes = "".join(f"{line}\n" for line in (flipped, bad_field, lines[2])).encode().ljust(SIZE, b"\0")
    path.write_bytes(spare_bytes)
    (tmp_path / "feedback.db.spare.rejected").mkdir()  # it cannot be written: the spare is the only copy
    store = FeedbackLog(db)
    daemon, _ = bare_daemon(store)
    daemon._store_pending(time.monotonic())
    assert [r["emotion"] for r in store.rows()] == ["Neutral"] and path.read_bytes() == spare_bytes
    (tmp_path / "feedback.db.spare.rejected").rmdir()
    (tmp_path / "feedback.db.spare.rejected").write_text('{"cut sh')  # an earlier append a power cut ended
    daemon._store_pending(time.monotonic())  # the next clearing tries again, in the same run
    daemon.close()
    assert path.read_bytes() == bytes(SIZE)
    path.write_bytes(spare_bytes)  # a clearing the power cut before it reached the disk
    daemon, _ = bare_daemon(store)
    daemon._store_pending(time.monotonic())
    daemon.close()
    aside = (tmp_path / "feedback.db.spare.rejected").read_text().splitlines()
    assert store.count() == 1 and path.read_bytes() == bytes(SIZE)
    assert aside[1:] == [flipped, json.dumps(json.loads(bad_field))]  # each once, none run together
    store.close()
    check = ["check", "--db", str(db), *(f"--skip={p}" for p in cli.CHECK_PARTS if p != "storage")]
    assert cli.main(check) == 0
    assert f"3 lines no start could restore are in {path}.rejected: check whether the export" in capsys.readouterr().out


def test_a_spare_line_with_text_sqlite_cannot_encode_is_left_out_and_the_lines_after_it_are_stored(
        tmp_path, caplog):
    """A lone surrogate escape ("\\ud800") in a hand-edited line is valid JSON but no UTF-8: SQLite
    would fail on it with an error the daemon does not expect, and systemd restart it forever."""
    db, path = tmp_path / "feedback.db", tmp_path / "feedback.db.spare"
    at = datetime(2026, 11, 30, 12, tzinfo=UTC)
    good = Entry("Sad", 2, 0.7, {"Sad": 0.7}, "ab", "till-3")
    bad = [replace(good, **{key: "Sad\ud800"}) for key in ("emotion", "device_id", "model_sha256")]
    lines = [entry_json(e, at + timedelta(minutes=i)) for i, e in enumerate([*bad, good])]
    path.write_bytes("".join(f"{line}\n" for line in lines).encode().ljust(SIZE, b"\0"))
    store = FeedbackLog(db)
    daemon, _ = bare_daemon(store)
    daemon._store_pending(time.monotonic())
    assert [(r["emotion"], r["device_id"]) for r in store.rows()] == [("Sad", "till-3")]
    assert caplog.text.count("an entry that cannot be read") == 3 and path.read_bytes() == bytes(SIZE)
    daemon.close()
    store.close()


def test_spare_lines_the_log_cannot_place_yet_are_reported_once_not_at_every_retry(tmp_path, monkeypatch, caplog):
    """While the log cannot say which of the spare's entries it holds, the spare is read again at each
    retry (every 5 s) and press: the journal must not repeat the same lines each time."""
    db, path = tmp_path / "feedback.db", tmp_path / "feedback.db.spare"
    at = datetime(2026, 11, 30, 12, tzinfo=UTC)
    good = [entry_json(Entry(e, 3, 0.7, {e: 0.7}, "ab", "till-3"), at + timedelta(minutes=i))
            for i, e in enumerate(("Sad", "Happy"))]
    cut, bad = good[1][:40], good[0].replace('"rating": 3', '"rating": "3"')  # a power cut; a hand edit
    path.write_bytes("".join(f"{line}\n" for line in (cut, bad, *good)).encode().ljust(SIZE, b"\0"))

    def contains(self, when: datetime, device_id: str) -> bool:  # the first is looked up, the second fails
        if when > at:
            raise StorageError(f"{db}: cannot read the log: database disk image is malformed")
        return False

    monkeypatch.setattr(FeedbackLog, "contains", contains)
    store = FeedbackLog(db)
    daemon, _ = bare_daemon(store)
    for _ in range(3):  # the retries
        daemon._retry_at = 0.0
        daemon._retry_pending()
    said = {m: caplog.text.count(m) for m in ("a line cut short", "an entry that cannot be read",
                                              "restoring an entry", "not restored yet")}
    assert said == {"a line cut short": 1, "an entry that cannot be read": 1, "restoring an entry": 0,
                    "not restored yet": 1} and store.count() == 0
    monkeypatch.undo()  # the index repaired: each restored entry is said once, as it is restored
    daemon._retry_at = 0.0
    daemon._retry_pending()
    assert caplog.text.count("restoring an entry") == 2 and store.count() == 2 and path.read_bytes() == bytes(SIZE)
    assert caplog.text.count("a line cut short") == caplog.text.count("an entry that cannot be read") == 1
    daemon.close()
    store.close()


def test_a_press_stores_only_a_reading_the_screen_showed(tmp_path, monkeypatch):
    """README: a press stores the reading the screen showed at it. Under "No face - try again" or an
    error screen the reading is not on it: a press then stores nothing, as one without a face."""
    store = FeedbackLog(tmp_path / "feedback.db")
    daemon, button = bare_daemon(store)
    daemon.source = SimpleNamespace(read=lambda: None, error=None)  # no frame: the faces are added below
    daemon.display = SimpleNamespace(show=lambda screen: None)
    happy = np.eye(len(DISPLAY_NAMES))[DISPLAY_NAMES.index("Happy")]

    def press_under(kind: str, title: str = "") -> None:
        daemon.smoother.add(time.monotonic(), happy)  # a face, seen just now
        if kind == "no_face":  # a press without a face was refused just after it was seen
            daemon._no_face = (time.monotonic(), time.monotonic() + 60)
        daemon.step()
        assert (daemon.screen(time.monotonic()).kind, daemon.screen(time.monotonic()).title) == (kind, title)
        before = store.count() + len(daemon._pending)
        button.button.pin.drive_low()
        button.button.pin.drive_high()
        daemon._handle_presses()
        taken = kind == "live" or title == "Storage error"  # there kept in memory, answered "Not saved"
        assert store.count() + len(daemon._pending) - before == taken
        daemon._thanks, daemon._last_accepted = None, -1e9  # the next press at once, not after the thanks
        if title == "Camera error":  # not "No face": the error is what stops the press, and it stays up
            assert daemon.screen(time.monotonic()).title == title

    press_under("no_face")
    daemon.smoother.add(time.monotonic(), happy)  # seen again: the reading is back on the screen
    assert daemon.screen(time.monotonic()).kind == "live"
    daemon._no_face = (0.0, 0.0)
    daemon.source.error = "camera 0: unplugged"
    press_under("error", "Camera error")
    daemon.source.error = None
    daemon.storage_error = "the card is full"
    monkeypatch.setattr(daemon.spare, "has_room", lambda *_: False)  # no room left: the error shows to all
    press_under("error", "Storage error")
    daemon.storage_error = None
    press_under("live")
    assert [r["emotion"] for r in store.rows()] == ["Happy"] * 2
    daemon.close()
    store.close()


@pytest.mark.parametrize(("ending", "spare"), [("stop", True), ("crash", True), ("stop", False)])
def test_entries_the_log_never_took_go_to_the_journal_at_shutdown(model, face_folder, tmp_path, caplog, ending,
                                                                  spare):
    """Each in full; one the spare file holds is not for a technician to restore by hand: the next start
    restores it, and one restored twice would be counted twice."""
    db = tmp_path / "feedback.db"
    rig = Rig(model, face_folder, db)
    if not spare:
        rig.daemon.spare.close()
        rig.daemon.spare = None
    rig.steps(2)
    _break_storage(rig, db, True)
    rig.press()
    rig.steps(1)
    kept = [r.getMessage() for r in caplog.records if r.getMessage().startswith("entry kept in memory")]
    assert len(kept) == 1  # in the journal at once: a power cut or the watchdog may end the process first
    stop = threading.Event()
    if ending == "stop":
        stop.set()
        rig.daemon.run(stop)
    else:  # a stage fails: the daemon exits with the error, the entry still reaches the journal

        def crash():
            raise RuntimeError("a stage failed")

        rig.daemon.step = crash
        with pytest.raises(RuntimeError, match="a stage failed"):
            rig.daemon.run(stop)
    lost = [r for r in caplog.records if r.getMessage().startswith("entry not stored")]
    assert len(lost) == 1 and lost[0].levelname == ("WARNING" if spare else "CRITICAL")
    assert (f"kept in {beside(db)} for the next start" in lost[0].getMessage()) == spare
    entry = json.loads("{" + lost[0].getMessage().split(": {", 1)[1])
    assert entry["emotion"] in rig.daemon.classifier.manifest.display_names and entry["utc"]
    assert json.loads(kept[0].split(": ", 1)[1]) == entry
    rig.close()


def test_a_press_just_before_the_service_stops_is_stored(model, face_folder, tmp_path):
    rig = Rig(model, face_folder, tmp_path / "feedback.db")
    rig.steps(2)
    rig.press()  # then SIGTERM, before the loop's next frame
    stop = threading.Event()
    stop.set()
    rig.daemon.run(stop)
    assert rig.store.count() == 1
    rig.close()


def test_a_press_is_judged_when_it_happened_not_when_handled(model, face_folder, tmp_path, monkeypatch):
    from device import daemon as D

    rig = Rig(model, face_folder, tmp_path / "feedback.db",
              **{"button.face_window_s": 0.2, "smoothing.reset_after_s": 0.3})
    clock = moved_clock(monkeypatch, D)
    rig.steps(2)
    clock[0] = 100.1
    rig.press()
    clock[0] = 100.6  # the loop stalls (a camera reconnect) past both windows before it sees the press
    handled = datetime.now(UTC)
    rig.daemon._handle_presses()
    monkeypatch.undo()
    rows = list(rig.store.rows())
    assert len(rows) == 1
    utc = datetime.strptime(rows[0]["utc"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((utc - (handled - timedelta(seconds=0.5))).total_seconds()) < 0.1  # at the press, not 0.5 s later
    rig.close()


def press_while_classifying(rig: Rig, monkeypatch, emotions, pressed_on: str, box_then=None) -> list:
    """A slow Pi: each detection takes 0.8 s, and the button is pressed 0.2 s into that of the first
    frame scripted `pressed_on` (its face at `box_then`, if given). Returns what the screen showed then."""
    from device import daemon as D

    clock = moved_clock(monkeypatch, D)
    finder = script_faces(rig, monkeypatch, Box(100, 100, 200, 200, 0.9), emotions)
    find, at_press = finder.find, []

    def slow_find(frame):
        box = find(frame)
        clock[0] += 0.2
        if finder.emotion == pressed_on and not at_press:
            finder.box = box = box_then or box
            rig.press()
            at_press.append(rig.daemon.display.current)
        clock[0] += 0.6
        return box

    finder.find = slow_find
    return at_press


def test_a_press_stores_the_emotion_on_the_screen_not_that_of_a_frame_still_being_processed(
        model, face_folder, tmp_path, monkeypatch):
    """On a Zero 2 W a frame reaches the screen most of a second after it was read: a press in that
    time stores, and thanks with, the emotion and rating the customer saw, not the unseen frame's."""
    rig = Rig(model, face_folder, tmp_path / "feedback.db", **{"smoothing.window_s": 0.5})  # a frame a reading
    at_press = press_while_classifying(rig, monkeypatch, ["Happy", "Sad", "Sad"], "Sad")
    rig.steps(3)
    monkeypatch.undo()
    assert [(s.emotion, s.rating) for s in at_press] == [("Happy", 5)]
    assert [(r["emotion"], r["rating"]) for r in rig.store.rows()] == [("Happy", 5)]
    assert rig.daemon._thanks[1] == Screen("thanks", "Happy", 5, 5)
    rig.close()


def test_a_press_while_the_last_customers_reading_is_still_up_stores_nothing(model, face_folder, tmp_path,
                                                                            monkeypatch):
    """The next customer steps in and presses while their first frame is classified: the screen
    still shows the last customer's emotion, which is not theirs, and their own is not shown yet."""
    rig = Rig(model, face_folder, tmp_path / "feedback.db")  # the next customer elsewhere in the frame
    at_press = press_while_classifying(rig, monkeypatch, ["Happy", "Happy", "Angry", "Angry"], "Angry",
                                       Box(10, 10, 60, 60, 0.9))
    rig.steps(3)
    rig.steps(1)  # the press is handled
    monkeypatch.undo()
    assert [(s.emotion, s.rating) for s in at_press] == [("Happy", 5)]
    assert rig.store.count() == 0 and rig.daemon.display.current == Screen("no_face")
    rig.close()


def test_a_press_is_never_credited_to_a_face_that_appeared_after_it(model, face_folder, empty_folder, tmp_path):
    """The screen showed a camera error while the press waited; the first frame after it shows
    the next person, whose expression must not be stored as the earlier customer's feedback."""
    rig = Rig(model, face_folder, tmp_path / "feedback.db", **{"button.face_window_s": 0.2})
    rig.steps(2)
    rig.daemon.source = ImageSource(str(empty_folder), fps=30)  # the customer walks away
    rig.steps(1)
    time.sleep(0.3)
    rig.press()  # nobody in view
    rig.daemon.source = ImageSource(str(face_folder), fps=30)  # someone steps in before it is handled
    rig.steps(1)
    assert rig.store.count() == 0 and rig.daemon.screen(time.monotonic()) == Screen("no_face")
    rig.close()


CHILD = """
import sys
from device.storage import Entry, FeedbackLog, StorageError
log = FeedbackLog(sys.argv[1])
e = Entry("Happy", 5, 0.9, {"Happy": 0.9, "Sad": 0.1}, "0" * 64, "pi")
while True:
    print(log.add(e), flush=True)
"""


def test_killed_writer_loses_no_acknowledged_entry(tmp_path, monkeypatch):
    """200 times: a writer is SIGKILLed at a random moment; every id it printed (after the
    commit returned) must be in the log, and the file must pass integrity_check. The log's
    own settings (WAL, synchronous=FULL) are what carry this over to a power cut."""
    db = tmp_path / "feedback.db"
    rng = np.random.default_rng(0)
    acknowledged: set[int] = set()
    for _ in range(200):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, cwd=ROOT)
        time.sleep(float(rng.uniform(0.03, 0.12)))
        child.kill()
        out, _ = child.communicate()
        acknowledged.update(int(x) for x in out.split())
    connect = sqlite3.connect

    def lax(*args, **kwargs) -> sqlite3.Connection:  # an SQLite built to start at synchronous=OFF (or NORMAL,
        con = connect(*args, **kwargs)  # as some distributions build it): the log must set FULL itself
        con.execute("PRAGMA synchronous=OFF")
        return con

    monkeypatch.setattr(sqlite3, "connect", lax)
    log = FeedbackLog(db)
    monkeypatch.undo()
    assert log.integrity_ok()
    stored = {r["id"] for r in log.rows()}
    assert acknowledged and acknowledged <= stored
    # SIGKILL keeps the page cache: a real power cut needs the WAL synced at each commit
    assert log.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert log.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    log.close()


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[camera]\nsorce = 'demo'\n", "unknown key camera.sorce"),
        ("[button]\npin = 'seventeen'\n", "button.pin: expected int"),
        ("[detector]\nconfidence = 1.5\n", "detector.confidence: 1.5 is out of range"),
        ("[display]\ndriver = 'hdmi'\n", "display.driver: 'hdmi' is not one of"),
        ("[gpio]\npin = 4\n", "unknown section [gpio]"),
        ("[rating.map]\nJoyful = 5\n", "rating.map.Joyful: unknown emotion"),
        ("[rating]\nmax = 10\n[rating.map]\nHappy = 10\n", "rating.max is 10, so every emotion needs a rating"),
        ("[rating]\nmax = 3\n", "rating.max is 3, so every emotion needs a rating; missing Angry"),
        ("[camera]\nsource = 'video'\n", "camera.path: required when camera.source is 'video'"),
        ("[camera\n", "cannot read config"),
        ("[storage]\npath = 'feedback.db'\n", "storage.path: must be an absolute path"),
        ("[button]\nface_window_s = 2.5\n", "button.face_window_s: 2.5 is longer than smoothing.reset_after_s (2.0)"),
        # out of sight this long, the customer has gone: a press is not theirs, nor the screen their emotion
        ("[button]\nface_window_s = 8\n[smoothing]\nreset_after_s = 9\n",
         "button.face_window_s: 8.0 is out of range [0.1, 3.0]"),
        ("[smoothing]\nreset_after_s = 12\n", "smoothing.reset_after_s: 12.0 is out of range [0.1, 10.0]"),
        ("[button]\nbounce_s = 0.3\n", "button.bounce_s: 0.3 is out of range [0.0, 0.1]"),  # lgpio: a tap unseen
        ("[camera]\nfps = 0.5\n", "camera.fps: 0.5 gives a frame every 2 s, not within button.face_window_s (1.5)"),
        ("[device]\nid = '=HYPERLINK(1)'\n", "device.id: '=HYPERLINK(1)': a spreadsheet would read it as a formula"),
        ("[camera]\ndevice = '/dev/video2'\n",  # the kiosk with two cameras would silently use the other
         "camera.device: '/dev/video2' is used only with camera.source \"v4l2\", not 'camera'"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path, toml, message, capsys):
    path = tmp_path / "config.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match="config.toml") as err:
        load_config(path)
    assert message in str(err.value)
    assert cli.main(["--config", str(path), "check"]) == 2
    assert message in capsys.readouterr().err
    assert cli.main(["check", "--config", str(path)]) == 2  # after the command, as the systemd unit has it
    assert message in capsys.readouterr().err


def test_a_bad_flag_is_blamed_on_the_command_line_not_the_file(tmp_path, capsys):
    path = tmp_path / "config.toml"
    path.write_text("[model]\nnum_threads = 2\n")
    assert cli.main(["--config", str(path), "check", "--threads", "0"]) == 2
    assert "error: command line: model.num_threads: 0 is out of range" in capsys.readouterr().err
    assert cli.main(["--config", str(path), "check", "--camera-device", "1"]) == 2
    assert "error: command line: camera.device: '1' is used only with" in capsys.readouterr().err
    assert load_config(path, {"camera.source": "v4l2", "camera.device": "1"})["camera"]["device"] == "1"
    path.write_text('[camera]\nsource = "v4l2"\ndevice = "/dev/video2"\n')  # a kiosk's, checked on a desk
    assert load_config(path, {"camera.source": "demo"})["camera"]["source"] == "demo"
    with pytest.raises(ConfigError, match="^command line: camera.device: '/dev/video2' is used only with"):
        load_config(path, {"camera.source": "auto"})
    path.write_text('[camera]\ndevice = "/dev/video0"\n')  # the default, spelt as a path
    assert load_config(path)["camera"]["device"] == "/dev/video0"


def test_a_source_flag_sets_aside_the_files_clip_or_photos(tmp_path, monkeypatch):
    """Flags override the file: a kiosk's config with a clip, checked on a desk with --source demo, is the demo,
    not an error telling the user to remove the file's path."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    path = tmp_path / "config.toml"
    path.write_text('[camera]\nsource = "video"\npath = "/srv/clip.mp4"\n')
    for source in ("demo", "auto", "camera"):
        assert load_config(path, {"camera.source": source})["camera"]["path"] == ""
    assert load_config(path, {"camera.source": "images"})["camera"]["path"] == "/srv/clip.mp4"  # one it uses
    with pytest.raises(ConfigError, match="^command line: camera.path is used only with camera.source"):
        load_config(path, {"camera.source": "demo", "camera.path": "/srv/other.mp4"})  # both typed: a slip
    path.write_text('[camera]\npath = "/srv/clip.mp4"\n')  # the file's own mismatch is still the file's
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: camera.path is used only with"):
        load_config(path)


def test_a_deleted_current_folder_is_an_error_only_where_a_relative_path_needs_it(tmp_path, monkeypatch, capsys):
    """A shell left in a folder since removed (a checkout deleted) has no current folder: os.getcwd() raised from
    every command, a traceback, though only a relative path needs the folder."""
    def gone() -> str:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setattr(os, "getcwd", gone)
    assert load_config(None)["display"]["png_path"] == "build/screen.png"  # relative, but unused without png
    assert load_config(None, {"display.driver": "png", "display.png_path": "/srv/screen.png"})
    said = ": cannot resolve relative paths: the current folder no longer exists; cd elsewhere"
    with pytest.raises(ConfigError, match="^" + re.escape(f"command line: storage.path: 'f.db'{said}") + "$"):
        load_config(None, {"storage.path": "f.db"})
    with pytest.raises(ConfigError, match="^" + re.escape(f"(defaults): display.png_path: 'build/screen.png'{said}")):
        load_config(None, {"display.driver": "png"})
    assert cli.main(["export", "--db", "f.db"]) == 2
    assert f"error: command line: storage.path: 'f.db'{said}" in capsys.readouterr().err
    assert cli.main(["check", "--model", "m.tflite", "--db", "/srv/f.db"]) == 2  # a typed model is the shell's
    assert f"error: command line: model.path: 'm.tflite'{said}" in capsys.readouterr().err


def test_example_config_is_the_defaults(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("\n".join(line[2:] if line.startswith("# ") and " = " in line else line
                              for line in example_toml().splitlines()))
    assert load_config(path) == load_config(None)


BY_HAND = [p for p in cli.CHECK_PARTS if p != "sandbox"]  # the sandbox line is sudo's: its wrapper names the unit


def test_check_reports_each_part(model, face_folder, tmp_path, capsys, monkeypatch):
    base = ["check", "--source", "images", "--camera-path", str(face_folder), "--display", "png",
            "--png-path", str(tmp_path / "screen.png"), "--button", "none", "--db", str(tmp_path / "f.db"),
            "--model", str(model), "--detector-dir", str(FACE_DIR)]
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # not UTC, as CI's zone is: a check that printed UTC would show
    time.tzset()
    try:
        assert cli.main(base) == 0
    finally:
        monkeypatch.undo()
        time.tzset()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == BY_HAND
    assert all(line.startswith("ok ") for line in lines)
    # the zone a technician checks against the store's
    assert "JST (UTC+0900), the zone entries are dated in" in lines[-1]
    assert cli.main([*base, "--skip", "camera", "--skip", "display", "--model", str(tmp_path / "none.tflite")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["detector", "model", "button", "storage", "clock"]
    assert lines[1].startswith("FAIL model") and "none.tflite" in lines[1]
    (tmp_path / "screen.png.tmp").mkdir()  # the display opens, but no screen can be written there
    assert cli.main([*base, "--skip", "camera", "--png-path", str(tmp_path / "screen.png")]) == 1
    line = next(x for x in capsys.readouterr().out.splitlines() if " display " in f" {x} ")
    assert line.startswith("FAIL display") and "display.driver = png: cannot draw" in line


def test_check_keeps_the_camera_frame_it_reads_off_the_swap(face_folder, tmp_path, caplog, monkeypatch):
    """`sudo make status` reads a real frame: on a Pi with swap on the SD card, its memory is locked as
    the service's is, or the technician is told it was not."""
    locked = []
    monkeypatch.setattr(cli, "swap_in_use", lambda: True)
    monkeypatch.setattr(cli, "lock_memory", lambda: locked.append(1) or "RLIMIT_MEMLOCK is 8388608 bytes")
    others = [f"--skip={p}" for p in cli.CHECK_PARTS if p != "camera"]
    base = ["check", "--source", "images", "--camera-path", str(face_folder), "--db", str(tmp_path / "f.db")]
    assert cli.main([*base, *others]) == 0 and locked
    assert "memory not locked (RLIMIT_MEMLOCK is 8388608 bytes): the camera frame may be paged out" in caplog.text
    locked.clear()
    assert cli.main([*base, *others, "--skip=camera"]) == 0 and not locked  # no frame, nothing to lock


def test_run_locks_its_memory_under_systemd_only_and_says_when_frames_may_reach_the_swap(tmp_path, caplog, capsys,
                                                                                        monkeypatch):
    """conftest stubs lock_memory in every test: this one shows `run` calls it, once, where systemd started it
    (only the unit sets RLIMIT_MEMLOCK for the lock to be safe), and warns when swap may take the frames."""
    from device.display import DisplayError

    calls = []

    def lock(why: str | None) -> None:
        calls.clear()
        caplog.clear()
        monkeypatch.setattr(cli, "lock_memory", lambda: calls.append(1) or why)

    def no_display(cfg):  # the line after the lock: the quickest way out of cmd_run
        raise DisplayError("stopped before the display")

    monkeypatch.setattr(cli, "open_display", no_display)
    monkeypatch.setattr(cli, "swap_in_use", lambda: True)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    argv = ["run", "--source", "demo", "--display", "none", "--button", "none", "--db", str(tmp_path / "f.db")]
    warning = "camera frames may be paged out to swap on disk"
    lock("RLIMIT_MEMLOCK is 65536 bytes")
    assert cli.main(argv) == 2 and calls == [1]
    assert f"memory not locked (RLIMIT_MEMLOCK is 65536 bytes): {warning}" in caplog.text
    assert "error: stopped before the display" in capsys.readouterr().err  # not stopped earlier, by another error
    lock(None)  # locked: nothing to say
    assert cli.main(argv) == 2 and calls == [1] and warning not in caplog.text
    lock("mlockall: Cannot allocate memory")
    monkeypatch.setattr(cli, "swap_in_use", lambda: False)  # no swap: frames stay in memory
    assert cli.main(argv) == 2 and calls == [1] and warning not in caplog.text
    lock(None)
    monkeypatch.setattr(cli, "swap_in_use", lambda: True)
    monkeypatch.delenv("NOTIFY_SOCKET")  # `make run`, a shell: under a finite RLIMIT_MEMLOCK a lock would fail later
    assert cli.main(argv) == 2 and calls == []
    assert f"memory not locked (not started by systemd): {warning}" in caplog.text

def test_check_beside_the_running_service_leaves_alone_the_parts_it_holds(model, face_folder, tmp_path, capsys):
    """`sudo feedbackd check` on a live kiosk: opening the busy button would fail, and luma's exit
    hook would blank the screen staff are reading; the parts are said to be skipped, not passed."""
    db, screen = tmp_path / "f.db", tmp_path / "screen.png"
    base = ["check", "--source", "images", "--camera-path", str(face_folder), "--display", "png",
            "--png-path", str(screen), "--button", "none", "--db", str(db), "--model", str(model),
            "--detector-dir", str(FACE_DIR)]
    held = SpareFile(beside(db))  # as the daemon holds it while it runs
    try:
        assert cli.main(base) == 0
    finally:
        held.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["skip" if p in ("camera", "display", "button") else "ok", p]
                                                    for p in BY_HAND]
    assert "the running service holds it: stop it (sudo systemctl stop feedbackd)" in lines[0]
    assert not screen.exists()
    assert cli.main(base) == 0  # the service stopped: every part is checked
    assert all(line.startswith("ok ") for line in capsys.readouterr().out.splitlines()) and screen.exists()


def test_run_beside_the_running_service_refuses_before_it_touches_the_screen(tmp_path, capsys):
    """`sudo feedbackd run` on a live kiosk: luma's set-up blanks the shared panel, and a second
    daemon on the same log would run without its spare file."""
    db, screen = tmp_path / "f.db", tmp_path / "screen.png"
    held = SpareFile(beside(db))  # as the service holds it while it runs
    try:
        assert cli.main(["run", "--source", "demo", "--display", "png", "--png-path", str(screen), "--button", "none",
                         "--db", str(db), "--model", str(tmp_path / "none.tflite")]) == 2
    finally:
        held.close()
    assert f"{db}: another feedbackd is running on this log" in capsys.readouterr().err
    assert not screen.exists()


def spare_closed_to_this_user(monkeypatch, db: Path) -> None:
    """/var/lib/feedbackd is 0750: a user outside the service's group cannot open its spare file."""
    opened = os.open

    def open_(path, *args, **kwargs):
        if Path(path) == beside(db):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.delenv("FEEDBACKD_DROPPED_ROOT", raising=False)


def test_check_by_a_user_who_cannot_tell_whether_the_service_runs_leaves_its_parts_alone(model, face_folder,
                                                                                       tmp_path, capsys, monkeypatch):
    """`feedbackd check` without sudo cannot look at the service's lock: taking it for stopped would open
    the camera, display and button a live kiosk holds, and blank its screen."""
    db, screen = tmp_path / "f.db", tmp_path / "screen.png"
    spare_closed_to_this_user(monkeypatch, db)
    assert cli.main(["check", "--source", "images", "--camera-path", str(face_folder), "--display", "png",
                     "--png-path", str(screen), "--button", "none", "--db", str(db), "--model", str(model),
                     "--detector-dir", str(FACE_DIR), "--skip", "storage"]) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()}
    for part in ("camera", "display", "button"):
        assert lines[part].startswith("skip") and "cannot tell whether the running service holds it: run sudo " \
                                                  "feedbackd check" in lines[part]
    assert not screen.exists()
    monkeypatch.setenv("FEEDBACKD_DROPPED_ROOT", "1")  # sudo: the wrapper runs it as the service's own user
    assert cli.main(["check", "--source", "images", "--camera-path", str(face_folder), "--display", "png",
                     "--png-path", str(screen), "--button", "none", "--db", str(db), "--model", str(model),
                     "--detector-dir", str(FACE_DIR), "--skip", "storage"]) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()}
    assert all(lines[part].startswith("ok") for part in ("camera", "display")) and screen.exists()


def test_sudo_check_reads_the_config_as_the_sandboxed_service_would(tmp_path, capsys, monkeypatch):
    """`sudo feedbackd check` runs outside the unit's sandbox: a log path the unit cannot write passed
    it, and the next restart failed. The wrapper names the unit's folder; check reads the config there."""
    config = tmp_path / "config.toml"
    config.write_text('[storage]\npath = "/srv/feedback.db"\n')
    others = [a for p in cli.CHECK_PARTS if p not in ("sandbox", "clock") for a in ("--skip", p)]
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("FEEDBACKD_STATE", raising=False)
    assert cli.main(["--config", str(config), "check", *others]) == 0  # by hand: no unit to judge it by
    assert "sandbox" not in capsys.readouterr().out
    monkeypatch.setenv("FEEDBACKD_STATE", "/var/lib/feedbackd")  # as the wrapper sets it under sudo
    assert cli.main(["--config", str(config), "check", *others]) == 1
    line = next(x for x in capsys.readouterr().out.splitlines() if " sandbox " in x)
    assert line.startswith("FAIL") and "storage.path: /srv/feedback.db: the service can write only under " \
                                      "/var/lib/feedbackd" in line
    config.write_text('[storage]\npath = "/var/lib/feedbackd/feedback.db"\n')
    assert cli.main(["--config", str(config), "check", *others]) == 0
    assert "ok   sandbox        " in capsys.readouterr().out


def test_run_by_a_user_who_cannot_tell_whether_the_service_runs_stops_before_the_screen(tmp_path, capsys,
                                                                                      monkeypatch):
    """`feedbackd run` without sudo: the service may be running, and opening the display would blank it."""
    db, screen = tmp_path / "f.db", tmp_path / "screen.png"
    spare_closed_to_this_user(monkeypatch, db)
    assert cli.main(["run", "--source", "demo", "--display", "png", "--png-path", str(screen), "--button", "none",
                     "--db", str(db), "--model", str(tmp_path / "none.tflite")]) == 2
    assert f"{beside(db)}: permission denied: run it as root (sudo feedbackd run)" in capsys.readouterr().err
    assert not screen.exists() and not db.exists()


def test_start_refuses_missing_or_tampered_parts(model, tmp_path, capsys, monkeypatch):
    base = ["run", "--source", "demo", "--display", "none", "--button", "none", "--db", str(tmp_path / "f.db")]
    assert cli.main([*base, "--model", str(tmp_path / "none.tflite")]) == 2
    assert "none.tflite: emotion model not found" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in (model.name, model.with_suffix(".json").name):
        shutil.copy(model.parent / name, bad / name)
    data = bytearray((bad / model.name).read_bytes())
    data[-64] ^= 1
    (bad / model.name).write_bytes(bytes(data))
    assert cli.main([*base, "--model", str(bad / model.name)]) == 2
    assert "does not match its manifest" in (err := capsys.readouterr().err) and "and its manifest together" in err
    assert cli.main([*base, "--model", str(model), "--detector-dir", str(tmp_path)]) == 2
    assert "face-detector file missing" in capsys.readouterr().err
    shutil.copy(model, bad / model.name)  # the right model, a manifest that misdescribes it
    manifest = json.loads(model.with_suffix(".json").read_text())
    manifest["input"]["quantization"]["zero_point"] += 1
    (bad / model.with_suffix(".json").name).write_text(json.dumps(manifest))
    assert cli.main([*base, "--model", str(bad / model.name)]) == 2
    assert f"{bad / model.with_suffix('.json').name}: input quantization" in capsys.readouterr().err
    manifest["input"]["quantization"] = {"scale": 0.0, "zero_point": 0}  # would pass as "not quantized"
    (bad / model.with_suffix(".json").name).write_text(json.dumps(manifest))
    assert cli.main([*base, "--model", str(bad / model.name)]) == 2
    assert "malformed model manifest" in capsys.readouterr().err
    manifest["input"]["quantization"] = json.loads(model.with_suffix(".json").read_text())["input"]["quantization"]
    manifest["input"]["std"] = float("nan")  # json writes NaN: every score would be NaN, every face "Angry"
    (bad / model.with_suffix(".json").name).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="malformed model manifest"):  # not via `run`: it would run on
        EmotionClassifier(bad / model.name)

    def unreadable(path):
        raise PermissionError(13, "Permission denied", str(path))  # a model copied in as root, mode 0600

    monkeypatch.setattr("device.model.sha256_file", unreadable)
    assert cli.main([*base, "--model", str(model)]) == 2
    assert f"{model}: cannot read the emotion model: [Errno 13] Permission denied" in capsys.readouterr().err
    monkeypatch.undo()
    (bad / model.with_suffix(".json").name).write_bytes(b"\xff\xfe not text")
    assert cli.main([*base, "--model", str(bad / model.name)]) == 2
    assert "cannot read model manifest" in capsys.readouterr().err
    (bad / "fer_vgg16.keras").write_bytes(b"a float model")
    assert cli.main([*base, "--model", str(bad / "fer_vgg16.keras")]) == 2
    assert "fer_vgg16.keras: expected a converted .tflite model" in capsys.readouterr().err


def test_hardware_that_cannot_start_names_its_setting(model, face_folder, tmp_path, capsys):
    base = ["run", "--source", "images", "--camera-path", str(face_folder), "--db", str(tmp_path / "f.db"),
            "--model", str(model), "--detector-dir", str(FACE_DIR)]
    config = tmp_path / "config.toml"
    config.write_text("[display]\ni2c_port = 9\n")  # the default OLED driver on a bus this machine lacks
    assert cli.main(["--config", str(config), *base, "--button", "none"]) == 2
    assert "display.driver = 'ssd1306': cannot open the display" in capsys.readouterr().err
    assert cli.main([*base, "--display", "none", "--button", "gpio"]) == 2  # no GPIO chip on this machine
    assert "button.pin = 17: cannot open the GPIO" in capsys.readouterr().err
    assert not (tmp_path / "f.db").exists()  # hardware is opened before the log


@pytest.mark.parametrize("part", ["button", "model"])
def test_a_part_that_cannot_start_is_named_on_the_screen(model, face_folder, tmp_path, capsys, part):
    from PIL import Image

    png = tmp_path / "screen.png"
    args = ["run", "--source", "images", "--camera-path", str(face_folder), "--db", str(tmp_path / "f.db"),
            "--display", "png", "--png-path", str(png), "--detector-dir", str(FACE_DIR),
            "--button", "gpio" if part == "button" else "none",
            "--model", str(model if part == "button" else tmp_path / "missing.tflite")]
    assert cli.main(args) == 2
    detail = capsys.readouterr().err.strip().removeprefix("feedbackd: error: ")
    expected = render(Screen("error", title=f"{part.capitalize()} error", detail=detail), (128, 64), "1")
    with Image.open(png) as shown:
        assert shown.convert("1").tobytes() == expected.tobytes()


def test_the_error_screen_stays_up_after_the_process_exits(model, face_folder, tmp_path, monkeypatch, capsys):
    """luma blanks its panel from an exit hook (its cleanup()) unless the device persists."""
    from luma.core.device import dummy

    screen = dummy(width=128, height=64, mode="1")
    monkeypatch.setattr(cli, "open_display", lambda cfg: Display(screen))
    args = ["run", "--source", "images", "--camera-path", str(face_folder), "--db", str(tmp_path / "f.db"),
            "--detector-dir", str(FACE_DIR), "--button", "none", "--model", str(tmp_path / "missing.tflite")]
    assert cli.main(args) == 2
    detail = capsys.readouterr().err.strip().removeprefix("feedbackd: error: ")
    expected = render(Screen("error", title="Model error", detail=detail), (128, 64), "1").tobytes()
    assert screen.image.tobytes() == expected  # the error itself, not any drawing
    screen.cleanup()  # what luma's atexit hook runs
    assert screen.image.tobytes() == expected  # still the error, not a blank panel


def test_a_camera_given_up_on_leaves_its_error_on_the_screen(model, tmp_path, monkeypatch, capsys):
    """No camera in the first minute (or a hung capture): the daemon exits for systemd to restart
    it, and the kiosk shows why meanwhile, not a dark panel that sends the technician to its wiring."""
    from luma.core.device import dummy

    screen = dummy(width=128, height=64, mode="1")
    monkeypatch.setattr(cli, "open_display", lambda cfg: Display(screen))
    monkeypatch.setattr(cli, "FIRST_OPEN_S", 0.0)  # the minute, gone
    args = ["run", "--source", "v4l2", "--camera-device", str(tmp_path / "video9"), "--db", str(tmp_path / "f.db"),
            "--detector-dir", str(FACE_DIR), "--button", "none", "--model", str(model)]
    assert cli.main(args) == 2
    assert "no camera has opened since the start" in capsys.readouterr().err
    screen.cleanup()  # what luma's atexit hook runs
    expected = render(Screen("error", title="Camera error", detail="restarting..."), (128, 64), "1")
    assert screen.image.tobytes() == expected.tobytes()
    photos = ["run", "--source", "images", "--camera-path", str(tmp_path / "nope"), *args[5:]]
    assert cli.main(photos) == 2  # a wrong path: no camera driver to blame
    err = capsys.readouterr().err
    assert f"camera.path: nothing has opened since the start ({tmp_path / 'nope'}" in err and "driver" not in err


def test_a_runtime_that_is_installed_but_broken_is_named(model, tmp_path, monkeypatch):
    """A runtime that fails to import (a numpy ABI mismatch, say) is reported as such; only a
    runtime that is not installed at all falls through to the next."""
    from device.model import ModelError, load_interpreter

    broken = tmp_path / "site" / "ai_edge_litert"
    broken.mkdir(parents=True)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for error in ("ImportError('numpy.core.multiarray failed to import')", "ValueError('numpy.dtype size changed')"):
        for name in [m for m in sys.modules if m.split(".")[0] == "ai_edge_litert"]:
            monkeypatch.delitem(sys.modules, name)
        (broken / "__init__.py").write_text(f"raise {error}\n")
        with pytest.raises(ModelError, match="ai_edge_litert.interpreter is installed but cannot be imported: "
                                             + error.split("'")[1]):
            load_interpreter(model)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # not installed: on to the next runtime
    assert type(load_interpreter(model)).__module__.startswith("tensorflow.")  # no tflite_runtime here


def test_a_camera_that_fails_shows_camera_error_and_the_loop_goes_on(model, face_folder, tmp_path):
    def no_camera():
        raise SourceError("camera 0: not there")

    rig = Rig(model, face_folder, tmp_path / "feedback.db")
    rig.daemon.source = ReconnectingSource(no_camera, max_backoff_s=0.02)
    rig.steps(3)
    assert rig.daemon.screen(time.monotonic()).title == "Camera error"
    expected = render(Screen("error", title="Camera error", detail="retrying..."), (128, 64), "1")
    assert rig.screen.image.tobytes() == expected.tobytes()
    rig.press()  # a customer who cannot be seen: "No face - try again" would only ask for more presses
    rig.steps(1)
    assert rig.screen.image.tobytes() == expected.tobytes() and list(rig.store.rows()) == []
    rig.daemon.source = ImageSource(str(face_folder), fps=30)  # plugged back in
    rig.steps(2)
    assert rig.daemon.screen(time.monotonic()).kind == "live"
    rig.close()


def test_a_capture_that_never_returns_ends_the_daemon_for_systemd_to_restart(model, face_folder, tmp_path):
    """The hung read holds the camera, so reconnecting in-process would fail forever while the
    watchdog stays fed; the loop stops with the error instead (the unit has Restart=on-failure)."""
    hang = threading.Event()

    def grab():
        hang.wait()  # a driver call that never returns
        return None

    rig = Rig(model, face_folder, tmp_path / "feedback.db")
    rig.daemon.source = ReconnectingSource(lambda: LatestFrame(grab, "Pi camera", timeout_s=0.05))
    stop = threading.Event()
    threading.Timer(10, stop.set).start()  # a loop that kept going would end here, and fail the test
    with pytest.raises(SourceStuck, match="Pi camera: a capture has not returned"):
        rig.daemon.run(stop)
    stop.set()
    assert rig.daemon.source.source is None
    rig.daemon.source.close()  # what cmd_run's cleanup does next: nothing left to raise
    hang.set()
    rig.close()


def test_a_camera_never_opened_in_the_first_minute_ends_the_daemon_for_systemd_to_restart(monkeypatch):
    """systemd resolves DeviceAllow=char-video4linux once, when the unit starts: a camera driver
    that loads later (a slow boot) is refused until the service restarts. A camera that opened
    once is a camera fault instead, retried in-process for as long as it takes."""
    clock = moved_clock(monkeypatch, sources)
    plugged = [False]

    class Unplugged:
        def read(self):
            raise SourceError("/dev/video0: unplugged")

        def close(self):
            pass

    def opener():
        if not plugged[0]:
            raise SourceError("no camera: Pi camera: no cameras found")
        return Unplugged()

    src = ReconnectingSource(opener, max_backoff_s=1, first_open_s=60)
    for t in (100, 130, 159.9):  # the first minute: the screen says "Camera error" and it retries
        clock[0] = t
        assert src.read() is None and "no cameras found" in src.error
    clock[0] = 161.0  # the next try after the minute
    with pytest.raises(SourceStuck, match=r"no camera has opened since the start \(no camera: Pi camera"):
        src.read()
    src = ReconnectingSource(opener, max_backoff_s=1, first_open_s=60)
    plugged[0] = True
    assert src.read() is None and "unplugged" in src.error  # it opened, then failed
    plugged[0] = False
    for t in (200, 300, 1000):
        clock[0] = t
        assert src.read() is None and "no cameras found" in src.error


def test_a_tiny_png_in_an_image_folder_is_shown_not_a_crash(tmp_path):
    """A JPEG is checked at an eighth of its size; a PNG is not (OpenCV decodes it whole and then
    shrinks it, which fails under 8 pixels)."""
    import cv2

    from device.sources import ImageSource

    cv2.imwrite(str(tmp_path / "a.jpg"), np.full((480, 640, 3), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((200, 6, 3), np.uint8))
    assert ImageSource(str(tmp_path)).read().shape == (480, 640, 3)


def test_the_reconnect_back_off_counts_from_the_end_of_a_slow_open(monkeypatch):
    """Probing the Pi camera and each webcam takes seconds: a back-off counted from before it had
    passed by the time the open failed, and the loop probed again at once, frames and presses waiting."""
    clock = moved_clock(monkeypatch, sources)

    def slow_open():
        clock[0] += 7.0  # the probes
        raise SourceError("no camera: Pi camera: no cameras found")

    src = ReconnectingSource(slow_open, max_backoff_s=30)
    clock[0] = 100.0
    assert src.read() is None
    assert src._retry_at > clock[0] == 107.0  # after the open, not before it


def test_a_webcam_that_hangs_on_its_first_frame_stops_the_default_camera_source(monkeypatch):
    """source = "camera" tries the Pi camera, then the first webcam: a webcam whose capture hangs
    is not just "no camera" to retry, since the hung thread keeps it open."""
    hang = threading.Event()

    def grab():
        hang.wait()
        return None

    def no_pi_camera(*args):
        raise SourceError("Pi camera: picamera2 is not installed")

    monkeypatch.setattr(sources, "Picamera2Source", no_pi_camera)
    monkeypatch.setattr(sources.glob, "glob", lambda pattern: ["/dev/video0"])
    monkeypatch.setattr(sources, "V4L2Source", lambda *args: LatestFrame(grab, "/dev/video0", timeout_s=0.05))
    camera = {"source": "camera", "width": 640, "height": 480, "fps": 15}
    with pytest.raises(SourceStuck, match="/dev/video0: a capture has not returned"):
        sources.open_source(camera)
    with pytest.raises(SourceStuck, match="/dev/video0: a capture has not returned"):  # as the daemon opens it
        ReconnectingSource(lambda: sources.open_source(camera)).read()
    hang.set()


def test_an_image_folder_the_service_cannot_list_is_a_camera_error_naming_it(tmp_path, monkeypatch):
    """source = "images" on a folder the service user may not list: the kiosk shows "Camera error"
    and retries, naming the folder, not a PermissionError that systemd restarts it on forever."""
    import pathlib

    folder = tmp_path / "frames"
    folder.mkdir()

    def iterdir(self):  # what a user without read permission on it meets (root here lists all)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "iterdir", iterdir)
    camera = load_config(None, {"camera.source": "images", "camera.path": str(folder)})["camera"]
    src = ReconnectingSource(lambda: sources.open_source(camera))  # as the daemon opens it
    assert src.read() is None
    assert src.error == f"{folder}: cannot list the images: [Errno 13] Permission denied: '{folder}'"


def test_a_face_detector_file_that_cannot_be_read_is_named_at_the_start(tmp_path, capsys, monkeypatch):
    """A face-detector file copied in as root, mode 0600, or a failing card: the start stops naming
    the file, as for the emotion model, not with a traceback."""
    def unreadable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("device.detector.sha256_file", unreadable)
    monkeypatch.setattr(cli.EmotionClassifier, "from_config", lambda cfg: None)  # the part before it
    assert cli.main(["run", "--source", "demo", "--display", "none", "--button", "none", "--db",
                     str(tmp_path / "f.db"), "--detector-dir", str(FACE_DIR)]) == 2
    file = FACE_DIR / "deploy.prototxt"
    assert capsys.readouterr().err == (f"feedbackd: error: {file}: cannot read the face-detector file: [Errno 13] "
                                       f"Permission denied: '{file}'\n")


def test_a_display_write_error_is_logged_and_retried(caplog):
    """luma's dummy panel behind a loose cable: its first write fails, the next draws the screen whole."""
    from luma.core.device import dummy
    from luma.core.error import DeviceNotFoundError

    class LooseCable(dummy):
        calls = 0

        def display(self, image):
            self.calls += 1
            if self.calls == 1:  # what luma's i2c interface raises for errno 121 (EREMOTEIO)
                raise DeviceNotFoundError("I2C device not found on address: 0x3C")
            super().display(image)

    caplog.set_level("INFO", logger="feedbackd")
    display = Display(LooseCable(width=128, height=64, mode="1"))
    assert display.show(Screen("idle")) is False and "0x3C" in display.error and display.device.image is None
    assert display.show(Screen("idle")) is True and display.error is None  # the same screen is drawn again
    assert display.device.calls == 2
    assert display.device.image.tobytes() == render(Screen("idle"), (128, 64), "1").tobytes()
    assert [r.levelname for r in caplog.records] == ["ERROR", "INFO"]


def test_an_oled_that_answers_again_after_a_failure_is_set_up_afresh(monkeypatch, caplog):
    """An SSD1306 whose power wire came loose resets to display-off: writes succeed again, yet it
    stays blank until its set-up commands (charge pump, display on) are sent again."""
    import luma.core.interface.serial
    from luma.core.error import DeviceNotFoundError

    from device.display import open_display

    class Bus:  # what luma's I2C interface offers a panel: command and data writes
        unplugged, commands, writes = False, [], 0

        def command(self, *cmd):
            if self.unplugged:
                raise DeviceNotFoundError("I2C device not found on address: 0x3C")
            self.commands.extend(cmd)

        def data(self, data):
            self.command()
            self.writes += 1

    bus = Bus()
    monkeypatch.setattr(luma.core.interface.serial, "i2c", lambda port, address: bus)
    caplog.set_level("INFO", logger="feedbackd")
    display = open_display(load_config(None, {"display.driver": "ssd1306"})["display"])
    charge_pump, display_on = 0x8D, 0xAF
    assert charge_pump in bus.commands and display.show(Screen("idle")) is True
    bus.unplugged = True
    assert display.show(Screen("no_face")) is False
    bus.unplugged, bus.commands, writes = False, [], bus.writes  # the wire is pushed back: it answers, blank
    assert display.show(Screen("no_face")) is True and {charge_pump, display_on} <= set(bus.commands)
    assert bus.writes >= writes + 2  # drawn, set up again (luma clears it), drawn again on the panel now on
    bus.commands = []
    assert display.show(Screen("idle")) is True and charge_pump not in bus.commands  # once, not every frame
    assert [r.levelname for r in caplog.records] == ["ERROR", "INFO"]
    # a power dip between two writes fails nothing: the idle screen sets the panel up again each minute
    import atexit

    import device.display

    start, bus.commands, hooks = time.monotonic(), [], atexit._ncallbacks()
    monkeypatch.setattr(device.display.time, "monotonic", lambda: start + 30)
    assert display.show(Screen("idle")) is False and bus.commands == []  # unchanged: nothing sent
    monkeypatch.setattr(device.display.time, "monotonic", lambda: start + 61)
    assert display.show(Screen("idle")) is True and {charge_pump, display_on} <= set(bus.commands)
    bus.commands = []
    assert display.show(Screen("idle")) is False and bus.commands == []  # then not again for a minute
    assert atexit._ncallbacks() == hooks  # luma's __init__ is not re-run: it would add an exit hook each time
    display.current = None
    monkeypatch.setattr(device.display.time, "monotonic", lambda: start + 200)
    assert display.show(Screen("live", "Happy", 5, 5)) is True and charge_pump not in bus.commands  # a customer
    assert display.show(Screen("error", title="Camera error", detail="retrying...")) is True
    assert charge_pump in bus.commands  # an error screen may stay up for hours: staff must be able to read it


@pytest.mark.parametrize("driver", ["ssd1306", "sh1106"])
def test_a_128x32_oled_is_set_up_for_32_rows(monkeypatch, driver):
    """luma sets a panel up as 128x64 unless told: a 0.91-inch strip then shows every other row."""
    import luma.core.interface.serial

    from device.display import open_display

    class Bus:
        commands, frames = [], []

        def command(self, *cmd):
            self.commands.extend(cmd)

        def data(self, data):
            self.frames.append(len(data))

    bus = Bus()
    monkeypatch.setattr(luma.core.interface.serial, "i2c", lambda port, address: bus)
    display = open_display(load_config(None, {"display.driver": driver, "display.size": "128x32"})["display"])
    assert display.device.size == (128, 32)
    set_multiplex = bus.commands.index(0xA8)
    assert bus.commands[set_multiplex + 1] in (0x1F, 0x20)  # 32 rows (luma's sh1106 counts one more)
    bus.frames.clear()
    assert display.show(Screen("live", "Happy", 5, 5))
    assert sum(bus.frames) == 128 * 32 // 8  # one 128x32 frame, a bit a pixel


class SpiBus:
    """What luma's SPI interface offers a panel: command and data writes, noted in order."""

    def __init__(self):
        self.sent, self.closed = [], False

    def command(self, *cmd):
        self.sent.append(cmd)

    def data(self, data):
        self.sent.append(bytes(data))

    def cleanup(self):
        self.closed = True


@pytest.mark.parametrize("driver, size, swap, madctl", [("st7789", (240, 240), False, 0x70),
                                                       ("st7735", (160, 128), True, 0x68),  # luma's RGB made BGR
                                                       ("ili9341", (320, 240), True, 0x20)])  # its BGR made RGB
def test_an_lcd_draws_each_screen_whole_and_is_set_up_afresh_each_minute(monkeypatch, driver, size, swap, madctl):
    """An SPI LCD that lost power comes back blank, and no write fails (SPI has no acknowledgement):
    the idle screen sends its set-up again each minute, with the datasheets' waits after a reset
    and a wake-up, then the whole frame."""
    import atexit

    import luma.core.interface.serial
    import luma.lcd.device

    import device.display
    from device.display import open_display

    class Pins:  # RPi.GPIO, as luma's backlight drives it
        OUT, HIGH, LOW, lit, freed = "out", 1, 0, None, []

        def setup(self, pin, mode):
            pass

        def output(self, pin, level):
            self.lit = (pin, level)

        def cleanup(self, pin):
            self.freed.append(pin)

    bus, pins, opened, first = SpiBus(), Pins(), {}, []
    monkeypatch.setattr(luma.core.interface.serial, "spi", lambda **kw: opened.update(kw) or bus)
    monkeypatch.setattr(luma.lcd.device.backlit_device, "__rpi_gpio__", lambda self: pins, raising=False)
    monkeypatch.setattr(device.display.time, "sleep", first.append)
    hooks = atexit._ncallbacks()
    display = open_display(load_config(None, {"display.driver": driver, "display.swap_red_blue": swap})["display"])
    assert (opened["reset_hold_time"], opened["reset_release_time"]) == (0.01, 0.15)  # a running panel's 120 ms
    assert first == [0.15, 0.12] if (0x01,) in bus.sent else first == [0.12]  # luma's own set-up waits too
    wake, reset = (0x11,), (0x01,)
    set_up = [w for w in bus.sent if not (isinstance(w, bytes) and len(w) > 64)]  # less luma's blank frame
    assert wake in set_up and display.device.size == size and pins.lit == (18, 1)  # the backlight is on
    assert set_up[set_up.index((0x36,)) + 1] == bytes([madctl])  # memory access control: orientation, colour order

    def frame(screen):  # the panel's memory is written last, with the whole picture
        return bytes(render(screen, size, "RGB").tobytes())

    bus.sent = []
    assert display.show(Screen("idle")) is True and bus.sent[-1] == frame(Screen("idle")) and wake not in bus.sent
    assert display.show(Screen("live", "Happy", 5, 5)) is True and bus.sent[-1] == frame(Screen("live", "Happy", 5, 5))
    start, slept = time.monotonic(), []
    monkeypatch.setattr(device.display.time, "monotonic", lambda: start + 61)
    monkeypatch.setattr(device.display.time, "sleep", slept.append)
    bus.sent = []
    assert display.show(Screen("idle")) is True
    assert bus.sent == [*set_up, *bus.sent[len(set_up):]] and bus.sent[-1] == frame(Screen("idle"))
    assert slept == [0.15, 0.12] if reset in set_up else slept == [0.12]  # a running panel is given time to wake
    bus.sent = []
    assert display.show(Screen("idle")) is False and bus.sent == []  # not again for a minute
    assert atexit._ncallbacks() == hooks + 1  # luma's exit hook, once: its __init__ is not re-run
    display.halt(Screen("error", title="Button error", detail="GPIO busy"))  # the process's last screen
    display.device.cleanup()  # what luma's exit hook runs
    assert pins.lit == (18, 1) and pins.freed == []  # lit, its pin still driven: the error stays readable


def test_an_lcd_with_reset_and_backlight_not_wired_drives_neither_pin(monkeypatch):
    """RST and BL to 3V3 (`gpio_rst = -1`, `gpio_backlight = -1`): luma is given no reset pin and no
    backlight pin (its default, GPIO18, would be driven otherwise), and the panel still draws."""
    import luma.core.interface.serial
    import luma.lcd.device

    import device.display
    from device.display import open_display

    def no_gpio(self):
        raise AssertionError("luma asked for RPi.GPIO: a backlight pin would be driven")

    bus, opened = SpiBus(), {}
    monkeypatch.setattr(luma.core.interface.serial, "spi", lambda **kw: opened.update(kw) or bus)
    monkeypatch.setattr(luma.lcd.device.backlit_device, "__rpi_gpio__", no_gpio, raising=False)
    monkeypatch.setattr(device.display.time, "sleep", lambda s: None)
    cfg = load_config(None, {"display.driver": "st7789", "display.gpio_rst": -1, "display.gpio_backlight": -1})
    display = open_display(cfg["display"])
    assert opened["gpio_RST"] is None and opened["gpio_DC"] == 24
    bus.sent = []
    assert display.show(Screen("idle")) is True and bus.sent[-1] == bytes(render(Screen("idle"), (240, 240),
                                                                                "RGB").tobytes())
    display.device.cleanup()  # luma's exit hook switches the backlight off: nothing to switch
    assert bus.closed


@pytest.mark.parametrize("where, gap", [("beside", 0.0), ("in the same spot", 0.6)])
def test_the_next_customer_is_read_on_their_own_face(model, face_folder, tmp_path, monkeypatch, where, gap):
    """The next customer steps in just as the last one leaves, beside them or after a gap in the same
    spot: their press stores their own emotion, none of the last customer's average."""
    from device import daemon as D

    rig = Rig(model, face_folder, tmp_path / "feedback.db")
    clock = moved_clock(monkeypatch, D)
    first, second = Box(100, 100, 200, 200, 0.9), Box(100 if gap else 260, 100, 200 if gap else 360, 200, 0.9)
    script = iter([(first, "Angry")] * 6 + [(None, None)] * int(gap * 10) + [(second, "Happy")] * 9)  # enough
    shown, released = [], []

    class Finder:
        def find(self, frame):
            box, emotion = next(script)
            shown.append(emotion)
            return box

        def release(self, face):
            released.append(face)

    def predict(face):
        return np.eye(7)[[DISPLAY_NAMES.index(shown[-1])]]

    rig.daemon.finder = Finder()
    monkeypatch.setattr(rig.daemon.classifier, "predict", predict)
    for _ in range(6 + int(gap * 10) + 2):
        rig.daemon.step()
        clock[0] += 0.1
    rig.press()
    rig.daemon.step()
    monkeypatch.undo()
    assert [(r["emotion"], r["confidence"]) for r in rig.store.rows()] == [("Happy", 1.0)], where
    assert released == [None, second]  # a new customer: no one keeps a release; then the face logged has no lead
    rig.close()


def test_a_slow_pi_averages_one_customer_over_frames_further_apart_than_the_face_gap(model, face_folder, tmp_path,
                                                                                     monkeypatch):
    """On a slow Pi each step may take longer than the face gap (0.5 s); the same face in frame after
    frame, with none missed between, is still one customer, so the press keeps their average."""
    from device import daemon as D

    rig = Rig(model, face_folder, tmp_path / "feedback.db")
    clock = moved_clock(monkeypatch, D)
    box, seen = Box(100, 100, 200, 200, 0.9), iter(["Angry", "Happy", "Happy"])

    class Finder:
        def find(self, frame):
            self.emotion = next(seen)
            return box

        def release(self, face):
            pass

    finder = rig.daemon.finder = Finder()
    monkeypatch.setattr(rig.daemon.classifier, "predict", lambda face: np.eye(7)[[DISPLAY_NAMES.index(finder.emotion)]])
    for _ in range(2):
        rig.daemon.step()
        clock[0] += 0.8  # one detection step on a slow Pi
    rig.press()
    rig.daemon.step()
    monkeypatch.undo()
    assert [(r["emotion"], r["confidence"]) for r in rig.store.rows()] == [("Angry", 0.5)]  # both frames, tied
    rig.close()


@pytest.mark.parametrize(("seen", "step_s", "logged"), [
    (["Angry", None, "Happy"], 1 / 3, ("Angry", 0.5)),  # missed in one frame (a blink): 0.33 s without a face
    (["Angry", None, "Happy"], 0.8, ("Angry", 0.5)),  # a Zero 2 W's one missed detection: 0.8 s, still one frame
    (["Angry", None, None, "Happy"], 1 / 3, ("Happy", 1.0)),  # 0.67 s and two frames without one: the next customer
])
def test_on_a_slow_pi_a_face_missed_in_one_frame_is_the_same_customer(model, face_folder, tmp_path, monkeypatch,
                                                                      seen, step_s, logged):
    """3 frames a second (a Pi Zero 2 W): the frames before and after a blink are 0.67 s apart, over
    the 0.5 s face gap, yet the customer was out of sight for one frame only. The next customer,
    in the same spot, is followed afresh: the last one's release gives them no lead to lose."""
    from device import daemon as D

    rig = Rig(model, face_folder, tmp_path / "feedback.db", **{"smoothing.window_s": 2.0})  # 3 frames at 0.8 s
    clock = moved_clock(monkeypatch, D)
    box = Box(100, 100, 200, 200, 0.9)
    finder = script_faces(rig, monkeypatch, box, [*seen, None])  # None: the frame after the press
    for _ in seen:
        rig.daemon.step()
        clock[0] += step_s
    rig.press()
    rig.daemon.step()
    monkeypatch.undo()
    assert [(r["emotion"], r["confidence"]) for r in rig.store.rows()] == [logged]
    assert finder.released == ([None] if logged[0] == "Happy" else []) + [box]  # then the press's own
    rig.close()


def test_the_customer_who_pressed_while_looking_down_keeps_no_lead_when_looking_up(model, face_folder, tmp_path,
                                                                                    monkeypatch):
    """Looking down at the button, the customer is out of sight for two frames and presses; looking up
    in the same spot is no new customer to follow afresh: their release stands, so the next customer
    need not outscore them by far."""
    from device import daemon as D

    rig = Rig(model, face_folder, tmp_path / "feedback.db")
    clock = moved_clock(monkeypatch, D)
    box = Box(100, 100, 200, 200, 0.9)
    finder = script_faces(rig, monkeypatch, box, ["Angry", None, None, "Angry"])
    for i in range(4):
        if i == 2:
            rig.press()  # between the two frames without a face
        rig.daemon.step()
        clock[0] += 1 / 3
    monkeypatch.undo()
    assert rig.store.count() == 1 and finder.released == [box]  # the press's own, not undone
    rig.close()


def test_feedback_is_logged_while_the_display_is_unplugged(model, face_folder, tmp_path, caplog):
    from luma.core.device import dummy
    from luma.core.error import DeviceNotFoundError

    class Unplugged(dummy):  # luma's dummy panel, its cable pulled: every write fails
        calls = 0

        def display(self, image):
            self.calls += 1
            raise DeviceNotFoundError("I2C device not found on address: 0x3C")

    rig = Rig(model, face_folder, tmp_path / "feedback.db")
    rig.daemon.display = Display(Unplugged(width=128, height=64, mode="1"))
    rig.steps(2)
    rig.press()
    rig.steps(2)
    assert rig.store.count() == 1  # the customer's press counts though nobody sees the thank-you
    assert rig.daemon.display.device.calls == 4  # tried again on every frame
    assert len([r for r in caplog.records if "0x3C" in r.getMessage()]) == 1  # one ERROR line, not one a frame
    rig.close()


def test_failing_source_recovers(caplog):
    caplog.set_level("INFO", logger="feedbackd")
    good = np.zeros((4, 4, 3), np.uint8)
    frames = iter([good, SourceError("camera 0: unplugged")] + [good] * 5)
    opened = []

    class Flaky:
        def read(self):
            item = next(frames)
            if isinstance(item, Exception):
                raise item
            return item

        def close(self):
            pass

    def opener():
        opened.append(1)
        if len(opened) == 2:
            raise SourceError("camera 0: not there yet")
        return Flaky()

    src = ReconnectingSource(opener, max_backoff_s=0.02)
    assert src.read() is not None
    assert src.read() is None and "unplugged" in src.error
    deadline = time.monotonic() + 2
    frame = None
    while frame is None and time.monotonic() < deadline:
        frame = src.read()
        time.sleep(0.005)
    assert frame is not None and src.error is None and len(opened) == 3
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("camera: ")]
    assert said == ["camera: camera 0: unplugged; retrying", "camera: camera 0: not there yet; retrying",
                    "camera: frames again"]  # why the screen said "Camera error", each reason once


def test_a_camera_stuck_at_the_stop_still_lets_the_button_spare_file_and_log_close(tmp_path, monkeypatch, caplog,
                                                                                     capsys):
    """A capture that never returns makes the camera's close raise SourceStuck at the stop: the other
    parts are closed all the same and the stop logged, and the exit (2, naming the camera) says so."""
    import device.daemon as D

    closed = []

    class StuckCamera:
        error = None

        def __init__(self, *args, **kwargs) -> None:
            pass

        def close(self) -> None:
            closed.append("camera")
            raise SourceStuck("Pi camera: a capture has not returned in 3 s after the stop and holds the camera")

    button = mock_button()
    monkeypatch.setattr(button, "close", lambda: closed.append("button"))
    monkeypatch.setattr(cli, "open_button", lambda cfg, pin_factory=None: button)
    monkeypatch.setattr(cli, "no_core_dumps", lambda: None)  # not pytest's own process
    monkeypatch.setattr(cli.signal, "signal", lambda *_: None)  # nor its signal handlers
    monkeypatch.setattr(cli.EmotionClassifier, "from_config", lambda cfg: SimpleNamespace(
        manifest=SimpleNamespace(display_names=DISPLAY_NAMES), path=Path("m"), sha256="ab"))
    monkeypatch.setattr(cli.FaceDetector, "from_config", lambda cfg: None)
    monkeypatch.setattr(sources, "ReconnectingSource", StuckCamera)
    monkeypatch.setattr(D.Daemon, "run", lambda self, stop: None)  # stopped at once
    caplog.set_level("INFO", logger="feedbackd")
    db = tmp_path / "f.db"
    args = ["run", "--db", str(db), "--display", "none", "--button", "none", "--source", "images", "--camera-path",
            str(tmp_path)]
    assert cli.main(args) == 2
    assert "feedbackd: error: Pi camera: a capture has not returned" in capsys.readouterr().err
    assert closed == ["camera", "button"] and "stopped: 0 entries stored this run" in caplog.text
    assert not cli.spare.in_use(beside(db)) and not Path(f"{db}-wal").exists()  # the spare and the log closed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_exits_zero_within_the_units_stop_timeout(model, face_folder, tmp_path, sig):
    config = tmp_path / "config.toml"
    config.write_text("[daemon]\nstats_interval_s = 1\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "device.cli", "run", "--config", str(config), "--source", "images", "--camera-path",
         str(face_folder), "--display", "none", "--button", "none", "--db", str(tmp_path / "f.db"), "--model",
         str(model)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # wait until the loop has run a stats interval
        lines.append(line)
        if "stats: " in line:
            break
    assert proc.poll() is None, "".join(lines)
    seen = re.search(r"stats: ([\d.]+) frames/s, (\d+) with a face, 0 entries;", lines[-1])
    assert seen and float(seen[1]) > 0 and int(seen[2]) >= 1, lines[-1]  # it read the photo and found its face
    # systemd SIGKILLs a unit still running after TimeoutStopSec: half of it, the rest left for a stop that
    # stores entries first (not a tighter bound a loaded CI machine could miss)
    stop_s = int(re.search(r"^TimeoutStopSec=(\d+)$", (ROOT / "systemd/feedbackd.service").read_text(), re.M)[1])
    proc.send_signal(sig)
    assert proc.wait(timeout=stop_s / 2) == 0
    assert "stopped: 0 entries stored this run" in proc.stderr.read()  # after the camera was released


def test_analyze_json_finds_the_face(model):
    r = subprocess.run([sys.executable, "-m", "device.cli", "analyze", "--json", "--model", str(model), str(photo())],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["file"] == str(photo()) and len(result["faces"]) == 1
    face = result["faces"][0]
    x0, y0, x1, y1 = face["box"]
    assert 150 < x0 < x1 < 380 and 90 < y0 < y1 < 360  # Grace Hopper's face in the 512x600 photo
    assert result["emotion"] == face["emotion"] and abs(sum(face["probabilities"].values()) - 1) < 0.05
    assert face["emotion"] == max(face["probabilities"], key=face["probabilities"].get)
    assert face["rating"] == load_config()["rating"]["map"][face["emotion"]]


def test_analyze_says_why_an_image_was_not_read(model, tmp_path, capsys):
    (tmp_path / "notes.jpg").write_text("not a photo")
    args = ["analyze", "--model", str(model), str(tmp_path / "missing.jpg"), str(tmp_path / "notes.jpg"), str(tmp_path)]
    assert cli.main(args) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{tmp_path / 'missing.jpg'}: cannot read: No such file or directory",
                   f"{tmp_path / 'notes.jpg'}: cannot decode image", f"{tmp_path}: cannot read: Is a directory"]


def test_summary_gives_the_store_owner_each_day_at_a_glance(tmp_path, capsys):
    log = FeedbackLog(tmp_path / "f.db")
    noon = datetime(2026, 11, 30, 12).astimezone()  # local noon: the same local dates in any time zone
    for day, emotion, rating in ((0, "Happy", 5), (0, "Happy", 5), (0, "Sad", 2), (1, "Neutral", 3)):
        log.add(Entry(emotion, rating, 0.8, {emotion: 0.8}, "ab", "till-1"), noon + timedelta(days=day))
    log.close()
    assert cli.main(["summary", "--db", str(tmp_path / "f.db")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "date       entries rating     Happy   Neutral       Sad",
        "2026-11-30       3   4.00       67%        0%       33%",
        "2026-12-01       1   3.00        0%      100%        0%",
        "all              4   3.75       50%       25%       25%",
    ]
    assert cli.main(["summary", "--db", str(tmp_path / "f.db"), "--since", "2026-12-01"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["2026-12-01       1   3.00      100%",
                                                        "all              1   3.00      100%"]
    assert cli.main(["summary", "--db", str(tmp_path / "f.db"), "--until", "2026-11-01"]) == 0
    assert capsys.readouterr().out == "no entries in that period\n"
    assert cli.main(["summary", "--db", str(tmp_path / "none.db")]) == 2
    assert "none.db: no feedback log here" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
    with pytest.raises(SystemExit) as stop:  # swapped dates: not an empty report that looks genuine
        cli.main(["summary", "--db", str(tmp_path / "f.db"), "--since", "2026-12-01", "--until", "2026-11-30"])
    assert stop.value.code == 2 and "--since 2026-12-01 is after --until 2026-11-30" in capsys.readouterr().err
    log = FeedbackLog(tmp_path / "f.db")
    log.add(Entry("Sad", 2, 0.8, {"Sad": 0.8}, "ab", "till-1", clock_synced=False), noon)  # after a power cut
    log.close()
    assert cli.main(["summary", "--db", str(tmp_path / "f.db")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "1 of these entries were stored before the clock had network time, with no RTC to set it: their dates and "
        "times may be wrong (clock_synced = no in the export)")
    log = FeedbackLog(tmp_path / "f.db")
    log.add(Entry("Angry", 1, 0.3, {"Angry": 0.3}, "ab", "till-1"), noon)  # the screen said "Not sure"
    log.add(Entry("Happy", 5, 0.4, {"Happy": 0.4}, "ab", "till-1"), noon)  # at the threshold: sure
    log.close()
    assert cli.main(["summary", "--db", str(tmp_path / "f.db")]) == 0
    assert ("1 of these entries are under today's smoothing.min_confidence (40%), which the kiosk thanks as "
            '"Not sure": each is counted under the emotion the model found most likely'
            ) in capsys.readouterr().out.splitlines()


def test_summary_by_week_month_or_hour_of_the_day(tmp_path, capsys):
    """A season of days is too long to read: ISO weeks (one crosses the new year), months, and the hours
    of the day over the period, when staff plan who stands at the till."""
    db = tmp_path / "f.db"
    log = FeedbackLog(db)
    for when, emotion, rating in ((datetime(2026, 12, 27, 9, 30), "Happy", 5),  # a Sunday: week 52
                                  (datetime(2026, 12, 28, 9, 10), "Sad", 2),  # Monday: 2026's week 53 ...
                                  (datetime(2027, 1, 2, 17, 45), "Happy", 5),  # ... to Sunday 2027-01-03
                                  (datetime(2027, 1, 4, 17, 5), "Neutral", 3)):  # 2027's week 1
        log.add(Entry(emotion, rating, 0.8, {emotion: 0.8}, "ab", "till-1", rating_max=5), when.astimezone())
    log.close()
    scale = "ratings are out of 5, the scale of the log's newest entry"
    tables = {
        "week": ["week       entries rating     Happy   Neutral       Sad",
                 "2026-W52         1   5.00      100%        0%        0%",
                 "2026-W53         2   3.50       50%        0%       50%",
                 "2027-W01         1   3.00        0%      100%        0%"],
        "month": ["month      entries rating     Happy   Neutral       Sad",
                  "2026-12          2   3.50       50%        0%       50%",
                  "2027-01          2   4.00       50%       50%        0%"],
        "hour": ["hour       entries rating     Happy   Neutral       Sad",
                 "09:00            2   3.50       50%        0%       50%",
                 "17:00            2   4.00       50%       50%        0%"],
    }
    for by, table in tables.items():
        assert cli.main(["summary", "--db", str(db), "--by", by]) == 0
        assert capsys.readouterr().out.splitlines() == [
            *table, "all              4   3.75       50%       25%       25%", scale]
    assert cli.main(["summary", "--db", str(db), "--by", "week", "--since", "2027-01-01"]) == 0  # a week cut short
    assert capsys.readouterr().out.splitlines()[1:3] == ["2026-W53         1   5.00      100%        0%",
                                                         "2027-W01         1   3.00        0%      100%"]
    with contextlib.closing(sqlite3.connect(db)) as raw, raw:  # hand-edited: a date and a time that name none,
        raw.execute("UPDATE entries SET local_date = '2026-12-32' WHERE id = 1")
        raw.execute("UPDATE entries SET local_time = 'noon' WHERE id = 4")
        raw.execute("UPDATE entries SET local_date = '0999-12-31' WHERE id = 2")  # and a year of three digits
    assert cli.main(["summary", "--db", str(db)]) == 0  # by day, each row as stored
    assert capsys.readouterr().out.splitlines()[1:6] == [
        "0999-12-31       1   2.00        0%        0%      100%",
        "2026-12-32       1   5.00      100%        0%        0%",
        "2027-01-02       1   5.00      100%        0%        0%",
        "2027-01-04       1   3.00        0%      100%        0%",
        "all              4   3.75       50%       25%       25%"]
    for by, labels in (("week", ["1000-W01", "2026-W53", "2027-W01"]), ("month", ["0999-12", "2027-01"]),
                       ("hour", ["09:00", "17:00"])):  # 2026-12-32 has no week or month, "noon" no hour
        assert cli.main(["summary", "--db", str(db), "--by", by]) == 0
        out, err = capsys.readouterr()
        rows = [line.split() for line in out.splitlines()[1:len(labels) + 2]]
        assert [r[0] for r in rows] == [*labels, "all"] and rows[-1][1] == "3"
        assert err.startswith(f"feedbackd: 1 entries in {db} are left out of the summary: a field holds a value")
    with pytest.raises(SystemExit) as stop:
        cli.main(["summary", "--db", str(db), "--by", "year"])
    assert stop.value.code == 2 and "argument --by: invalid choice: 'year'" in capsys.readouterr().err


def test_summary_rates_a_changed_scales_entries_by_their_emotion_on_the_kiosks_map(tmp_path, capsys):
    """The README's 0-10 map is not the 5-star one doubled (Neutral 3 of 5, 5 of 10; Angry 1 of 5, 0
    of 10): converted in proportion, the same customers would read as 0.85 points less satisfied."""
    paper = {"Happy": 10, "Surprised": 8, "Neutral": 5, "Sad": 3, "Fearful": 3, "Disgusted": 1, "Angry": 0}
    config = tmp_path / "config.toml"
    config.write_text("[rating]\nmax = 10\n[rating.map]\n" + "".join(f"{k} = {v}\n" for k, v in paper.items()))
    log = FeedbackLog(tmp_path / "f.db")
    noon = datetime(2026, 11, 30, 12).astimezone()
    for day, (top, ratings) in enumerate(((5, DEFAULT_RATINGS), (10, paper))):  # the same seven customers
        for emotion in paper:
            log.add(Entry(emotion, ratings[emotion], 0.8, {emotion: 0.8}, "ab", "till-1", rating_max=top),
                    noon + timedelta(days=day))
    log.close()
    assert cli.main(["--config", str(config), "summary", "--db", str(tmp_path / "f.db")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines[1:4]] == ["4.29", "4.29", "4.29"]  # (10+8+5+3+3+1+0) / 7
    assert lines[4] == ("ratings are out of 10, the scale of the log's newest entry; 7 of these entries were rated on "
                        "another or by an earlier rating.map and are counted at their emotion's rating in today's")
    # Neutral re-rated on the same scale: one emotion must not count 5 in one month and 7 in the next.
    # Today's map is the log's own (each emotion's newest rating on the newest scale), so it takes
    # the kiosk's first entry rated by the new map, not the edited config alone
    config.write_text(config.read_text().replace("Neutral = 5", "Neutral = 7"))
    assert cli.main(["--config", str(config), "summary", "--db", str(tmp_path / "f.db")]) == 0
    assert [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:4]] == ["4.29", "4.29", "4.29"]
    log = FeedbackLog(tmp_path / "f.db")
    log.add(Entry("Neutral", 7, 0.8, {"Neutral": 0.8}, "ab", "till-1", rating_max=10), noon + timedelta(days=1))
    log.close()
    for run in (["--config", str(config)], []):  # the same on a PC with the shipped config
        assert cli.main([*run, "summary", "--db", str(tmp_path / "f.db")]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[2] for line in lines[1:4]] == ["4.57", "4.88", "4.73"]  # (10+8+7+3+3+1+0 + 7) / 8
        assert "; 8 of these entries were rated on another or by an earlier rating.map" in lines[4]


def test_summary_takes_todays_map_from_the_log_not_the_config_of_the_machine_running_it(tmp_path, capsys):
    """A log copied to a PC and summed up there with the shipped config (or --config /dev/null)
    reads as on the kiosk: an entry rated by the kiosk's own rating.map is not re-rated by another."""
    kiosk = tmp_path / "kiosk.toml"
    kiosk.write_text("[rating.map]\nNeutral = 4\n")
    log = FeedbackLog(tmp_path / "f.db")
    noon = datetime(2026, 11, 30, 12).astimezone()
    for i, (emotion, rating) in enumerate((("Neutral", 4), ("Neutral", 4), ("Happy", 5))):
        log.add(Entry(emotion, rating, 0.9, {emotion: 0.9}, "ab", "pi", True, 5), noon + timedelta(minutes=i))
    log.close()
    tables = []
    for run in (["--config", str(kiosk)], [], ["--config", os.devnull]):
        assert cli.main([*run, "summary", "--db", str(tmp_path / "f.db")]) == 0
        tables.append(capsys.readouterr().out.splitlines())
    assert tables[0] == tables[1] == tables[2] == [
        "date       entries rating     Happy   Neutral",
        "2026-11-30       3   4.33       33%       67%",  # (4 + 4 + 5) / 3
        "all              3   4.33       33%       67%",
        "ratings are out of 5, the scale of the log's newest entry",
    ]


def test_summary_shows_ratings_from_a_changed_scale_on_the_newest_one(tmp_path, capsys):
    """A shop that moved from 5 stars to the paper's 0-10 scale: a mean of both, unconverted, would
    read as a fall in satisfaction. Entries from before the scale was logged are on the first one
    logged (a scale was changed with a fresh log then), and every period is shown on one scale."""
    log = FeedbackLog(tmp_path / "f.db")
    noon = datetime(2026, 11, 30, 12).astimezone()
    log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", "till-1"), noon)  # before the scale was logged
    log.add(Entry("Sad", 2, 0.8, {"Sad": 0.8}, "ab", "till-1", rating_max=5), noon)
    log.add(Entry("Happy", 10, 0.8, {"Happy": 0.8}, "ab", "till-1", rating_max=10), noon + timedelta(days=1))
    log.add(Entry("Neutral", 5, 0.8, {"Neutral": 0.8}, "ab", "till-1", rating_max=10), noon + timedelta(days=1))
    log.close()
    # Happy's rating on the newest scale is in the log (10 of 10): its 5-star entries count at it; Sad's is not
    note = ("ratings are out of 10, the scale of the log's newest entry; 1 of these entries were rated on another "
            "or by an earlier rating.map and are counted at their emotion's rating in today's; 1 of these entries "
            "were rated on another and are converted in proportion\n1 of these entries were stored before the log "
            "kept each entry's scale: each is counted at its emotion's rating in today's rating.map")
    assert cli.main(["summary", "--db", str(tmp_path / "f.db")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "date       entries rating     Happy   Neutral       Sad",
        "2026-11-30       2   7.00       50%        0%       50%",  # (5 + 2) * 10/5 / 2
        "2026-12-01       2   7.50       50%       50%        0%",
        "all              4   7.25       50%       25%       25%",
        *note.splitlines(),
    ]
    assert cli.main(["summary", "--db", str(tmp_path / "f.db"), "--until", "2026-11-30"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["2026-11-30       2   7.00       50%       50%",
                                                        "all              2   7.00       50%       50%",
                                                        *note.splitlines()]


def test_summary_leaves_out_a_damaged_or_hand_edited_row_and_says_how_many(tmp_path, capsys):
    """`export` and `check` take a row holding a value of the wrong type (bytes a failing card changed,
    "=5" pasted back from a spreadsheet): the summary sums up the rest instead of a traceback."""
    db = tmp_path / "f.db"
    log = FeedbackLog(db)
    noon = datetime(2026, 11, 30, 12).astimezone()
    for emotion, rating in (("Happy", 5), ("Sad", 2), *(("Neutral", 3),) * 4):
        log.add(Entry(emotion, rating, 0.8, {emotion: 0.8}, "ab", "till-1", rating_max=5), noon)
    log.close()
    with contextlib.closing(sqlite3.connect(db)) as raw, raw:
        for row_id, column, value in ((3, "local_date", b"\xff\x00"), (4, "rating", "=5"), (5, "confidence", "high"),
                                      (6, "rating_max", "ten")):  # the newest scale too
            raw.execute(f"UPDATE entries SET {column} = ? WHERE id = ?", (value, row_id))
    assert cli.main(["summary", "--db", str(db)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "date       entries rating     Happy       Sad",
        "2026-11-30       2   3.50       50%       50%",
        "all              2   3.50       50%       50%",
        "ratings are out of 5, the scale of the log's newest entry",
    ]
    assert err == (f"feedbackd: 4 entries in {db} are left out of the summary: a field holds a value of the wrong "
                   "type or form (a damaged or hand-edited row); `feedbackd export` shows them\n")
    assert cli.main(["export", "--db", str(db)]) == 0  # as export does: these rows are no lost entries
    assert len(capsys.readouterr().out.splitlines()) == 7


def test_a_bit_flipped_in_one_entrys_text_costs_only_that_entry(tmp_path, capsys):
    """A failing card's flipped bit in one entry's text ('Sad' stored as b"\\xd3ad") leaves integrity_check
    "ok" but is no UTF-8: the summary leaves that entry out, export and salvage write its bytes escaped."""
    db = tmp_path / "f.db"
    log = FeedbackLog(db)
    noon = datetime(2026, 11, 30, 12).astimezone()
    for i, emotion in enumerate(("Happy", "Sad", "Neutral")):
        rating = {"Happy": 5, "Sad": 2, "Neutral": 3}[emotion]
        log.add(Entry(emotion, rating, 0.9, {emotion: 0.9}, "ab", "till-1", True, 5), noon + timedelta(minutes=i))
    log.close()
    with contextlib.closing(sqlite3.connect(db)) as raw, raw:
        raw.execute("UPDATE entries SET emotion = CAST(? AS TEXT) WHERE id = 2", (b"\xd3ad",))
    assert cli.main(["summary", "--db", str(db)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1:3] == ["2026-11-30       2   4.00       50%       50%",
                                     "all              2   4.00       50%       50%"]
    assert err.startswith(f"feedbackd: 1 entries in {db} are left out of the summary")
    for command in (["export"], ["export", "--salvage"]):
        assert cli.main([*command, "--db", str(db)]) == 0, command
        out = capsys.readouterr().out
        out.encode("utf-8", "strict")
        rows = list(csv.DictReader(io.StringIO(out)))
        assert [r["emotion"] for r in rows] == ["Happy", "b'\\xd3ad'", "Neutral"], command
        assert [r["id"] for r in rows] == ["1", "2", "3"] and rows[1]["device_id"] == "till-1", command
    with contextlib.closing(sqlite3.connect(db)) as raw, raw:  # its date damaged too, and a rating (5 -> 7)
        raw.execute("UPDATE entries SET local_date = CAST(? AS TEXT) WHERE id = 2", (b"2026-11-3\xb0",))
        raw.execute("UPDATE entries SET rating = 7.0 WHERE id = 3")
    assert cli.main(["export", "--salvage", "--until", "2026-12-31", "--db", str(db)]) == 0  # as SQLite compares
    assert [r["id"] for r in csv.DictReader(io.StringIO(capsys.readouterr().out))] == ["1", "2", "3"]
    assert cli.main(["summary", "--db", str(db)]) == 0
    assert "all              2   4.00" in capsys.readouterr().out  # the bad 7 is not made today's Neutral: 3


def test_a_log_path_naming_a_folder_says_to_name_the_file(tmp_path, capsys):
    """`--db /var/lib/feedbackd`: SQLite says only "disk I/O error" or "unable to open database file"."""
    message = f"{tmp_path}: a folder; name the log file, such as {tmp_path / 'feedback.db'}"
    for create in (True, False):
        with pytest.raises(StorageError) as e:
            FeedbackLog(tmp_path, create=create)
        assert str(e.value) == message
    assert cli.main(["export", "--db", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"feedbackd: error: {message}\n"
    assert list(tmp_path.iterdir()) == []


def test_export_csv(tmp_path, capsys):
    log = FeedbackLog(tmp_path / "f.db")
    log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", "pi"))
    log.close()
    assert cli.main(["export", "--db", str(tmp_path / "f.db")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("date,time,rating,emotion") and ",5.0,Happy," in lines[1]
    with pytest.raises(SystemExit) as stop:  # "2026-1-5" would compare as text and pick the wrong rows
        cli.main(["export", "--db", str(tmp_path / "f.db"), "--since", "2026-1-5"])
    assert stop.value.code == 2 and "'2026-1-5' is not a date written YYYY-MM-DD" in capsys.readouterr().err
    assert cli.main(["export", "--db", str(tmp_path / "f.db"), "--output", str(tmp_path / "no" / "f.csv")]) == 2
    assert "f.csv: cannot write the export" in capsys.readouterr().err
    for target in ("f.db", "f.db-wal", "f.db-shm", "f.db-journal", "f.db.spare"):  # a slip of tab completion
        assert cli.main(["export", "--db", str(tmp_path / "f.db"), "--output", str(tmp_path / target)]) == 2
        assert "that is the feedback log itself" in capsys.readouterr().err
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")  # a link to nowhere: not a traceback
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    for command in ("export", "summary"):
        assert cli.main([command, "--db", str(tmp_path / "loop1")]) == 2
        assert "loop1: cannot look for the log: Too many levels of symbolic links" in capsys.readouterr().err
    assert cli.main(["export", "--db", str(tmp_path / "f.db"), "--output", str(tmp_path / "loop2")]) == 0
    assert ",5.0,Happy," in (tmp_path / "loop2").read_text()  # the new file takes the name, as over any file
    assert FeedbackLog(tmp_path / "f.db").count() == 1


def test_export_never_writes_over_the_spare_files_set_aside_lines(tmp_path, capsys):
    """`feedback.db.spare.rejected` (tab completion's next name) may hold the only copy of entries
    customers were thanked for: an export over it would erase them."""
    db, rejected = tmp_path / "f.db", tmp_path / "f.db.spare.rejected"
    log = FeedbackLog(db)
    log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", "pi"))
    log.close()
    rejected.write_text('{"utc": "2026-11-30T12:00:00+00:00", "emotion": "Sad", "rat\n')
    assert cli.main(["export", "--db", str(db), "--output", str(rejected)]) == 2
    assert f"--output {rejected}: that is the feedback log itself" in capsys.readouterr().err
    assert rejected.read_text() == '{"utc": "2026-11-30T12:00:00+00:00", "emotion": "Sad", "rat\n'


@pytest.mark.parametrize("output", [".", "/", "{tmp}", "{tmp}/"])
def test_export_to_a_folder_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch, output):
    log = FeedbackLog(tmp_path / "f.db")
    log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", "pi"))
    log.close()
    monkeypatch.chdir(tmp_path)
    output = output.format(tmp=tmp_path)
    with pytest.raises(SystemExit) as stop:
        cli.main(["export", "--db", str(tmp_path / "f.db"), "--output", output])
    assert stop.value.code == 2
    assert f"--output {Path(output)}: a folder; name the file to write, such as " in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["f.db"]


def test_reports_name_the_entries_still_waiting_in_the_spare_file(tmp_path, capsys):
    """A full card: the daemon keeps entries in the spare file and stores them later; an export
    or summary read meanwhile lacks them, and says how many (whole lines only, as the daemon reads them)."""
    db, kept = tmp_path / "f.db", tmp_path / "f.db.spare"
    stored, at = Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", "pi"), datetime(2026, 11, 30, 11, tzinfo=UTC)
    log = FeedbackLog(db)
    log.add(stored, at)
    log.close()
    lines = [entry_json(Entry("Sad", 2, 0.7, {"Sad": 0.7}, "ab", "pi"), at + timedelta(hours=h)) for h in (1, 2)]
    lines.append(entry_json(stored, at))  # the log took it before the daemon cleared the spare: not waiting
    kept.write_bytes(("\n".join(lines) + f"\n{lines[0][:20]}").encode().ljust(SIZE, b"\0"))  # one cut short
    before = kept.read_bytes()
    note = f"feedbackd: 2 entries are waiting in {kept}, not in this {{}} yet\n"
    assert cli.main(["export", "--db", str(db)]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 2 and err == note.format("export")
    assert cli.main(["export", "--db", str(db), "--output", str(tmp_path / "f.csv")]) == 0
    assert capsys.readouterr().err == f"wrote 1 entries to {tmp_path / 'f.csv'}\n" + note.format("export")
    assert cli.main(["summary", "--db", str(db)]) == 0
    assert capsys.readouterr().err == note.format("summary")
    check = ["check", "--source", "demo", "--skip", "camera", "--skip", "detector", "--skip", "model",
             "--display", "none", "--button", "none", "--db", str(db)]
    assert cli.main(check) == 0
    assert f" MiB free; 2 entries are waiting in {kept}, for the log to take them" in capsys.readouterr().out
    assert kept.read_bytes() == before  # only read

    def full(path):
        raise cli.NoRoom(f"{path}: only 1.0 MiB free")

    real_room, cli.log_room = cli.log_room, full  # the card that filled: when entries wait there at all
    try:
        assert cli.main(check) == 1
    finally:
        cli.log_room = real_room
    assert "only 1.0 MiB free (1 entries, schema v" in (out := capsys.readouterr().out)
    assert f"integrity ok; 2 entries are waiting in {kept}, for the log to take them)" in out
    kept.rename(tmp_path / "moved")
    kept.mkdir()  # a spare that cannot be read: said, and the log's own check still passes
    assert cli.main(check) == 0
    out = capsys.readouterr().out
    assert f" MiB free; cannot read {kept} (Is a directory): entries waiting there, if any, are not counted\n" in out
    kept.rmdir()
    kept.write_bytes(bytes(SIZE))  # restored and cleared by the daemon: nothing to say
    assert cli.main(["summary", "--db", str(db)]) == 0
    assert capsys.readouterr().err == ""


def test_with_the_log_moved_aside_the_entries_waiting_in_the_spare_file_are_still_named(tmp_path, capsys):
    """README's advice for a log with a damaged header moves feedback.db aside: the spare file's entries
    then wait for a new log. `check` must not read as a card without feedback, nor a report as nothing."""
    db, kept = tmp_path / "f.db", tmp_path / "f.db.spare"
    at = datetime(2026, 11, 30, 11, tzinfo=UTC)
    lines = [entry_json(Entry("Sad", 2, 0.7, {"Sad": 0.7}, "ab", "pi"), at + timedelta(hours=h)) for h in (1, 2)]
    kept.write_bytes("".join(f"{line}\n" for line in lines).encode().ljust(SIZE, b"\0"))
    check = ["check", "--source", "demo", "--skip", "camera", "--skip", "detector", "--skip", "model",
             "--display", "none", "--button", "none", "--db", str(db)]
    assert cli.main(check) == 0
    assert (f"{db}: no log yet (the service creates it at its first start), " in (out := capsys.readouterr().out)
            and f" MiB free; 2 entries are waiting in {kept}, for the log to take them\n" in out)
    for report in ("export", "summary"):
        assert cli.main([report, "--db", str(db)]) == 2
        assert capsys.readouterr().err == (f"feedbackd: error: {db}: no feedback log here; 2 entries are waiting in "
                                           f"{kept}, for the log to take them at the service's next start\n")
    assert sorted(os.listdir(tmp_path)) == ["f.db.spare"]  # only read


@pytest.mark.parametrize("report", ["export", "summary"])
def test_a_report_to_a_closed_pipe_or_a_full_disk(tmp_path, report):
    log = FeedbackLog(tmp_path / "f.db")
    log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", "pi"))
    log.close()
    command = [sys.executable, "-m", "device.cli", report, "--db", str(tmp_path / "f.db")]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # `feedbackd export | head -0`: the reader is gone before the first line
    assert proc.wait(timeout=30) == 0 and "Traceback" not in proc.stderr.read()
    with open("/dev/full", "w") as full:  # `> /mnt/usb/f.csv` on a full stick
        r = subprocess.run(command, cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 2 and f"stdout: cannot write the {report}: No space left on device" in r.stderr
    assert "Traceback" not in r.stderr


def test_export_of_a_damaged_log_names_it_and_leaves_no_partial_csv(tmp_path, capsys):
    db = tmp_path / "f.db"
    log = FeedbackLog(db)
    for _ in range(300):  # enough rows for the table to span many pages
        log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab" * 32, "pi"))
    log.close()
    data = bytearray(db.read_bytes())
    page = 4096
    data[3 * page : len(data) - page] = b"\xff" * (len(data) - 4 * page)  # the header page intact
    db.write_bytes(bytes(data))
    out = tmp_path / "feedback.csv"
    out.write_text("yesterday's export\n")
    assert cli.main(["export", "--db", str(db), "--output", str(out)]) == 2
    assert f"{db}: cannot read the log" in capsys.readouterr().err
    assert out.read_text() == "yesterday's export\n"
    assert sorted(os.listdir(tmp_path)) == ["f.db", "feedback.csv"]
    assert cli.main(["export", "--db", str(db)]) == 2  # `> feedback.csv`: the shell's file stays empty too
    assert capsys.readouterr().out == ""
    check = ["check", "--db", str(db), *(f"--skip={p}" for p in cli.CHECK_PARTS if p != "storage")]
    assert cli.main(check) == 1  # the owner confirms the damage as the README says: the file is named
    assert f"FAIL storage        {db}: integrity_check failed: " in capsys.readouterr().out


def test_check_sends_the_owner_of_a_log_with_a_damaged_index_to_salvage(tmp_path, capsys):
    """A damage integrity_check reports without stopping (rows missing from an index) fails check
    with the command that rescues the entries, and that command gets every one of them."""
    db = tmp_path / "f.db"
    log = FeedbackLog(db)
    for _ in range(20):
        log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab" * 32, "pi"))
    log.close()
    raw = sqlite3.connect(db)  # the index now claims another column: its rows no longer match
    raw.execute("PRAGMA writable_schema=ON")
    raw.execute("UPDATE sqlite_master SET sql='CREATE INDEX entries_utc ON entries (rating)' WHERE name='entries_utc'")
    raw.commit()
    raw.close()
    check = ["check", "--db", str(db), *(f"--skip={p}" for p in cli.CHECK_PARTS if p != "storage")]
    assert cli.main(check) == 1
    out = capsys.readouterr().out
    assert f"FAIL storage        {db}: integrity_check failed ('feedbackd export --salvage' rescues" in out
    saved = tmp_path / "saved.csv"
    assert cli.main(["export", "--db", str(db), "--salvage", "--output", str(saved)]) == 0
    assert len(saved.read_text().splitlines()) == 21  # the header and all 20 entries


def test_export_writes_a_field_that_looks_like_a_formula_as_text(tmp_path, capsys):
    """A device id that starts like a spreadsheet formula is never run by Excel or LibreOffice."""
    db = tmp_path / "f.db"
    log = FeedbackLog(db)
    log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", '=HYPERLINK("http://x","till")'))
    log.add(Entry("Sad", -1, 0.8, {"Sad": 0.8}, "ab", "till-2"))  # a negative rating stays a number
    log.close()
    assert cli.main(["export", "--db", str(db)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["device_id"], r["rating"]) for r in rows] == [("'=HYPERLINK(\"http://x\",\"till\")", "5.0"),
                                                             ("till-2", "-1.0")]


def test_the_export_is_utf8_under_any_locale(tmp_path):
    """README tells the owner to import the CSV as UTF-8: under an ASCII or Latin-1 locale a till's
    name came out garbled, or stopped the export with a traceback."""
    db, out = tmp_path / "f.db", tmp_path / "out.csv"
    log = FeedbackLog(db)
    log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", "Kasse-Süd ①"))
    log.close()
    ascii_locale = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    export = [sys.executable, "-m", "device.cli", "export", "--config", "/dev/null", "--db", str(db)]
    said = subprocess.run(export, cwd=ROOT, env=ascii_locale, capture_output=True, check=True)
    assert "Kasse-Süd ①" in said.stdout.decode("utf-8")
    subprocess.run([*export, "--output", str(out)], cwd=ROOT, env=ascii_locale, capture_output=True, check=True)
    assert out.read_bytes() == said.stdout


def damaged_log(db: Path, entry: int) -> None:
    """A log of 300 entries whose table page holding `entry` has a failing SD card's garbage for a header."""
    log = FeedbackLog(db)
    for i in range(1, 301):
        log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab" * 32, f"till-{i:03d}"))
    log.close()
    data = bytearray(db.read_bytes())
    page = data.index(f"till-{entry:03d}".encode()) // 4096 * 4096
    data[page : page + 8] = b"\xff" * 8
    db.write_bytes(bytes(data))


def test_salvage_exports_every_entry_a_bad_page_left_readable(tmp_path, capsys):
    db = tmp_path / "f.db"
    damaged_log(db, 150)
    assert cli.main(["export", "--db", str(db)]) == 2
    said = capsys.readouterr()
    assert "'feedbackd export --salvage' rescues the entries still readable" in said.err
    assert said.out == ""  # not the 149 entries before the bad page, as if they were all
    out = tmp_path / "rescued.csv"
    assert cli.main(["export", "--db", str(db), "--salvage", "--output", str(out)]) == 1  # not the whole log
    lost = int(capsys.readouterr().err.split("feedbackd: ")[1].split()[0])
    rows = list(csv.DictReader(out.open()))
    ids = [int(r["id"]) for r in rows]
    assert 0 < lost < 50 and len(rows) + lost == 300 and 150 not in ids and ids == sorted(ids)
    assert all(r["device_id"] == f"till-{int(r['id']):03d}" for r in rows)  # each row whole, none mixed up
    assert cli.main(["export", "--db", str(db), "--salvage", "--since", "2000-01-01"]) == 1
    assert capsys.readouterr().out.count("\n") == len(rows) + 1


def test_salvage_finds_the_rows_a_damaged_inner_page_hides_from_a_lookup(tmp_path, capsys):
    """A bad key on the table's inner page sends a lookup by id to the wrong leaf: those rows are
    found by a scan of the leaves, and an id missing from the table is counted, not skipped."""
    db = tmp_path / "f.db"
    log = FeedbackLog(db)
    for i in range(1, 301):
        log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab" * 32, f"till-{i:03d}"))
    log.close()
    with sqlite3.connect(db) as con:
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'entries'").fetchone()[0]
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    data = bytearray(db.read_bytes())
    page = (root - 1) * page_size
    assert data[page] == 0x05  # an interior table page: cells of a child page number and a key
    cells = [page + int.from_bytes(data[page + 12 + 2 * i: page + 14 + 2 * i], "big") for i in range(3)]
    key = next(c + 4 for c in cells if 10 < data[c + 4] < 0x80)  # a one-byte key
    data[key] -= 5  # the five ids below it now look for their rows in the next leaf
    db.write_bytes(bytes(data))
    out = tmp_path / "rescued.csv"
    assert cli.main(["export", "--db", str(db), "--salvage", "--output", str(out)]) == 0
    assert [int(r["id"]) for r in csv.DictReader(out.open())] == list(range(1, 301))
    capsys.readouterr()
    with sqlite3.connect(tmp_path / "f.db") as con:  # a row gone from its page, as the table sees it
        con.execute("DELETE FROM entries WHERE id = 7")
    con.close()
    assert cli.main(["export", "--db", str(db), "--salvage", "--output", str(out)]) == 1
    assert "feedbackd: 1 entries could not be read" in capsys.readouterr().err
    assert 7 not in [int(r["id"]) for r in csv.DictReader(out.open())]
    data = bytearray(db.read_bytes())  # the first leaf's pointer now names the second: the scan reads it twice
    data[cells[0]: cells[0] + 4] = data[cells[1]: cells[1] + 4]
    db.write_bytes(bytes(data))
    assert cli.main(["export", "--db", str(db), "--salvage", "--output", str(out)]) == 1
    lost = int(capsys.readouterr().err.split("feedbackd: ")[1].split()[0])
    ids = [int(r["id"]) for r in csv.DictReader(out.open())]
    assert ids == sorted(set(ids)) and 1 not in ids and len(ids) + lost == 300  # each once, each loss counted


def _few_lookups(monkeypatch) -> None:
    """A salvage that would look up an id for each of a garbage count's billions fails at once, not in days."""
    lookup, made = FeedbackLog._lookup, []

    def counted(self, entry_id):
        made.append(entry_id)
        assert len(made) <= 1000, "a lookup for every id up to a garbage count"
        return lookup(self, entry_id)

    monkeypatch.setattr(FeedbackLog, "_lookup", counted)


@pytest.mark.parametrize("seq", [3, 3.0, "5", 2**40])
def test_salvage_reads_past_a_stale_or_garbage_autoincrement_seq(tmp_path, capsys, monkeypatch, seq):
    """sqlite_sequence's page is rewritten by every insert: a stale, mistyped or garbage seq there
    loses no readable entry, is no traceback, and keeps no Pi looking up ids for days."""
    db = tmp_path / "f.db"
    log = FeedbackLog(db)
    for i in range(1, 6):
        log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", f"till-{i}"))
    log.close()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'entries'", (seq,))
    con.close()
    out = tmp_path / "rescued.csv"
    _few_lookups(monkeypatch)
    assert cli.main(["export", "--db", str(db), "--salvage", "--output", str(out)]) == 0
    assert [int(r["id"]) for r in csv.DictReader(out.open())] == [1, 2, 3, 4, 5]
    assert capsys.readouterr().err == f"wrote 5 entries to {out}\n"


def test_salvage_with_a_garbage_last_rowid_trusts_the_seq(tmp_path, capsys, monkeypatch):
    """A changed byte in the last leaf's rowid makes max(id) huge: the seq counts the entries, the
    damaged row is still exported by a scan, and one id, not thousands, is missing."""
    db = tmp_path / "f.db"
    log = FeedbackLog(db)
    for i in range(1, 6):
        log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", f"till-{i}"))
    log.close()
    with sqlite3.connect(db) as con:  # as the damaged rowid reads; the seq, on its own page, still says 5
        con.execute("UPDATE entries SET id = ? WHERE id = 5", (2**40,))
    con.close()
    out = tmp_path / "rescued.csv"
    _few_lookups(monkeypatch)
    assert cli.main(["export", "--db", str(db), "--salvage", "--output", str(out)]) == 1
    assert [int(r["id"]) for r in csv.DictReader(out.open())] == [1, 2, 3, 4, 2**40]
    assert "1 entries" in capsys.readouterr().err.split("feedbackd: ")[1]


def test_salvage_with_the_last_leaf_unreadable_counts_on_the_seq_or_says_it_cannot(tmp_path, capsys):
    """max(id) reads the last leaf, which every insert rewrites: with it unreadable, a sound seq still
    counts its entries as lost, and a garbage one is an error, not an export that looks whole."""
    db = tmp_path / "f.db"
    damaged_log(db, 300)  # the last leaf
    out = tmp_path / "rescued.csv"
    assert cli.main(["export", "--db", str(db), "--salvage", "--output", str(out)]) == 1
    lost = int(capsys.readouterr().err.split("feedbackd: ")[1].split()[0])
    assert 0 < lost < 50 and len(list(csv.DictReader(out.open()))) + lost == 300
    with sqlite3.connect(db) as con:
        con.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'entries'", (2**40,))
    con.close()
    assert cli.main(["export", "--db", str(db), "--salvage", "--output", str(out)]) == 2
    assert f"{db}: cannot tell how many entries the log held: " in capsys.readouterr().err


def test_export_writes_a_damaged_rows_stray_values_as_text(tmp_path, capsys):
    """A failing card's stray bytes in a row (or a hand edit) are exported as they are, escaped,
    not a traceback with no CSV."""
    db = tmp_path / "f.db"
    log = FeedbackLog(db)
    for till in ("pi-1", "pi-2"):
        log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", till))
    log.close()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE entries SET clock_synced = 2, local_date = X'ff00' WHERE id = 1")
    con.close()
    for command in (["export"], ["export", "--salvage", "--since", "2000-01-01"]):
        assert cli.main([*command, "--db", str(db)]) == 0, command
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert [r["clock_synced"] for r in rows] == ["2", ""] and rows[1]["device_id"] == "pi-2", command


def test_export_writes_a_damaged_rows_formula_in_any_column_as_text(tmp_path, capsys):
    """A hand edit or a failing card may leave text starting like a formula in any column, dates and
    numbers' included: each is written as text a spreadsheet never runs, while a number stays one."""
    db = tmp_path / "f.db"
    log = FeedbackLog(db)
    for till in ("pi-1", "pi-2"):
        log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", till))
    log.close()
    edited = {"local_date": "=1+1", "local_time": "+cmd|' /c calc'!A0", "utc": "@SUM(A1)", "probabilities": "-2+3",
              "rating": "=5", "confidence": "-cmd", "rating_max": "+5x"}  # not numbers: the REAL columns keep text
    with sqlite3.connect(db) as con:
        con.execute(f"UPDATE entries SET {', '.join(f'{k} = ?' for k in edited)} WHERE id = 1", list(edited.values()))
        con.execute("UPDATE entries SET rating = -1, confidence = -0.5, rating_max = -7 WHERE id = 2")
    con.close()
    assert cli.main(["export", "--db", str(db)]) == 0
    first, second = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert {k: first[k] for k in ("date", "time", "utc", "probabilities", "rating", "confidence", "rating_max")} == {
        "date": "'=1+1", "time": "'+cmd|' /c calc'!A0", "utc": "'@SUM(A1)", "probabilities": "'-2+3",
        "rating": "'=5", "confidence": "'-cmd", "rating_max": "'+5x"}
    assert (second["rating"], second["confidence"], second["rating_max"]) == ("-1.0", "-0.5", "-7.0")


def test_export_since_and_until_are_inclusive_local_dates(tmp_path, capsys, monkeypatch):
    """Tokyo evenings in UTC are the next morning there: the store's date is the one asked for."""
    db = tmp_path / "f.db"
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        log = FeedbackLog(db)
        for day in (3, 6, 9):  # 20:00 UTC, 05:00 the next day in Tokyo
            log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", "pi"), datetime(2026, 11, day, 20, tzinfo=UTC))
        log.close()

        def exported(*flags: str) -> list[str]:
            assert cli.main(["export", "--db", str(db), *flags]) == 0
            return [line.split(",")[0] for line in capsys.readouterr().out.splitlines()[1:]]

        dates = ["2026-11-04", "2026-11-07", "2026-11-10"]
        assert exported() == dates
        assert exported("--since", dates[1]) == dates[1:]
        assert exported("--until", dates[1]) == dates[:2]
        assert exported("--since", dates[1], "--until", dates[1]) == [dates[1]]
        # the day before each local date is its UTC date: neither flag reads that
        assert exported("--since", "2026-11-06") == dates[1:]
        assert exported("--until", "2026-11-06") == dates[:1]
    finally:
        monkeypatch.undo()
        time.tzset()


def test_command_line_flags_override_the_config_file(tmp_path, capsys):
    in_file, in_flag = tmp_path / "file.db", tmp_path / "flag.db"
    log = FeedbackLog(in_flag)
    log.add(Entry("Sad", 2, 0.7, {"Sad": 0.7}, "ab", "pi"))
    log.close()
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\npath = "{in_file}"\n')
    assert cli.main(["--config", str(config), "export", "--db", str(in_flag)]) == 0
    assert ",2.0,Sad," in capsys.readouterr().out and not in_file.exists()


def test_a_model_flag_is_read_from_the_folder_it_was_typed_in(tmp_path, monkeypatch):
    """`feedbackd analyze --model ./mine.tflite` from a folder of one's own: that folder's file, not
    the checkout's (where the config's model.path, a shipped file, is looked up)."""
    monkeypatch.chdir(tmp_path)
    args = cli.parse_args(["check", "--model", "mine.tflite", "--detector-dir", "face"])
    cfg = cli.config_from(args)
    assert cfg["model"]["path"] == str(tmp_path / "mine.tflite")
    assert cfg["detector"]["dir"] == str(tmp_path / "face")
    assert cli.config_from(cli.parse_args(["check"]))["model"]["path"].startswith(str(ROOT))

def test_clock_synchronization_is_read_from_timesyncd(tmp_path):
    from device.clock import clock_synced

    run, rtc = tmp_path / "timesync", tmp_path / "rtc0"  # no RTC
    assert clock_synced(run, rtc) is None  # no systemd-timesyncd: unknown
    run.mkdir()
    assert clock_synced(run, rtc) is False  # timesyncd runs but has not reached a time server
    (run / "synchronized").touch()
    assert clock_synced(run, rtc) is True


def test_an_offline_kiosk_with_an_rtc_battery_trusts_the_clock_the_rtc_set(tmp_path):
    """A Pi 5 with its battery, never online: the kernel set the clock from the RTC at boot. One
    whose RTC lost its time (no battery, a power cut) starts at 1970: fake-hwclock's time then is a guess."""
    from device.clock import clock_source, clock_synced, describe

    run, rtc = tmp_path / "timesync", tmp_path / "rtc0"
    run.mkdir()  # timesyncd runs, no time server in reach
    rtc.mkdir()
    for hctosys, since_epoch, trusted in (("1", datetime(2026, 11, 30, tzinfo=UTC), True),
                                          ("0", datetime(2026, 11, 30, tzinfo=UTC), False),  # set by fake-hwclock
                                          ("1", datetime(1970, 1, 1, 0, 5, tzinfo=UTC), False)):  # RTC reset
        (rtc / "hctosys").write_text(f"{hctosys}\n")
        (rtc / "since_epoch").write_text(f"{int(since_epoch.timestamp())}\n")
        assert clock_synced(run, rtc) is trusted
    (rtc / "since_epoch").write_text(f"{int(datetime(2026, 11, 30, tzinfo=UTC).timestamp())}\n")
    assert describe(clock_source(run, rtc)) == "set from the RTC at boot (kept by its battery; no network time since)"
    assert clock_synced(tmp_path / "chrony", rtc) is True  # no timesyncd, the RTC alone
    (run / "synchronized").touch()
    assert describe(clock_source(run, rtc)) == "synchronized with network time since boot"


@pytest.mark.parametrize("synced, shown", [(False, "no"), (True, "yes")])  # a Pi back from a power cut, offline
def test_entries_record_whether_the_clock_was_synchronized(model, face_folder, tmp_path, monkeypatch, capsys,
                                                            synced, shown):
    from device import daemon

    monkeypatch.setattr(daemon, "clock_synced", lambda: synced)
    rig = Rig(model, face_folder, tmp_path / "f.db")
    rig.steps(2)
    rig.press()
    rig.steps(1)
    rig.close()
    assert cli.main(["export", "--db", str(tmp_path / "f.db")]) == 0
    [row] = csv.DictReader(capsys.readouterr().out.splitlines())
    assert row["clock_synced"] == shown and row["rating_max"] == "5.0"  # and the scale it was rated on


def test_a_version_1_log_is_migrated_and_keeps_its_entries(tmp_path, capsys):
    from device.storage import MIGRATIONS

    db = sqlite3.connect(tmp_path / "f.db")  # a log written by the first release
    db.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    db.execute("INSERT INTO entries (utc, local_date, local_time, emotion, rating, confidence, probabilities,"
               " model_sha256, device_id) VALUES ('2026-11-01T09:00:00.000000Z', '2026-11-01', '10:00:00',"
               " 'Happy', 5, 0.9, '{}', 'ab', 'pi')")
    db.commit()
    db.close()
    before = (tmp_path / "f.db").read_bytes()
    assert cli.main(["export", "--db", str(tmp_path / "f.db")]) == 0  # reading changes nothing
    assert capsys.readouterr().out.splitlines()[1].startswith("2026-11-01,10:00:00,5.0,Happy,")
    assert cli.main(["export", "--salvage", "--db", str(tmp_path / "f.db")]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith(",1,,")  # id 1, clock and scale unknown
    assert cli.main(["summary", "--db", str(tmp_path / "f.db")]) == 0
    assert (tmp_path / "f.db").read_bytes() == before and not (tmp_path / "f.db-wal").exists()
    capsys.readouterr()
    log = FeedbackLog(tmp_path / "f.db")  # the daemon migrates it
    assert log.schema_version == len(MIGRATIONS) and log.integrity_ok()
    assert [(r["emotion"], r["clock_synced"], r["rating_max"]) for r in log.rows()] == [("Happy", None, None)]
    log.close()
    assert cli.main(["export", "--db", str(tmp_path / "f.db")]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("2026-11-01,10:00:00,5.0,Happy,")


def test_a_log_from_a_newer_feedbackd_is_left_as_it_is(tmp_path, capsys):
    """A card moved back to a kiosk running an older release: neither the daemon nor a report
    reads or changes a schema it does not know."""
    from device.storage import MIGRATIONS

    db = tmp_path / "f.db"
    log = FeedbackLog(db)
    log.add(Entry("Happy", 5, 0.9, {"Happy": 0.9}, "ab", "till-1"))
    log.db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    log.close()
    before = db.read_bytes()
    newer = f"schema version {len(MIGRATIONS) + 1} is newer than this feedbackd ({len(MIGRATIONS)}); upgrade feedbackd"
    with pytest.raises(StorageError, match=r"^" + re.escape(f"{db}: {newer}")):
        FeedbackLog(db)
    for command in ("export", "summary"):
        assert cli.main([command, "--db", str(db)]) == 2
        assert newer in capsys.readouterr().err
    assert db.read_bytes() == before
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1


def test_a_migration_that_fails_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    """Each step moves the schema and its version number together: one that fails halfway (a full
    card) leaves the old schema with its old number, for the next start to migrate again."""
    from device import storage

    db = tmp_path / "f.db"
    con = sqlite3.connect(db)  # a log of the second release
    con.executescript(f"{storage.MIGRATIONS[0]}; {storage.MIGRATIONS[1]}; PRAGMA user_version = 2;")
    con.execute("INSERT INTO entries (utc, local_date, local_time, emotion, rating, confidence, probabilities,"
                " model_sha256, device_id, clock_synced) VALUES ('2026-11-01T09:00:00.000000Z', '2026-11-01',"
                " '10:00:00', 'Happy', 5, 0.9, '{}', 'ab', 'pi', 1)")
    con.commit()
    con.close()

    def columns() -> list[str]:
        with contextlib.closing(sqlite3.connect(db)) as c:
            return [row[1] for row in c.execute("PRAGMA table_info(entries)")]

    before = columns()
    # the step's first statement takes, its second fails
    failing = f"{storage.MIGRATIONS[2]}; INSERT INTO no_such_table VALUES (1)"
    monkeypatch.setattr(storage, "MIGRATIONS", (*storage.MIGRATIONS[:2], failing))
    with pytest.raises(StorageError, match="cannot open the feedback log: no such table: no_such_table"):
        FeedbackLog(db)
    assert columns() == before and "rating_max" not in before
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 2
    monkeypatch.undo()  # the next start migrates it
    log = FeedbackLog(db)
    assert log.schema_version == len(storage.MIGRATIONS) and [r["emotion"] for r in log.rows()] == ["Happy"]
    log.close()


def test_a_model_label_feedbackd_cannot_rate_is_refused_naming_the_manifest(model, tmp_path, capsys):
    """A model trained on more classes (FER+'s Contempt): rating.map rates the seven emotions only,
    so no config can fix it. `check` says so, naming the manifest, not the config at `run`."""
    bad = tmp_path / "fer_plus"
    bad.mkdir()
    shutil.copy(model, bad / model.name)
    manifest = json.loads(model.with_suffix(".json").read_text())
    manifest["labels"][1]["display_name"] = "Contempt"
    (bad / model.with_suffix(".json").name).write_text(json.dumps(manifest))
    check = ["check", "--model", str(bad / model.name), *(f"--skip={p}" for p in cli.CHECK_PARTS if p != "model")]
    assert cli.main(check) == 1
    assert (f"FAIL model          {bad / model.with_suffix('.json').name}: label disgust as Contempt: feedbackd "
            "rates these emotions only, each shown by its own name: angry as Angry, ") in capsys.readouterr().out


@pytest.mark.parametrize("edit, says", [
    (lambda m: m["labels"][3].update(display_name="Sad") or m["labels"][5].update(display_name="Happy"),
     "label happy as Sad, sad as Happy: "),  # a happy face would read Sad, rated as one
    (lambda m: m["labels"][3].update(name=["x"]), "label ['x'] as Happy: "),
    (lambda m: m["labels"].append(dict(m["labels"][0])), "labels must be a non-empty list of distinct names"),
    (lambda m: m["input"].pop("views"), "malformed model manifest (KeyError: 'input.views')"),  # one view, unscored
    (lambda m: m["input"]["views"][1].update(mirror="false"), "malformed model manifest (ValueError: invalid view"),
    (lambda m: m["input"]["views"][1].update(flip=True), "malformed model manifest (ValueError: invalid view"),
    (lambda m: m["input"].update(size=float("inf")), "malformed model manifest (ValueError: invalid input spec"),
    (lambda m: m["input"]["views"][0].update(shift=[float("inf"), 0]), "malformed model manifest (ValueError: "),
    (lambda m: m["output"]["quantization"].update(zero_point=float("inf")), "malformed model manifest (Overflow"),
    # refused, not coerced: each of these once read as another view or spec than the one scored
    (lambda m: m["input"]["views"][0].update(shift="12"), "(ValueError: invalid view"),  # was [1, 2]
    (lambda m: m["input"]["views"][0].update(shift=[2.7, 0]), "(ValueError: invalid view"),  # was [2, 0]
    (lambda m: m["input"]["views"][0].update(shift=[True, False]), "(ValueError: invalid view"),  # was [1, 0]
    (lambda m: m["input"]["views"][0].update(zoom=True), "(ValueError: invalid view"),  # was 1.0
    (lambda m: m["input"].update(class_scale="1111511"), "(ValueError: invalid class_scale '1111511'"),  # 7 factors
    (lambda m: m["input"].update(class_scale=[True] * 7), "(ValueError: invalid class_scale"),
    (lambda m: m["input"].update(size=48.9), "(ValueError: invalid input spec"),  # was 48
    (lambda m: m["input"].update(size="48"), "(ValueError: invalid input spec"),
    (lambda m: m["input"].update(scale=str(m["input"]["scale"])), "(ValueError: invalid input spec"),
])
def test_a_manifest_edited_out_of_step_with_its_model_is_refused_naming_it(model, tmp_path, edit, says):
    """The manifest has no checksum: a hand edit that would show one class under another's name, merge
    two, or classify other views than those scored is an error naming the file, never a traceback."""
    manifest = json.loads(model.with_suffix(".json").read_text())
    edit(manifest)
    bad = tmp_path / model.name
    shutil.copy(model, bad)
    bad.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError) as e:
        Manifest.load(bad.with_suffix(".json"))
    assert str(e.value).startswith(f"{bad.with_suffix('.json')}: ") and says in str(e.value)


def test_what_the_tflite_runtime_environment_runs_keeps_to_python_3_9():
    """make may build .venv-tflite on a Python 3.9: zip(strict=) or isinstance(x, A | B) fail there only at run time
    (zip's refused every manifest as malformed), which the 3.11 running every other test never shows."""
    import ast

    for name in ("model", "preprocess", "imports"):  # what `from device.model import ...` loads
        path = ROOT / "device" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text(), feature_version=(3, 9))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert not (node.func.id == "zip" and node.keywords), f"{path}:{node.lineno}: zip() keywords need 3.10"
                assert not (node.func.id in ("isinstance", "issubclass") and isinstance(node.args[-1], ast.BinOp)), (
                    f"{path}:{node.lineno}: a union type needs 3.10")


def test_reading_commands_never_create_or_change_a_file_that_is_not_a_log(tmp_path, capsys):
    other = tmp_path / "inventory.db"  # another program's database, named by a slip of --db
    numbered = tmp_path / "tills.db"  # one that numbers its schema as the log does (user_version)
    for path, version in ((other, 0), (numbered, 3)):
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE stock (item TEXT)")
        db.execute(f"PRAGMA user_version = {version}")
        db.commit()
        db.close()
    empty = tmp_path / "empty.db"
    empty.touch()
    before = {p.name: p.read_bytes() for p in (other, numbered, empty)}
    for command in ("export", "summary"):
        for path in (other, numbered):
            assert cli.main([command, "--db", str(path)]) == 2
            assert f"{path}: not a feedback log (an SQLite file with tables stock)" in capsys.readouterr().err
        assert cli.main([command, "--db", str(empty)]) == 2
        assert f"{empty}: not a feedback log (an empty file)" in capsys.readouterr().err
    for path in (other, numbered):
        with pytest.raises(StorageError, match="not a feedback log"):  # nor does the daemon adopt it
            FeedbackLog(path)
    assert cli.main(["check", "--source", "demo", "--skip", "camera", "--skip", "detector", "--skip", "model",
                     "--display", "none", "--button", "none", "--db", str(tmp_path / "typo.db")]) == 0
    assert "typo.db: no log yet (the service creates it at its first start)" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (other, numbered, empty)} == before
    assert sorted(os.listdir(tmp_path)) == ["empty.db", "inventory.db", "tills.db"]


def test_export_of_a_log_this_user_cannot_read_says_how(tmp_path, capsys, monkeypatch):
    import pathlib
    import pwd

    FeedbackLog(tmp_path / "f.db").close()
    real_stat = pathlib.Path.stat

    def stat(self, **kw):  # what a user outside the feedbackd group meets (root here reads all)
        if self.name == "f.db":
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kw)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    monkeypatch.delenv("FEEDBACKD_DROPPED_ROOT", raising=False)
    assert cli.main(["export", "--db", str(tmp_path / "f.db")]) == 2
    assert "f.db: permission denied: run it as root (sudo feedbackd export)" in capsys.readouterr().err
    # under sudo the command runs as the service user: a copy in /root is out of its reach, and saying
    # "run it as root" again would send the technician round in a circle
    monkeypatch.setenv("FEEDBACKD_DROPPED_ROOT", "1")
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert cli.main(["summary", "--db", str(tmp_path / "f.db")]) == 2
    assert f"f.db: permission denied for the {user} user, which sudo feedbackd runs as: copy the log into a folder " \
        "it can read" in capsys.readouterr().err
    monkeypatch.setattr(pathlib.Path, "stat", real_stat)  # a root-owned 0600 copy: it can be seen, not read
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.R_OK)
    assert cli.main(["export", "--db", str(tmp_path / "f.db")]) == 2
    assert "f.db: permission denied for the" in capsys.readouterr().err


def test_two_exports_to_one_file_each_write_their_own_temporary_file(tmp_path, capsys, monkeypatch):
    """A leftover `.feedback.csv.tmp` stands for another export to the same file, still writing:
    this one neither writes into it nor deletes it, on success or failure."""
    db, out = tmp_path / "f.db", tmp_path / "feedback.csv"
    log = FeedbackLog(db)
    for _ in range(3):
        log.add(Entry("Happy", 5, 0.8, {"Happy": 0.8}, "ab", "pi"))
    log.close()
    other = tmp_path / ".feedback.csv.tmp"
    other.write_text("the other export's rows\n")
    assert cli.main(["export", "--db", str(db), "--output", str(out)]) == 0
    assert len(list(csv.DictReader(out.open()))) == 3 and capsys.readouterr().err == f"wrote 3 entries to {out}\n"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as before, not mkstemp's 0600
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert cli.main(["export", "--db", str(db), "--output", str(out)]) == 2
    assert f"{out}: cannot write the export: No space left on device" in capsys.readouterr().err
    assert other.read_text() == "the other export's rows\n"
    assert sorted(os.listdir(tmp_path)) == [".feedback.csv.tmp", "f.db", "feedback.csv"]


def test_a_log_on_a_read_only_card_is_named_so_not_as_files_to_chown(tmp_path, monkeypatch):
    """A card remounted read-only refuses root too: "not writable for this user" would send the
    technician to chown files whose owner is not the trouble."""
    db = tmp_path / "f.db"
    FeedbackLog(db).close()
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_flag=os.ST_RDONLY, f_bavail=0, f_frsize=4096))
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK)  # EROFS, whoever asks
    with pytest.raises(StorageError) as e:
        FeedbackLog(db)
    assert str(e.value) == f"{db}: cannot open the feedback log: {tmp_path} is on a read-only file system"


def test_check_fails_storage_on_a_read_only_full_or_unwritable_card(tmp_path, capsys, monkeypatch):
    """integrity_check passes on a card the daemon cannot write: check names the log all the same."""
    db = tmp_path / "f.db"
    FeedbackLog(db).close()
    check = ["check", "--db", str(db), *(f"--skip={p}" for p in cli.CHECK_PARTS if p != "storage")]
    disk = {"f_flag": 0, "f_bavail": 1000, "f_frsize": 1 << 20}  # 1000 MiB free
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(**disk))
    writable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) not in denied and writable(path, mode))

    def checked() -> tuple[int, str]:
        rc = cli.main(check)
        return rc, capsys.readouterr().out

    denied: set[Path] = set()
    assert checked() == (0, f"ok   storage        {db}: 0 entries, schema v3, integrity ok, 1000 MiB free\n")
    disk["f_flag"] = os.ST_RDONLY
    held = "(0 entries, schema v3, integrity ok)"  # and what the log holds: a failing card may damage it
    assert checked() == (1, f"FAIL storage        {db}: {tmp_path} is on a read-only file system; the log can take "
                            f"no entries {held}\n")
    disk["f_flag"], disk["f_bavail"], disk["f_frsize"] = 0, 1000, 4096  # under 4 MiB
    assert checked() == (1, f"FAIL storage        {db}: only 3.9 MiB free on its file system (under 8 MiB): free "
                            f"space, or the log soon takes no entries {held}\n")
    disk["f_bavail"] = 1 << 20
    for path in (db, tmp_path, Path(f"{db}-wal")):  # the log, the folder SQLite makes its -wal in, or a -wal
        path.touch()  # (left root's by `sudo cp`; the read's last close removes it)
        denied = {path}
        assert checked() == (1, f"FAIL storage        {db}: {path} is not writable for this user {held}\n")
    denied, disk["f_flag"] = set(), os.ST_RDONLY  # nor does a fresh install pass on a read-only card
    db.unlink()
    rc, out = checked()
    assert rc == 1 and f"{tmp_path} is on a read-only file system" in out


@pytest.mark.parametrize("denied", [["feedback.db"], ["."], ["feedback.db-wal"], ["feedback.db-shm"],
                                    ["feedback.db.spare"], ["feedback.db-wal", "feedback.db-shm", "feedback.db.spare"]])
def test_a_log_the_service_user_cannot_write_stops_the_start(tmp_path, capsys, monkeypatch, denied):
    """A backup restored with `sudo cp` is root's, mode 0644, its -wal, -shm and spare file too:
    SQLite opens it read-only without a word, and the daemon would refuse every entry as on a full
    card. The start stops (exit 2), naming each file an admin left root's (chowning only the log);
    on a card remounted read-only the daemon still starts, as on a full one."""
    db = tmp_path / "feedback.db"
    FeedbackLog(db).close()
    paths = [tmp_path / name for name in denied]
    for path in paths:
        path.touch()  # as restored: an empty -wal and -shm are a log's with nothing in them yet
    writable = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) not in paths and writable(p, mode))  # root may write all
    monkeypatch.setattr(cli.EmotionClassifier, "from_config", lambda cfg: None)  # the parts before the log
    monkeypatch.setattr(cli.FaceDetector, "from_config", lambda cfg: None)
    run = ["run", "--source", "demo", "--display", "none", "--button", "none", "--db", str(db)]
    assert cli.main(run) == 2
    named = f"{paths[0]} is" if len(paths) == 1 else f"{', '.join(map(str, paths))} are"
    assert capsys.readouterr().err == (f"feedbackd: error: {db}: cannot open the feedback log: {named} not "
                                       "writable for this user\n")
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_flag=os.ST_RDONLY, f_bavail=0, f_frsize=4096))
    store = cli.open_store(db)
    assert store.error == f"{db}: {tmp_path} is on a read-only file system; the log can take no entries"
    store.close()


def test_run_by_a_user_kept_out_of_the_logs_folder_says_to_run_it_as_root(tmp_path, capsys, monkeypatch):
    """/var/lib/feedbackd is root's, mode 0750: a user outside its group can neither open the log nor
    see whether it is there. `run` says how to run it, as check, export and summary do, not a traceback."""
    import pathlib

    folder = tmp_path / "feedbackd"
    folder.mkdir()
    db = folder / "feedback.db"
    real_stat, real_connect = pathlib.Path.stat, sqlite3.connect

    def stat(self, **kw):  # what that user meets (root here reads all)
        if folder in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kw)

    def connect(path, *args, **kw):
        if folder in Path(path).parents:
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(path, *args, **kw)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    monkeypatch.setattr(sqlite3, "connect", connect)
    monkeypatch.delenv("FEEDBACKD_DROPPED_ROOT", raising=False)
    monkeypatch.setattr(cli.EmotionClassifier, "from_config", lambda cfg: None)  # the parts before the log
    monkeypatch.setattr(cli.FaceDetector, "from_config", lambda cfg: None)
    assert cli.main(["run", "--source", "demo", "--display", "none", "--button", "none", "--db", str(db)]) == 2
    assert capsys.readouterr().err == (f"feedbackd: error: {db}: permission denied: run it as root (sudo feedbackd "
                                       "run), which reads the log as the feedbackd user\n")


def test_reports_leave_a_stopped_logs_wal_file_as_it_is(tmp_path, capsys):
    """A daemon stopped by a power cut leaves its newest entries in the -wal file. Reading them must
    not copy them into the main file and delete the -wal, as the last read-write connection to close
    does: on a failing card that write may damage both, and the owner is told to copy them off."""
    db = tmp_path / "feedback.db"
    child = ("import os, sys\nfrom datetime import UTC, datetime\nfrom device.storage import Entry, FeedbackLog\n"
             "FeedbackLog(sys.argv[1]).add(Entry('Happy', 5, 0.8, {'Happy': 0.8}, 'ab', 'pi'), "
             "datetime(2026, 11, 30, 11, tzinfo=UTC))\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", child, str(db)], cwd=ROOT, check=True)
    wal = Path(f"{db}-wal")
    files = (db.read_bytes(), wal.read_bytes())
    check = ["check", "--db", str(db), *(f"--skip={p}" for p in cli.CHECK_PARTS if p != "storage")]
    for command in (["export", "--db", str(db)], ["export", "--salvage", "--db", str(db)],
                    ["summary", "--db", str(db)], check):
        assert cli.main(command) == 0
        assert (db.read_bytes(), wal.read_bytes()) == files, command
    out = capsys.readouterr().out
    assert "\n2026-11-30," in out and "1 entries, schema v3, integrity ok" in out  # read from the -wal


def test_an_export_to_a_file_syncs_its_new_name(tmp_path, capsys, monkeypatch):
    """fsync of the CSV keeps its bytes; the rename over the old CSV is in the folder, synced too."""
    import stat

    db, out = tmp_path / "f.db", tmp_path / "feedback.csv"
    FeedbackLog(db).close()
    synced, fsync = [], os.fsync

    def noted(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((stat.S_ISDIR(st.st_mode) and st.st_ino == tmp_path.stat().st_ino, out.exists()))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", noted)
    assert cli.main(["export", "--db", str(db), "--output", str(out)]) == 0
    assert synced == [(False, False), (True, True)]  # the CSV's bytes before the rename, then the folder after it


def test_the_spare_file_note_counts_only_entries_of_the_period_asked(tmp_path, capsys, monkeypatch):
    """By the store's own date, as the report dates entries: 20:00 UTC on 30 November is 1 December in
    Tokyo. A line whose time overflows the local calendar (year 1, edited by hand) is no traceback."""
    db, kept = tmp_path / "f.db", tmp_path / "f.db.spare"
    FeedbackLog(db).close()
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        evening = datetime(2026, 11, 30, 20, tzinfo=UTC)
        line = entry_json(Entry("Sad", 2, 0.7, {"Sad": 0.7}, "ab", "pi"), evening)
        kept.write_bytes(f"{line}\n".encode())
        note = f"feedbackd: 1 entries are waiting in {kept}, not in this {{}} yet\n"
        for command in ("export", "summary"):
            for flags in (["--since", "2026-12-02"], ["--until", "2026-11-30"]):
                assert cli.main([command, "--db", str(db), *flags]) == 0
                assert capsys.readouterr().err == ""
            for flags in ([], ["--since", "2026-12-01", "--until", "2026-12-01"]):
                assert cli.main([command, "--db", str(db), *flags]) == 0
                assert capsys.readouterr().err == note.format(command)
        year_1 = json.dumps({**json.loads(line), "utc": "0001-01-01T00:00:00+00:00"})
        kept.write_bytes(f"{line}\n{year_1}\n".encode())
        monkeypatch.setenv("TZ", "America/New_York")  # before year 1 began there
        time.tzset()
        assert cli.main(["export", "--db", str(db)]) == 0
        assert capsys.readouterr().err == f"feedbackd: up to 2 entries are waiting in {kept}, not in this export yet\n"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_no_frame_or_crop_reaches_the_disk(model, face_folder, tmp_path, monkeypatch):
    """Privacy: while the loop sees a face and stores an entry, and while it shuts down, nothing but the log is
    written, and the log holds no image.

    Image encoders are patched (OpenCV writes from C); every file Python opens for writing is
    recorded through an audit hook; the working directory is the test's folder, whose files are compared
    (names, sizes, times) before and after; the log's rows are read back.
    """
    import cv2
    from PIL import Image

    writes, recording = [], [False]

    def audit(event: str, args: tuple) -> None:
        if recording[0] and event == "open":
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and set(mode) & set("wax+")) or (flags or 0) & (os.O_WRONLY | os.O_RDWR):
                writes.append(str(args[0]))

    def files() -> dict[str, tuple[int, int]]:
        return {p.relative_to(tmp_path).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in tmp_path.rglob("*") if p.is_file()}

    sys.addaudithook(audit)  # cannot be removed: it records only while `recording` is set
    for target, name in ((cv2, "imwrite"), (cv2, "imencode"), (np, "save"), (Image.Image, "save")):
        monkeypatch.setattr(target, name, lambda *a, _n=name, **k: writes.append(_n))
    monkeypatch.chdir(tmp_path)
    before = files()
    rig = Rig(model, face_folder, tmp_path / "feedback.db", **{"button.cooldown_s": 0.0, "display.thank_you_s": 0.5})
    recording[0] = True
    rig.steps(3)
    rig.press()
    rig.steps(2)
    assert rig.store.count() == 1, "the loop must have seen a face and stored an entry"
    time.sleep(0.6)  # the thanks over
    rig.steps(2)
    rig.press()  # in the last frame: the shutdown's flush stores it
    rig.daemon.flush_pending()  # as run's shutdown does
    assert rig.store.count() == 2, "the shutdown must have stored the last press"
    rig.close()
    recording[0] = False
    assert not writes
    after = files()
    assert set(after) - set(before) <= {"feedback.db", "feedback.db-wal", "feedback.db-shm", "feedback.db.spare"}
    assert {name: after[name] for name in before} == before  # the frames and the rest untouched: same sizes, times
    assert (tmp_path / "feedback.db.spare").read_bytes() == bytes(SIZE)  # room for entries, nothing in it
    frame = cv2.imread(str(next(face_folder.iterdir())))
    assert sum(size for name, (size, _) in after.items() if name.startswith("feedback.db-")
               or name == "feedback.db") < frame.nbytes / 20
    with contextlib.closing(sqlite3.connect(f"file:{tmp_path / 'feedback.db'}?mode=ro", uri=True)) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert "entries" in tables
        for table in tables:
            for column in [c[1] for c in db.execute(f"PRAGMA table_info({table})")]:
                blobs, longest = db.execute(f"SELECT total(typeof({column}) = 'blob'), "
                                            f"max(length(CAST({column} AS BLOB))) FROM {table}").fetchone()
                assert blobs == 0 and (longest or 0) < 48 * 48, f"{table}.{column} holds an image-sized value"


def test_daemon_run_loop_notifies_systemd_and_logs_stats(model, face_folder, tmp_path, caplog):
    import socket

    from device.notify import Notifier

    rig = Rig(model, face_folder, tmp_path / "feedback.db", **{"daemon.stats_interval_s": 1})
    pressed = []
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.2)
    rig.daemon.notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"})
    stop = threading.Event()
    messages = []

    def stats() -> list[tuple[float, int, int, float, float]]:  # frames/s, faces, entries, detect and classify ms
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stats: ")]
        return [(float(m[1]), int(m[2]), int(m[3]), float(m[4]), float(m[5])) for m in (
            re.fullmatch(r"stats: ([\d.]+) frames/s, (\d+) with a face, (\d+) entries; per frame: capture [\d.]+ms "
                         r"detect ([\d.]+)ms classify ([\d.]+)ms render [\d.]+ms", line) for line in lines)]

    def watch() -> None:  # systemd's side, and a customer
        try:
            deadline = time.monotonic() + 60  # steps are slow on a loaded machine: wait for what is due, not a time
            # a customer presses once the loop has run a stats interval, and the interval after the
            # entry is stored ends with its count
            while time.monotonic() < deadline and (messages.count("WATCHDOG=1") < 3 or not stats()
                                                   or not any(s[2] for s in stats())):
                if stats() and not pressed:
                    rig.press()
                    pressed.append(time.monotonic())
                try:
                    messages.append(sock.recv(256).decode())
                except TimeoutError:
                    pass
        finally:
            stop.set()

    watcher = threading.Thread(target=watch)
    with caplog.at_level("INFO", logger="feedbackd"):
        watcher.start()
        rig.daemon.run(stop)  # in the thread that opened the log, as `feedbackd run` does
    watcher.join(timeout=10)
    assert not watcher.is_alive()
    try:
        while True:
            messages.append(sock.recv(256).decode())
    except TimeoutError:
        sock.close()
    assert messages[:2] == ["READY=1", "STATUS=running"] and messages[-1] == "STOPPING=1"
    assert messages.count("WATCHDOG=1") >= 3  # every WATCHDOG_USEC / 2
    (fps, faces, entries, detect, classify), *_ = stats()
    assert fps > 0 and faces >= 1 and entries == 0 and detect > 0 and classify > 0  # the loop saw the face
    assert pressed and stats()[-1][2] == 1 and rig.store.count() == 1
    assert rig.daemon.stats.entries == 1  # the count of the run, kept across each interval's reset
    rig.close()


def test_the_watchdog_is_fed_right_after_a_slow_step(model, face_folder, tmp_path, monkeypatch):
    """Two 14.8 s steps (a camera reconnect probing each USB node) in a row stay within WatchdogSec
    (30 s): the ping follows each step that ran past its time, not the next step after it."""
    from device import daemon as D

    rig = Rig(model, face_folder, tmp_path / "feedback.db")
    clock, pings, durations = [0.0], [], iter([0.1, 14.8, 14.8, 0.1])

    class Notifier:
        watchdog_s = 15.0  # WatchdogSec=30, halved

        def ready(self): pass
        def status(self, text): pass
        def stopping(self): pass

        def watchdog(self):
            pings.append(clock[0])

    class FakeStop:  # the loop's only other clock is its pacing wait
        steps = 0

        def is_set(self):
            return self.steps == 4

        def wait(self, seconds):
            clock[0] += seconds

    stop = FakeStop()

    def step():
        clock[0] += next(durations)
        stop.steps += 1

    rig.daemon.notifier = Notifier()
    monkeypatch.setattr(rig.daemon, "step", step)
    monkeypatch.setattr(D.time, "monotonic", lambda: clock[0])
    rig.daemon.run(stop)
    monkeypatch.undo()
    gaps = [b - a for a, b in zip([0.0, *pings], [*pings, clock[0]], strict=True)]
    assert len(pings) >= 3 and max(gaps) < 15.0, pings  # a ping at most one step after the one before
    rig.close()


def test_shipped_example_config_is_current():
    assert (ROOT / "systemd" / "config.example.toml").read_text() == example_toml()

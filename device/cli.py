"""`feedbackd`: run the appliance, check its parts, analyze photos, export the feedback.

    feedbackd [--config FILE] run | check | analyze IMAGE... [--json] | export [--since D] [--until D] [--salvage]
              | summary [--since D] [--until D] [--by day|week|month|hour]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pwd
import signal
import sys
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import IO

from device import clock, spare
from device.button import ButtonError, open_button
from device.config import DEFAULT_PATH, SCHEMA, Config, ConfigError, current_folder, load_config, read_toml
from device.detector import DetectorError, FaceDetector, choose_face, crop_face
from device.display import DisplayError, Screen, open_display
from device.memlock import lock_memory, no_core_dumps, swap_in_use
from device.model import EmotionClassifier, ModelError
from device.sources import SourceError
from device.storage import SALVAGE_HINT, FeedbackLog, ReopeningLog, StorageError, number, unwritable
from device.summary import PERIODS

FAILURES = (ConfigError, ModelError, DetectorError, StorageError, SourceError, DisplayError, ButtonError)
OVERRIDES = {  # command-line flag -> config key
    "source": "camera.source", "camera_path": "camera.path", "camera_device": "camera.device",
    "display": "display.driver", "png_path": "display.png_path", "button": "button.kind",
    "db": "storage.path", "model": "model.path", "detector_dir": "detector.dir", "threads": "model.num_threads",
}
# No camera opened this long after the start: the service restarts (a driver that loaded late gets
# its device access), showing "Camera error" meanwhile.
FIRST_OPEN_S = 60.0
CHECK_PARTS = ("camera", "detector", "model", "display", "button", "storage", "sandbox", "clock")
# Free space under which `check` fails storage: an entry is a few hundred bytes, but SQLite's WAL
# grows to about 4 MiB (1000 pages) before a checkpoint copies it into the log, which needs room too.
MIN_FREE_MIB = 8


def local_date(text: str) -> str:
    """An export bound: a real date written YYYY-MM-DD, since the log compares them as text."""
    try:
        if len(text) != 10:
            raise ValueError(text)
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date written YYYY-MM-DD") from None


def global_flags(parser: argparse.ArgumentParser, config, log_level) -> None:
    """--config and --log-level go before or after the command (systemd runs `feedbackd run --config F`).

    A command's own copies default to "not given", so they never undo the same flag given before it.
    """
    parser.add_argument("--config", type=Path, default=config,
                        help=f"TOML config (default: {DEFAULT_PATH} if it exists)")
    parser.add_argument("--log-level", default=log_level, choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="feedbackd", description=__doc__.split("\n\n")[0])
    global_flags(p, config=None, log_level="INFO")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the daemon")
    check = sub.add_parser("check", help="self-test every part; non-zero exit if one fails")
    check.add_argument("--skip", action="append", default=[], choices=CHECK_PARTS, metavar="PART",
                       help=f"leave out a part, e.g. those the running service holds ({', '.join(CHECK_PARTS)})")
    for s in (run, check):
        s.add_argument("--source", help="camera, auto, picamera2, v4l2, video, images or demo")
        s.add_argument("--camera-path", help="video file, image folder or glob")
        s.add_argument("--camera-device", help="V4L2 index or /dev/video path")
        s.add_argument("--display", help="ssd1306, sh1106, st7789, st7735, ili9341, terminal, png or none")
        s.add_argument("--png-path", help="file for the png display")
        s.add_argument("--button", help="gpio, keyboard or none")
        s.add_argument("--db", help="SQLite feedback log")
    analyze = sub.add_parser("analyze", help="faces and emotions in image files")
    for s in (run, check, analyze):
        s.add_argument("--model", help="emotion model (.tflite)")
        s.add_argument("--detector-dir", help="folder with the res10 face-detector files")
        s.add_argument("--threads", type=int, help="LiteRT threads")
    analyze.add_argument("images", nargs="+", type=Path)
    analyze.add_argument("--json", action="store_true", help="one JSON object per image")
    export = sub.add_parser("export", help="the feedback log as CSV (date, time, rating, emotion, ...)")
    export.add_argument("--output", type=Path, help="write to this file instead of stdout")
    export.add_argument("--salvage", action="store_true",
                        help="a damaged log: export every entry still readable, count those that are not")
    summary = sub.add_parser("summary",
                             help="per day (or week, month, hour): entries, mean rating and each emotion's share")
    summary.add_argument("--by", choices=PERIODS, default="day",
                         help="one row per day (default), ISO week, month, or hour of the day over the period")
    for s in (export, summary):
        s.add_argument("--db", help="SQLite feedback log")
        s.add_argument("--since", type=local_date, help="first local date, YYYY-MM-DD")
        s.add_argument("--until", type=local_date, help="last local date, YYYY-MM-DD")
    for s in sub.choices.values():
        global_flags(s, config=argparse.SUPPRESS, log_level=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if getattr(args, "since", None) and getattr(args, "until", None) and args.since > args.until:
        sub.choices[args.command].error(f"--since {args.since} is after --until {args.until}")
    if getattr(args, "output", None) and (not args.output.name or os.path.isdir(args.output)):
        sub.choices[args.command].error(f"--output {args.output}: a folder; name the file to write, "
                                        f"such as {args.output / 'feedback.csv'}")
    return args


def config_from(args: argparse.Namespace):
    path = args.config or (DEFAULT_PATH if DEFAULT_PATH.exists() else None)
    overrides = {key: getattr(args, flag) for flag, key in OVERRIDES.items() if getattr(args, flag, None) is not None}
    for key in ("model.path", "detector.dir"):  # the config's own are the checkout's; a typed one is the shell's
        if key in overrides and not os.path.isabs(overrides[key]):
            here = current_folder(f"command line: {key}: {overrides[key]!r}")
            overrides[key] = os.path.normpath(os.path.join(here, overrides[key]))
    return load_config(path, overrides)


def cmd_run(cfg, pin_factory=None) -> int:
    from device.daemon import Daemon, Stop
    from device.notify import Notifier
    from device.sources import ReconnectingSource, opener

    log = logging.getLogger("feedbackd")
    if why := no_core_dumps():
        log.warning("a crash may leave a core dump holding camera frames (%s)", why)
    held = spare.beside(cfg["storage"]["path"])
    try:
        running = spare.in_use(held)
    except PermissionError:  # a running service cannot be told apart: the display is not opened either
        raise denied(held, "run") from None
    if running:  # before the display: opening it would blank the screen customers read
        raise StorageError(f"{cfg['storage']['path']}: another feedbackd is running on this log (it holds {held}): "
                           "stop it first (sudo systemctl stop feedbackd)")
    notifier = Notifier()  # the unit's: only there is RLIMIT_MEMLOCK set for the lock to be safe
    why = lock_memory() if notifier.enabled else "not started by systemd"
    if why is not None and swap_in_use():  # before the first frame exists
        log.warning("memory not locked (%s): camera frames may be paged out to swap on disk", why)
    display = open_display(cfg["display"])
    try:  # all hardware first: a kiosk that cannot start creates no log
        button = open_button(cfg["button"], pin_factory)
    except ButtonError as e:
        display.halt(Screen("error", title="Button error", detail=str(e)))
        raise
    try:
        classifier = EmotionClassifier.from_config(cfg["model"])
        detector = FaceDetector.from_config(cfg["detector"])
        store = open_store(Path(cfg["storage"]["path"]))
    except (ModelError, DetectorError) as e:
        display.halt(Screen("error", title="Model error", detail=str(e)))
        raise
    except StorageError as e:
        display.halt(Screen("error", title="Storage error", detail=str(e)))
        raise
    source = ReconnectingSource(opener(cfg["camera"]), cfg["camera"]["reconnect_max_s"],
                                first_open_s=FIRST_OPEN_S,
                                path_key="camera.path" if cfg["camera"]["source"] in ("video", "images")
                                and "://" not in cfg["camera"]["path"] else None)
    daemon = Daemon(cfg, source, detector, classifier, display, button, store, notifier, cfg.device_id)
    stop = Stop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("feedbackd: model %s (sha256 %s…), detector %s, display %s, button %s, log %s",
             classifier.path, classifier.sha256[:12], cfg["detector"]["dir"], cfg["display"]["driver"],
             cfg["button"]["kind"], store.path)
    try:
        daemon.run(stop)
    except SourceError:  # given up on the camera: its error stays up while systemd restarts the service
        display.halt(Screen("error", title="Camera error", detail="restarting..."))
        raise
    finally:  # each part closed whatever the one before raised: a stuck camera's SourceStuck is reported
        with contextlib.ExitStack() as parts:  # once the rest is closed (exit 2), not with the log left open
            parts.callback(log.info, "stopped: %d entries stored this run", daemon.stats.entries)
            for part in (store, daemon, button):
                parts.callback(part.close)
            source.close()
    return 0


def open_store(path: Path) -> FeedbackLog | ReopeningLog:
    """The daemon's log. One that cannot open for want of room, or on a card remounted read-only,
    is opened later: a restart on a full card would otherwise take no entries at all, while the
    running kiosk keeps them in its spare file. Any other failure (a damaged or foreign file,
    permissions) stops the start."""
    try:
        return FeedbackLog(path)
    except StorageError as e:
        log_exists(path, "run")  # a user outside the service's group, not let into its folder: how to run it
        try:
            log_room(path)
        except NoRoom as room:
            if path.exists():  # a damaged or foreign file stops the start, full card or not
                FeedbackLog(path, create=False).close()
            logging.getLogger("feedbackd").error("%s; %s: starting without it, and entries are kept in memory and "
                                                 "the spare file until it opens", room, e)
            return ReopeningLog(path, str(room))
        except StorageError as why:  # not writable for this user: the install's to mend
            reason = str(why).removeprefix(f"{path}: ")
            raise (e if reason in str(e) else StorageError(f"{e} ({reason})")) from None
        raise


class NoRoom(StorageError):
    """The log's card is full or read-only: entries wait for room, no setting is wrong."""


def log_room(path: Path) -> str:
    """The free space for the log at `path`, or a StorageError naming why the daemon could not write
    it: integrity_check passes on a card remounted read-only or full, where no entry would be stored."""
    fresh = not path.exists()
    folder = next(p for p in path.parents if p.exists()) if fresh else path.parent
    fs = os.statvfs(folder)
    if fs.f_flag & os.ST_RDONLY:
        raise NoRoom(f"{path}: {folder} is on a read-only file system; the log can take no entries")
    if fresh and not os.access(folder, os.W_OK):
        raise StorageError(f"{path}: no log yet, and {folder} is not writable for this user")
    if not fresh and (denied := unwritable(path)):
        raise StorageError(f"{path}: {denied}")
    free = fs.f_bavail * fs.f_frsize
    if free < MIN_FREE_MIB * 2**20:
        raise NoRoom(f"{path}: only {free / 2**20:.1f} MiB free on its file system (under {MIN_FREE_MIB} "
                           "MiB): free space, or the log soon takes no entries")
    return f"{free // 2**20} MiB free"


def cmd_check(cfg, skip: list[str]) -> int:
    from device.sources import open_source

    skipped = "the running service holds it: stop it (sudo systemctl stop feedbackd) to check it too"
    try:
        running = spare.in_use(spare.beside(cfg["storage"]["path"]))
    except PermissionError:  # the service's folder is closed to this user: it may be running
        # under sudo the wrapper runs this as the service's own user: a spare file it cannot open is no service's
        running = not os.environ.get("FEEDBACKD_DROPPED_ROOT")
        skipped = "cannot tell whether the running service holds it: run sudo feedbackd check"
    held = ("camera", "display", "button") if running else ()
    if "camera" not in [*skip, *held]:  # it reads a frame too: kept out of a core dump and off the swap, as run does
        log = logging.getLogger("feedbackd")
        if why := no_core_dumps():
            log.warning("a crash may leave a core dump holding a camera frame (%s)", why)
        if swap_in_use() and (why := lock_memory()) is not None:  # no swap, nothing to lock it out of
            log.warning("memory not locked (%s): the camera frame may be paged out to swap on disk", why)
    results = []

    def part(name: str, fn) -> None:
        if name in skip:
            return
        if name in held:  # said, so that a technician does not take the part for checked
            results.append((name, None, skipped))
            return
        try:
            results.append((name, True, fn()))
        except Exception as e:  # the self-test reports every failure, whatever its kind
            results.append((name, False, f"{type(e).__name__}: {e}" if not isinstance(e, FAILURES) else str(e)))

    def camera() -> str:
        src = open_source(cfg["camera"])
        try:
            frame = src.read()
            return f"{getattr(src, 'name', cfg['camera']['source'])}: {frame.shape[1]}x{frame.shape[0]} frame"
        finally:
            src.close()

    def model() -> str:
        clf = EmotionClassifier.from_config(cfg["model"])
        return f"{clf.path.name} sha256 ok, {len(clf.manifest.labels)} labels, {clf.manifest.dtype} input"

    def storage() -> str:
        path = Path(cfg["storage"]["path"])
        if not log_exists(path, "check"):  # a fresh install: the service makes the log at its first start
            note = waiting(path, None, then=", for the log to take them")  # a log moved aside, a full card
            return f"{path}: no log yet (the service creates it at its first start), {log_room(path)}" + (
                f"; {note}" if note else "")
        store = FeedbackLog(path, create=False)
        try:
            if not store.integrity_ok():
                raise StorageError(f"{store.path}: integrity_check failed ({SALVAGE_HINT})")
            held = f"{store.count()} entries, schema v{store.schema_version}, integrity ok"
            # not in the count, nor yet in an export; said on a full card too, where they wait
            note = waiting(path, store, then=", for the log to take them")
            tail = f"; {note}" if note else ""
            try:  # a card remounted read-only is when the log may be damaged: what it holds is said too
                room = log_room(path)
            except StorageError as e:
                raise StorageError(f"{e} ({held}{tail})") from None
            return f"{store.path}: {held}, {room}{tail}"
        finally:
            store.close()

    def display() -> str:
        d = open_display(cfg["display"])
        d.show(Screen("idle"))
        if d.error:  # it opened, but drawing failed (a loose cable, an unwritable png_path)
            raise DisplayError(f"display.driver = {cfg['display']['driver']}: cannot draw ({d.error})")
        return f"{cfg['display']['driver']} ok"

    def button() -> str:
        open_button(cfg["button"]).close()
        return f"{cfg['button']['kind']} ok" + (f" (BCM {cfg['button']['pin']})" if cfg["button"]["kind"] == "gpio"
                                               else "")

    part("camera", camera)
    part("detector", lambda: (FaceDetector.from_config(cfg["detector"]), f"{cfg['detector']['dir']} sha256 ok")[1])
    part("model", model)
    part("display", display)
    part("button", button)
    part("storage", storage)
    if unit := os.environ.get("FEEDBACKD_STATE"):  # sudo feedbackd: the wrapper names the unit's folder
        part("sandbox", lambda: as_the_service(cfg, unit))
    # informative: a kiosk still stores entries on a clock it cannot vouch for, each marked so
    part("clock", lambda: f"{clock.describe(clock.clock_source())}; {clock.local_zone()}")
    for name, ok, detail in results:
        print(f"{'skip' if ok is None else 'ok  ' if ok else 'FAIL'} {name:<14} {detail}")
    return 0 if all(ok is not False for _, ok, _ in results) else 1


def as_the_service(cfg, state: str) -> str:
    """The config file read as the unit reads it (relative paths in its folder, a path its sandbox hides
    or keeps read-only refused): check itself runs outside the sandbox, and would pass what the next
    restart refuses."""
    load_config(None if cfg.source == Config.source else Path(cfg.source), state=state)
    return f"{cfg.source}: every path within the service's reach ({state})"


def analyze_image(path: Path, detector: FaceDetector, classifier: EmotionClassifier, cfg) -> dict:
    import cv2
    import numpy as np

    from device.detector import CropGeometry

    try:  # read here, not by cv2.imread, which says None alike for a missing, unreadable or bad file
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        return {"file": str(path), "error": f"cannot read: {e.strerror}", "faces": [], "emotion": None}
    frame = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if frame is None:
        return {"file": str(path), "error": "cannot decode image", "faces": [], "emotion": None}
    boxes = detector.detect(frame)
    geometry = CropGeometry.from_config(cfg["detector"])
    names = classifier.manifest.display_names
    faces = []
    for box in boxes:
        probs = classifier.predict(crop_face(frame, box, geometry, classifier.spec.size))[0]
        best = int(probs.argmax())
        faces.append({"box": box.as_list(), "detection": round(box.confidence, 4), "emotion": names[best],
                      "confidence": round(float(probs[best]), 4),
                      "probabilities": {n: round(float(p), 4) for n, p in zip(names, probs, strict=True)},
                      "rating": cfg["rating"]["map"].get(names[best])})
    chosen = choose_face(boxes, frame.shape)
    pick = next((f for f, b in zip(faces, boxes, strict=True) if b == chosen), None)
    return {"file": str(path), "faces": faces, "emotion": pick["emotion"] if pick else None}


def cmd_analyze(cfg, args) -> int:
    classifier = EmotionClassifier.from_config(cfg["model"])
    detector = FaceDetector.from_config(cfg["detector"])
    failed = False
    for path in args.images:
        result = analyze_image(path, detector, classifier, cfg)
        failed |= "error" in result
        if args.json:
            print(json.dumps(result))
        else:
            faces = ", ".join(f"{f['emotion']} {f['confidence']:.0%} at {f['box']}" for f in result["faces"])
            print(f"{path}: {result.get('error') or faces or 'no face'}")
    return 1 if failed else 0


def open_log(cfg, command: str) -> FeedbackLog:
    """The existing log, for reading: a missing or unreadable one is named, never created."""
    path = Path(cfg["storage"]["path"])
    if not log_exists(path, command):
        note = waiting(path, None, then=", for the log to take them at the service's next start")
        raise StorageError(f"{path}: no feedback log here" + (f"; {note}" if note else ""))
    if not os.access(path, os.R_OK):
        raise denied(path, command)
    return FeedbackLog(path, create=False)


def log_exists(path: Path, command: str) -> bool:
    """Whether there is a log at `path`. A user outside the service's group cannot even look into
    /var/lib/feedbackd (0750): that is a StorageError saying how to run `command` instead."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:
        raise denied(path, command) from None
    except OSError as e:  # a symlink loop, a name too long, an I/O error on a failing card
        raise StorageError(f"{path}: cannot look for the log: {e.strerror}") from None
    return True


def denied(path: Path, command: str) -> StorageError:
    """The log at `path` is out of this user's reach: how to run `command` so that it is not."""
    if os.environ.get("FEEDBACKD_DROPPED_ROOT"):  # root already (sudo, or a root shell): the wrapper dropped
        user = pwd.getpwuid(os.geteuid()).pw_name  # to the service user, who cannot read it
        return StorageError(f"{path}: permission denied for the {user} user, which sudo feedbackd runs as: "
                            f"copy the log into a folder it can read (not /root), or chown {user} the copy")
    return StorageError(f"{path}: permission denied: run it as root (sudo feedbackd {command}), "
                        "which reads the log as the feedbackd user")


def waiting(log: Path, store: FeedbackLog | None, since: str | None = None, until: str | None = None,
            then: str = "") -> str | None:
    """How many entries the daemon kept in the spare file while the log could not take them (a
    full or read-only card), and the log (`store`, None where there is none yet) does not hold yet:
    they are in no report until it restores them. Said, so a report is not read as whole, nor an
    empty card as one without feedback; None for none. Only those pressed on a local date from
    `since` to `until` count: the others would not be in the report anyway. `then` ends a count:
    what becomes of those entries."""
    path = spare.beside(log)
    try:  # lines a start could not restore: for a technician, in no report whatever their date
        n_aside = spare.set_aside_count(path)
    except OSError as e:
        aside = f"cannot read {spare.aside(path)} ({e.strerror})"
    else:
        aside = (f"{n_aside} lines no start could restore are in {spare.aside(path)}: check whether the export "
                 "holds each (by its utc time), count the rest in by hand, then move the file away (README, "
                 "Troubleshooting)") if n_aside else ""
    try:
        kept = spare.waiting(path)
    except OSError as e:
        return "; ".join(filter(None, (
            f"cannot read {path} ({e.strerror}): entries waiting there, if any, are not counted", aside)))
    try:
        pressed = [(datetime.fromisoformat(e["utc"]), e["device_id"]) for e in kept
                   if isinstance(e.get("utc"), str) and isinstance(e.get("device_id"), str)]
        n = sum(store is None or not store.contains(at, device) for at, device in pressed
                if (since or "") <= at.astimezone().date().isoformat() <= (until or "9999-12-31"))
        note = f"{n} entries are waiting in {path}{then}" if n else ""
    except (StorageError, ValueError, OverflowError):  # a damaged index, or a time the daemon would leave out too
        note = f"up to {len(kept)} entries are waiting in {path}{then}" if kept else ""
    return "; ".join(filter(None, (note, aside))) or None


def waiting_note(store: FeedbackLog, report: str, since: str | None, until: str | None) -> str | None:
    """The spare file's entries not in this report. Read before the log's rows, so an entry the
    daemon moves meanwhile is named twice rather than not at all."""
    return waiting(store.path, store, since, until, then=f", not in this {report} yet")


def to_stdout(write: Callable[[IO[str]], object], report: str) -> None:
    """Write a report to stdout: a reader that had enough (`| head`) ends it quietly, a full disk
    (`> /mnt/usb/f.csv` on a full stick) is an error naming stdout, neither a traceback. The export
    is UTF-8 whatever the locale, as README says (a till named "Kasse-Süd ①" under a Latin-1 one)."""
    try:
        if report == "export":
            sys.stdout.reconfigure(encoding="utf-8")
        write(sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    except OSError as e:
        raise StorageError(f"stdout: cannot write the {report}: {e.strerror}") from None


def to_file(out: Path, write: Callable[[IO[str]], int]) -> int:
    """Write a report to `out` whole or not at all: a failed export leaves no CSV that looks complete.
    Its own temporary file (by process), so two exports to one file never write into each other's."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        try:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                n = write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, out)
            spare.fsync_folder(out.parent)  # the new name too: a power cut now must not bring back the old CSV
        except BaseException:
            with contextlib.suppress(OSError):  # a folder we may not even look into
                tmp.unlink()
            raise
    except OSError as e:
        raise StorageError(f"{out}: cannot write the export: {e.strerror}") from None
    return n


def cmd_summary(cfg, args) -> int:
    from device.summary import format_table, scales, summarize, todays_map

    store = open_log(cfg, "summary")
    try:
        note = waiting_note(store, "summary", args.since, args.until)
        oldest, newest = store.rating_scales()
        if not all(s is None or number(s) for s in (oldest, newest)):  # a damaged row's text for a scale
            oldest, newest = scales(store.rows())
        sure_from = cfg["smoothing"]["min_confidence"]  # the kiosk's: where its screen said "Not sure"
        # today's map, from the log itself (each emotion's newest rating on the newest scale), so a copy
        # summed up on a PC reads as on the kiosk for the emotions rated on that scale; the config's only
        # for an emotion not yet rated on it, where it rates on it. Entries rated otherwise are re-rated
        rt = cfg["rating"]
        today = todays_map(store.rows(), newest, rt["map"] if rt["max"] == newest else None)
        rerate = (newest, today) if newest is not None and today else None
        tallies, left_out = summarize(store.rows(args.since, args.until), oldest, sure_from, rerate, args.by)
    finally:
        store.close()
    table = format_table(tallies, newest, oldest, sure_from, args.by) if tallies else "no entries in that period"
    to_stdout(lambda out: print(table, file=out), "summary")
    if note:
        print(f"feedbackd: {note}", file=sys.stderr)
    if left_out:  # as export, which shows them as they are: the rest is still the owner's summary
        print(f"feedbackd: {left_out} entries in {store.path} are left out of the summary: a field holds a value "
              "of the wrong type or form (a damaged or hand-edited row); `feedbackd export` shows them",
              file=sys.stderr)
    return 0


def cmd_export(cfg, args) -> int:
    store = open_log(cfg, "export")

    def write(out: IO[str]) -> int:
        return store.export_csv(out, args.since, args.until, args.salvage)

    try:
        note = waiting_note(store, "export", args.since, args.until)
        if args.output:
            out = Path(args.output)
            held = spare.beside(store.path)  # and the spare's set-aside lines: maybe their only copy
            own = (*(f"{store.path}{s}" for s in ("", "-wal", "-shm", "-journal")), held, spare.aside(held))
            if os.path.realpath(out) in {os.path.realpath(f) for f in own}:  # a loop: no error
                raise StorageError(f"--output {out}: that is the feedback log itself or a file it keeps beside it; "
                                   "name a new .csv file")
            print(f"wrote {to_file(out, write)} entries to {out}", file=sys.stderr)
        else:
            to_stdout(write, "export")
    finally:
        store.close()
    if note:
        print(f"feedbackd: {note}", file=sys.stderr)
    if args.salvage and store.unreadable:
        print(f"feedbackd: {store.unreadable} entries could not be read from {store.path}; the export holds "
              "the rest", file=sys.stderr)
        return 1
    return 0


class JournalFormatter(logging.Formatter):
    """Under systemd, a `<N>` prefix gives each line its syslog priority: `journalctl -p err` finds
    the errors, and journald writes a CRITICAL line (an entry only in memory) to disk at once."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def to_journal() -> bool:
    """Whether stderr is the journal itself: systemd names it in JOURNAL_STREAM (device:inode),
    which a terminal started by a systemd user service passes on to its shells as well."""
    try:
        dev, ino = (int(n) for n in os.environ["JOURNAL_STREAM"].split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (KeyError, ValueError, OSError):  # unset, malformed, or a stderr without a file
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def configured_log(args: argparse.Namespace) -> str:
    """The log a config names though another of its settings is wrong: what its owner reads meanwhile."""
    if args.db:
        return args.db
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # TOMLDecodeError is a ValueError
        path = read_toml(args.config or DEFAULT_PATH)["storage"]["path"]
        if isinstance(path, str):
            return path
    return SCHEMA["storage"]["path"].default


def main(argv: list[str] | None = None, pin_factory=None) -> int:
    args = parse_args(argv)
    journal = to_journal()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter((JournalFormatter if journal else logging.Formatter)("%(levelname)s %(message)s"))
    logging.basicConfig(level=args.log_level, handlers=[handler])
    try:
        cfg = config_from(args)
        if args.command == "run":
            return cmd_run(cfg, pin_factory)
        if args.command == "check":
            return cmd_check(cfg, args.skip)
        if args.command == "analyze":
            return cmd_analyze(cfg, args)
        if args.command == "summary":
            return cmd_summary(cfg, args)
        return cmd_export(cfg, args)
    except FAILURES as e:
        message = str(e)
        if isinstance(e, ConfigError) and args.command in ("export", "summary"):  # a wrong pin must not lock out
            message += (f"\n(to read the feedback meanwhile, without the config: feedbackd {args.command} "  # the owner
                        f"--config /dev/null --db {configured_log(args)}"
                        + (", its ratings and \"Not sure\" counts then by the default settings)"
                           if args.command == "summary" else ")"))
        print(f"{'<3>' if journal else ''}feedbackd: error: {message}", file=sys.stderr)  # err in the journal
        return 2


if __name__ == "__main__":
    sys.exit(main())

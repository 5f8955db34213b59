"""The device classifier on an older Pi image: tflite_runtime 2.14 under numpy < 2, in the
second environment `make test` builds (.venv-tflite); it must agree with LiteRT on top-1."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import numpy as np
import pytest
from conftest import FACE_DIR, ROOT, photo

from device.model import EmotionClassifier, runtime_name

OLD_ENV = ROOT / ".venv-tflite" / "bin" / "python"
UNAVAILABLE = ROOT / ".venv-tflite" / ".unavailable"  # written by make when no Python 3.9-3.11 is found
SCRIPT = """
import json, sys
import numpy as np
from device.model import EmotionClassifier, runtime_name
clf = EmotionClassifier(sys.argv[1])
faces = np.load(sys.argv[2])
print(json.dumps({"runtime": runtime_name(clf.interpreter), "numpy": np.__version__,
                  "probabilities": clf.predict(faces).tolist()}))
"""


def photo_faces() -> np.ndarray:
    """The real photo's face cropped as the daemon crops it, at a few sizes and sideways shifts:
    faces a customer shows, on which the shipped model is mostly sure (a small synthetic model's
    near-ties go either way on two builds of the kernels)."""
    import cv2

    from device.config import load_config
    from device.detector import CropGeometry, FaceDetector, crop_face

    frame = cv2.imread(str(photo()))
    box = FaceDetector(FACE_DIR).detect(frame)[0]
    base = CropGeometry.from_config(load_config()["detector"])
    return np.stack([crop_face(frame, dataclasses.replace(box, x0=box.x0 + dx, x1=box.x1 + dx),
                               CropGeometry(base.scale * zoom, base.shift_y), 48)
                     for zoom in (0.9, 1.0, 1.1, 1.2) for dx in (-6, 0, 6)])


def test_the_shipped_int8_model_agrees_under_tflite_runtime(tmp_path):
    if UNAVAILABLE.exists() and not OLD_ENV.exists():
        pytest.skip(UNAVAILABLE.read_text().strip())
    assert OLD_ENV.exists(), "the tflite_runtime environment is missing: 'make test' builds .venv-tflite"
    model = ROOT / "models" / "fer_vgg16_int8.tflite"
    faces = photo_faces()
    np.save(tmp_path / "faces.npy", faces)
    r = subprocess.run([str(OLD_ENV), "-c", SCRIPT, str(model), str(tmp_path / "faces.npy")],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    old = json.loads(r.stdout.strip().splitlines()[-1])
    assert old["runtime"] == "tflite_runtime" and old["numpy"].startswith("1.")
    clf = EmotionClassifier(model)
    assert runtime_name(clf.interpreter) == "ai_edge_litert"
    # Two builds of the int8 kernels round differently, and each layer carries the difference on:
    # within 0.05 (about 13 output steps of 1/256), and the same most likely emotion for each face.
    new = clf.predict(faces)
    np.testing.assert_allclose(old["probabilities"], new, atol=0.05)
    assert np.array_equal(np.argmax(old["probabilities"], 1), new.argmax(1))


def test_a_model_too_new_for_tflite_runtime_is_named(converted):
    """The dynamic-range variant needs kernels newer than 2.14: a clear error, not a crash."""
    if UNAVAILABLE.exists() and not OLD_ENV.exists():
        pytest.skip(UNAVAILABLE.read_text().strip())
    assert OLD_ENV.exists(), "the tflite_runtime environment is missing: 'make test' builds .venv-tflite"
    model = converted / "fer_vgg16_dynamic.tflite"
    r = subprocess.run([str(OLD_ENV), "-c", "import sys; from device.model import EmotionClassifier, ModelError\n"
                        "try:\n    EmotionClassifier(sys.argv[1])\nexcept ModelError as e:\n    sys.exit(str(e))",
                        str(model)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1 and f"{model}: cannot load TFLite model" in r.stderr, r.stderr[-2000:]


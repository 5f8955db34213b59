"""The device side under a Pi's own package set: Raspberry Pi OS bookworm's Python 3.11 with apt's
numpy 1.24.2, for which pip picks older OpenCV and ml_dtypes releases than this workstation's
(.venv-pi, which `make test` builds). The same photos must give the same faces and emotions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import FACE_DIR, ROOT, photo

PI_ENV = ROOT / ".venv-pi" / "bin" / "python"
UNAVAILABLE = ROOT / ".venv-pi" / ".unavailable"  # written by make when there is no Python 3.11
VERSIONS = "import cv2, numpy; print(cv2.__version__, numpy.__version__)"


def _analyze(python: str, model, images) -> list[dict]:
    r = subprocess.run([python, "-m", "device.cli", "analyze", "--json", "--model", str(model),
                        "--detector-dir", str(FACE_DIR), *map(str, images)], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_photos_give_the_same_faces_and_emotions_under_the_pi_package_set(converted, tmp_path):
    if UNAVAILABLE.exists() and not PI_ENV.exists():
        pytest.skip(UNAVAILABLE.read_text().strip())
    assert PI_ENV.exists(), "the Pi package set is missing: 'make test' builds .venv-pi"
    import cv2

    r = subprocess.run([str(PI_ENV), "-c", VERSIONS], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pi_cv2, pi_numpy = r.stdout.split()
    assert pi_numpy == "1.24.2" and pi_cv2 != cv2.__version__  # the set a Pi gets, not this one again
    image = cv2.imread(str(photo()))
    top, left, h, w = 300, 700, image.shape[0] // 2, image.shape[1] // 2
    canvas = np.full((720, 1280, 3), 200, np.uint8)  # the customer small and off-centre, as at a till
    canvas[top : top + h, left : left + w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "till.png"), canvas)
    images = [photo(), tmp_path / "till.png"]
    model = converted / "fer_vgg16_int8.tflite"
    pi, here = _analyze(str(PI_ENV), model, images), _analyze(sys.executable, model, images)
    assert [len(r["faces"]) for r in here] == [1, 1]
    x0, y0, x1, y1 = box = here[1]["faces"][0]["box"]
    assert left <= x0 < x1 <= left + w and top <= y0 < y1 <= top + h, f"{box}: not the pasted face"
    moved = np.add(np.divide(here[0]["faces"][0]["box"], 2), [left, top, left, top])  # the photo's own, halved
    assert np.abs(moved - box).max() <= 16, f"{box}: not where the photo's face went ({moved})"
    for a, b in zip(pi, here, strict=True):
        assert a["emotion"] == b["emotion"] and len(a["faces"]) == len(b["faces"])
        for fa, fb in zip(a["faces"], b["faces"], strict=True):
            assert np.abs(np.subtract(fa["box"], fb["box"])).max() <= 2  # pixels
            probs = [[f["probabilities"][k] for k in sorted(f["probabilities"])] for f in (fa, fb)]
            np.testing.assert_allclose(*probs, atol=0.02)

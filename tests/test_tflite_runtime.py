"""The device classifier on an older Pi image: tflite_runtime 2.14 under numpy < 2, in the
second environment `make test` builds (.venv-tflite); it must agree with LiteRT on top-1."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
from conftest import ROOT, synthetic_faces

from device.model import EmotionClassifier, runtime_name

OLD_ENV = ROOT / ".venv-tflite" / "bin" / "python"
SCRIPT = """
import json, sys
import numpy as np
from device.model import EmotionClassifier, runtime_name
clf = EmotionClassifier(sys.argv[1])
faces = np.load(sys.argv[2])
print(json.dumps({"runtime": runtime_name(clf.interpreter), "numpy": np.__version__,
                  "top1": clf.predict(faces).argmax(1).tolist()}))
"""


def test_int8_model_agrees_under_tflite_runtime(converted, tmp_path):
    assert OLD_ENV.exists(), "the tflite_runtime environment is missing: 'make test' builds .venv-tflite"
    model = converted / "fer_vgg16_int8.tflite"
    faces, _ = synthetic_faces(2, seed=11)
    np.save(tmp_path / "faces.npy", faces)
    r = subprocess.run([str(OLD_ENV), "-c", SCRIPT, str(model), str(tmp_path / "faces.npy")],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    old = json.loads(r.stdout.strip().splitlines()[-1])
    assert old["runtime"] == "tflite_runtime" and old["numpy"].startswith("1.")
    clf = EmotionClassifier(model)
    assert runtime_name(clf.interpreter) == "ai_edge_litert"
    assert old["top1"] == clf.predict(faces).argmax(1).tolist()

"""Distillation targets: what an ensemble of teacher models says about each training face.

Two VGG16s from different runs agree on most faces and err differently on the rest, so their
averaged probabilities score above either one; a student trained toward them (mixed with the
labels) can keep part of that gain in one network. The targets are computed once per run, on the
un-augmented faces with the device's views (face and mirror image, so a flip leaves them true),
and saved in the run folder so that a resume trains toward exactly the same numbers."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from device.model import sha256_file
from device.preprocess import CLASSES
from training.run import replace_durably

TARGETS = "teacher_targets.npz"


def teacher_records(paths: list[str]) -> list[dict]:
    """Each teacher's file and checksum, for the run's config and the model card."""
    return [{"file": p, "sha256": sha256_file(Path(p))} for p in paths]


def teacher_targets(run: Path, teachers: list[dict], faces: np.ndarray) -> np.ndarray:
    """The teachers' averaged probabilities for `faces` (uint8), from the run folder when they were
    computed for these very teachers and faces (a resume trains toward the same numbers; a run
    restarted with other teachers or data does not); a changed teacher file is an error."""
    import hashlib

    path = run / TARGETS
    key = json.dumps({"teachers": [t["sha256"] for t in teachers],
                      "faces": hashlib.sha256(np.ascontiguousarray(faces)).hexdigest()})
    try:
        with np.load(path) as saved:
            if str(saved["key"]) == key:
                return saved["targets"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # none yet, or cut short by a power cut: computed again
    import keras

    from training.train import classify

    probs = []
    for t in teachers:
        if sha256_file(Path(t["file"])) != t["sha256"]:
            raise SystemExit(f"error: --teacher {t['file']}: changed since the run started")
        try:
            model = keras.saving.load_model(t["file"], compile=False)
        except Exception as e:  # Keras and h5py raise many kinds for a file that is not a model
            raise SystemExit(f"error: --teacher {t['file']}: cannot load it ({type(e).__name__}: {e})") from None
        if tuple(model.output_shape[1:]) != (len(CLASSES),):
            raise SystemExit(f"error: --teacher {t['file']}: gives {model.output_shape[1:]} outputs, not one per class")
        probs.append(classify(model, faces))
        print(f"teacher {t['file']}: {len(faces)} faces")
    targets = np.mean(probs, axis=0).astype(np.float32)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, targets=targets, key=np.array(key))
    replace_durably(tmp, path)
    return targets

"""Distillation targets: what an ensemble of teacher models says about each training face.

Two VGG16s from different runs agree on most faces and err differently on the rest, so their
averaged probabilities score above either one; a student trained toward them (mixed with the
labels) can keep part of that gain in one network. The targets are computed once per run, on the
un-augmented faces with the device's views (face and mirror image, so a flip leaves them true),
and saved in the run folder so that a resume trains toward exactly the same numbers; or, with
`--teacher-sees batches`, on each augmented batch as the student sees it (consistent teaching,
Beyer et al. 2022: an erased mouth changes what the teachers say too)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from device.model import ModelError, sha256_file
from device.preprocess import DEFAULT_SPEC
from training.run import replace_durably

TARGETS = "teacher_targets.npz"


def teacher_records(paths: list[str]) -> list[dict]:
    """Each teacher's file and checksum, for the run's config and the model card."""
    return [{"file": p, "sha256": sha256_file(Path(p))} for p in paths]


def load_teacher(teacher: dict):
    """The teacher's Keras model, refused by name when its file changed since the run started or
    it does not take the device's faces (else a failure deep in Keras, after the data has loaded)."""
    from training.export import load_float_model  # not at the top: training.train imports this module

    if sha256_file(Path(teacher["file"])) != teacher["sha256"]:
        raise ModelError(f"{teacher['file']}: changed since the run started")
    return load_float_model(Path(teacher["file"]), DEFAULT_SPEC)


def teacher_targets(run: Path, teachers: list[dict], faces: np.ndarray) -> np.ndarray:
    """The teachers' averaged probabilities for `faces` (uint8), from the run folder when they were
    computed for these very teachers and faces (a resume trains toward the same numbers; a run
    restarted with other teachers or data does not). A changed teacher file, or one that is not a Keras
    model taking the device's faces and giving one probability per class, raises ModelError naming it."""
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
    from training.train import classify  # not at the top: training.train imports this module

    probs = []
    for t in teachers:
        probs.append(classify(load_teacher(t), faces, DEFAULT_SPEC))
        print(f"teacher {t['file']}: {len(faces)} faces")
    targets = np.mean(probs, axis=0).astype(np.float32)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, targets=targets, key=np.array(key))
    replace_durably(tmp, path)
    return targets


def teacher_ensemble(teachers: list[dict], policy: str):
    """One Keras model whose output is the teachers' averaged probabilities, in the run's `policy`
    (on the AMX Xeon a teacher reads 600 faces a second in bfloat16 and 225 in float32, while the
    student trains on about 90: two float32 teachers would nearly double an epoch)."""
    import keras

    def in_policy(layer):
        config = layer.get_config()
        if layer.name != "predictions" and "dtype" in config:  # probabilities stay float32, as in training
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    face = keras.Input((DEFAULT_SPEC.size, DEFAULT_SPEC.size, 1), name="face")
    outputs = []
    for i, t in enumerate(teachers):
        loaded = load_teacher(t)
        model = keras.models.clone_model(loaded, clone_function=in_policy)
        model.set_weights(loaded.get_weights())
        model.name = f"teacher{i}"
        model.trainable = False
        outputs.append(model(face, training=False))
    mean = outputs[0] if len(outputs) == 1 else keras.layers.Average(dtype="float32")(outputs)
    return keras.Model(face, mean, name="teachers")

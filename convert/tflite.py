"""Keras model -> TFLite bytes in one of the quantization variants the device can run."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import numpy as np

VARIANTS = ("int8", "float16", "dynamic", "float32")


def representative_faces(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded, class-stratified calibration set: about n/classes faces of each class."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per_class = max(1, n // len(classes))
    picks = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in classes]
    return x[np.sort(np.concatenate(picks))]


def to_tflite(model, variant: str, calibration: np.ndarray | None = None) -> bytes:
    """Convert a Keras model; `calibration` (preprocessed float inputs) is needed for int8."""
    import tensorflow as tf

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    with tempfile.TemporaryDirectory() as saved:
        model.export(saved, format="tf_saved_model", verbose=False)
        conv = tf.lite.TFLiteConverter.from_saved_model(saved)
        if variant != "float32":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if variant == "float16":
            conv.target_spec.supported_types = [tf.float16]
        if variant == "int8":
            if calibration is None or not len(calibration):
                raise ValueError("int8 conversion needs a calibration set")

            def gen() -> Iterator[list[np.ndarray]]:
                for face in calibration:
                    yield [face[None].astype(np.float32)]

            conv.representative_dataset = gen
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        return conv.convert()

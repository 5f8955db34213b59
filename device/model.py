"""The emotion model on the device: the manifest contract and the LiteRT classifier.

The manifest (JSON beside the `.tflite`) is the one contract between training and
device: labels, input spec and quantization are read from it, never assumed, and a
model whose sha256 differs from its manifest is refused.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import json
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

import numpy as np

from device.imports import not_installed
from device.preprocess import CLASSES, DISPLAY_NAMES, InputSpec, predict_faces

# 2 added the input's `views` and `class_scale`, which change what the device computes: a reader of 1
# would ignore them and score lower without a word, so it refuses a 2 instead. 1 is still read.
SCHEMA_VERSION = 2
READS_SCHEMAS = (1, 2)
MADV_DONTNEED = 4  # <sys/mman.h> on Linux
TIE = 1e-3  # of a quantization step: float32 noise moves a value about 1e-5 of a step off a tie, no more


class ModelError(RuntimeError):
    """The model or its manifest is missing, malformed or inconsistent; names the file."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_path(model: Path) -> Path:
    return model.with_suffix(".json")


@dataclass(frozen=True)
class Manifest:
    labels: tuple[str, ...]
    display_names: tuple[str, ...]
    spec: InputSpec
    dtype: str
    input_quant: tuple[float, int] | None
    output_quant: tuple[float, int] | None
    sha256: str
    raw: dict

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(f"{path}: model manifest not found (copy the model's .json beside it, as "
                             "'sudo make install' does on a kiosk; 'make convert' writes both on a desk)") from None
        except (OSError, ValueError) as e:  # ValueError: not JSON, or not even UTF-8
            raise ModelError(f"{path}: cannot read model manifest: {e}") from None
        try:
            if d["schema_version"] not in READS_SCHEMAS:
                raise ModelError(f"{path}: manifest schema_version {d['schema_version']}, this feedbackd reads "
                                 f"{' and '.join(map(str, READS_SCHEMAS))}: update it (git pull, then make install)")
            labels = tuple(x["name"] for x in d["labels"])
            display = tuple(x["display_name"] for x in d["labels"])
            inp = d["input"]
            m = cls(labels, display, InputSpec.from_dict(inp, needs_views=d["schema_version"] >= 2),
                    str(inp["dtype"]), _quantization(inp.get("quantization")),
                    _quantization(d["output"].get("quantization")), str(d["tflite_sha256"]), d)
            # a class shown under another's name (a hand edit swapped two) scores right and reads wrong;
            # indexed, not zip(strict=): .venv-tflite may run Python 3.9, whose zip takes no keywords
            wrong = [f"{n} as {display[i]}" for i, n in enumerate(labels)
                     if n not in CLASSES or display[i] != DISPLAY_NAMES[CLASSES.index(n)]]
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:  # Overflow: a zero point of 1e999
            raise ModelError(f"{path}: malformed model manifest ({type(e).__name__}: {e})") from None
        if wrong:  # rating.map rates these seven only, each by its own name
            names = ", ".join(f"{c} as {DISPLAY_NAMES[i]}" for i, c in enumerate(CLASSES))
            raise ModelError(f"{path}: label {', '.join(wrong)}: feedbackd rates these emotions only, each shown by "
                             f"its own name: {names}")
        if not labels or len(labels) != len(set(labels)):
            raise ModelError(f"{path}: manifest labels must be a non-empty list of distinct names")
        if m.spec.class_scale and len(m.spec.class_scale) != len(labels):
            raise ModelError(f"{path}: manifest class_scale has {len(m.spec.class_scale)} values "
                             f"for {len(labels)} labels")
        return m


def _quantization(q: dict | None) -> tuple[float, int] | None:
    """(scale, zero_point), or None for a float tensor. A scale of 0 is refused: it would pass the
    check against a float model's (0, 0) and then zero every probability."""
    if q is None:
        return None
    scale = float(q["scale"])
    if not 0 < scale < float("inf"):
        raise ValueError(f"quantization scale {scale} (a positive number, or no quantization at all)")
    return scale, int(q["zero_point"])


# The runtimes in order of preference, as (module, its Interpreter); TensorFlow is the last
# resort, e.g. on a workstation.
RUNTIMES = (("ai_edge_litert.interpreter", "Interpreter"), ("tflite_runtime.interpreter", "Interpreter"),
            ("tensorflow", "lite.Interpreter"))


def load_interpreter(model: Path, num_threads: int = 1):
    """A LiteRT interpreter from the first runtime installed. One that is installed but fails to
    import (tflite-runtime 2.14 under numpy 2, say) is an error naming it, not a silent fall-through
    to the next, which would end in advice to install what is already there."""
    for name, attr in RUNTIMES:
        try:
            Interpreter = attrgetter(attr)(importlib.import_module(name))
            break
        except Exception as e:  # numpy's "dtype size changed" is a ValueError
            if not not_installed(e, name):
                raise ModelError(f"{name} is installed but cannot be imported: {e}") from None
    else:
        raise ModelError("no TFLite runtime: install ai-edge-litert (or tflite-runtime)")
    try:
        return Interpreter(model_path=str(model), num_threads=num_threads)
    except (ValueError, RuntimeError) as e:
        raise ModelError(f"{model}: cannot load TFLite model: {e}") from None


def release_mapped_pages(path: Path) -> int:
    """Drop this process's resident pages of the read-only file mapped at `path` (Linux;
    elsewhere a no-op). They stay in the page cache and fault back in if ever read again,
    so this only lowers resident memory, never changes what is read. The daemon locks its memory
    (memlock) and the kernel refuses to drop locked pages, so the mapping is unlocked first: it
    holds the model's weights, never a frame. Returns bytes advised."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    target, done = str(Path(path).resolve()), 0
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target and "w" not in fields[1]:
            start, end = (int(a, 16) for a in fields[0].split("-"))
            libc.munlock(ctypes.c_void_p(start), ctypes.c_size_t(end - start))
            if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED) == 0:
                done += end - start
    return done


def runtime_name(interpreter) -> str:
    return type(interpreter).__module__.split(".")[0]


def quantize(x: np.ndarray, scale: float, zero: int, dtype: np.dtype) -> np.ndarray:
    """Model input to the integer input tensor. Half-way values round up, all of them: a converter's
    grid may sit half a step off the pixels' (4/255 with zero point -1 does), and float32 noise sent
    some ties up and some down, merging 17 of the 256 gray levels with a neighbour."""
    info = np.iinfo(dtype)
    return np.clip(np.floor(x / scale + zero + (0.5 + TIE)), info.min, info.max).astype(dtype)


def verified_manifest(path: Path) -> tuple[Manifest, str]:
    """The model file's manifest and sha256, checked against each other without loading LiteRT:
    the pre-upgrade check runs this too, before the running kiosk is stopped."""
    if not path.is_file():
        raise ModelError(f"{path}: emotion model not found: check model.path, or restore the model "
                         "('sudo make install' from the checkout on a kiosk, 'make convert' on a desk)")
    if path.suffix != ".tflite":
        raise ModelError(f"{path}: expected a converted .tflite model (run 'make convert' on a .keras one)")
    manifest = Manifest.load(manifest_path(path))
    try:
        actual = sha256_file(path)
    except OSError as e:  # a root-only file copied in, a failing SD card
        raise ModelError(f"{path}: cannot read the emotion model: {e}") from None
    if actual != manifest.sha256:
        raise ModelError(
            f"{path}: sha256 {actual[:16]}… does not match its manifest "
            f"{manifest_path(path)} ({manifest.sha256[:16]}…); refusing to use it (copy the model "
            "and its manifest together, as 'sudo make install' does; 'make convert' writes both)"
        )
    return manifest, actual


class EmotionClassifier:
    """Classify uint8 face crops with a verified `.tflite` model and its manifest."""

    def __init__(self, model: str | Path, num_threads: int = 1):
        self.path = Path(model)
        self.manifest, self.sha256 = verified_manifest(self.path)
        self.interpreter = load_interpreter(self.path, num_threads)
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._check_manifest()
        self._batch = int(self._input["shape"][0])
        self._allocate(len(self.spec.views))  # one face's batch: a model that cannot take it is refused now

    def _check_manifest(self) -> None:
        """The manifest's input and quantization must be the model's own: a mismatch would
        otherwise surface as a bare runtime error (or silently wrong scores) in the loop."""
        m, inp, out = self.manifest, self._input, self._output

        def quant(q) -> tuple[float, int] | None:  # scales compared to 6 digits (float32 in the model)
            return (float(f"{q[0]:.6g}"), int(q[1])) if q and q[0] else None

        checks = {
            "input size": ((m.spec.size, m.spec.size, 1), tuple(int(v) for v in inp["shape"][1:])),
            "input dtype": (m.dtype, np.dtype(inp["dtype"]).name),
            "outputs": (len(m.labels), int(out["shape"][-1])),
            "input quantization": (quant(m.input_quant), quant(inp["quantization"])),
            "output quantization": (quant(m.output_quant), quant(out["quantization"])),
        }
        for name, (manifest_value, model_value) in checks.items():
            if manifest_value != model_value:
                raise ModelError(f"{manifest_path(self.path)}: {name} {manifest_value} does not match "
                                 f"the model's {model_value} ({self.path})")

    def _allocate(self, batch: int) -> None:
        """Size the input for `batch` images and allocate tensors, then unmap the model file's pages:
        XNNPACK has packed its own copy of the weights by now, so the mapped file only doubled the
        resident memory (~16 MB)."""
        try:
            if batch != self._batch:
                self.interpreter.resize_tensor_input(self._input["index"], [batch, *self._input["shape"][1:]])
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as e:
            raise ModelError(f"{self.path}: cannot prepare the TFLite model for a batch of {batch}: {e}") from None
        release_mapped_pages(self.path)
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = batch

    @classmethod
    def from_config(cls, cfg: dict) -> EmotionClassifier:
        """From the config's [model] section."""
        return cls(cfg["path"], cfg["num_threads"])

    @property
    def spec(self) -> InputSpec:
        return self.manifest.spec

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """uint8 faces (N, S, S) or (S, S) -> probabilities (N, classes) float32."""
        return predict_faces(self._invoke, faces, self.spec)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed float input (N, S, S, 1) -> probabilities, resizing the batch as needed."""
        if len(x) != self._batch:
            self._allocate(len(x))
        if self.manifest.input_quant:
            x = quantize(x, *self.manifest.input_quant, self._input["dtype"])
        self.interpreter.set_tensor(self._input["index"], x.astype(self._input["dtype"]))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._output["index"])
        if self.manifest.output_quant:
            scale, zero = self.manifest.output_quant
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)

    def predict_batched(self, faces: np.ndarray, batch: int = 64) -> np.ndarray:
        return np.concatenate([self.predict(faces[i : i + batch]) for i in range(0, len(faces), batch)])

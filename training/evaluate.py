"""Evaluate an emotion model on a labelled FER-2013-style set.

    python -m training.evaluate --model models/fer_vgg16.keras --data FER2013 [--split private] [--json]

MODEL is a Keras model (`.keras`, read as the `.train.json` beside it says), a training run
folder (the weights it exports: its best epoch, or its average; the curves are drawn too) or a
`.tflite` file, which runs through the device's own LiteRT classifier with the preprocessing its
manifest names. DATA is any form that
`training.data` reads; a split layout or CSV is evaluated on its test split (PublicTest;
--split private for PrivateTest where the data has it), a bare class-folder set whole.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from device.imports import not_installed
from device.model import EmotionClassifier, ModelError, verified_manifest
from device.preprocess import CLASSES, DEFAULT_SPEC, DISPLAY_NAMES, InputSpec
from training import data as fer
from training.export import load_float_model, out_error, read_record, record_spec
from training.metrics import report
from training.run import STATE, chosen_weights, read_config, read_state


def predict_keras(path: Path, faces: np.ndarray, spec: InputSpec) -> np.ndarray:
    from training.train import classify

    if not path.is_dir():
        return classify(load_float_model(path, spec), faces, spec)
    from training.model import build_vgg16  # a training run: rebuild the model, load what it exports

    model = build_vgg16(width=(cfg := read_config(path, "width", "dropout"))["width"], dropout=cfg["dropout"])
    try:
        model.load_weights(chosen_weights(path, read_state(path)))
    except Exception as e:  # h5py raises many kinds for a damaged weights file
        raise ModelError(f"{path}: cannot load the run's weights ({type(e).__name__}: {e})") from None
    return classify(model, faces, spec)


def keras_spec(path: Path) -> InputSpec:
    """How the device would read this Keras model: as its export record says (the .train.json
    beside it, if it is this model's), as its run's config says, else the plain default."""
    from training.train import model_spec

    if path.is_dir():
        if counts := read_state(path).get("train_class_counts"):
            return model_spec(read_config(path, "class_weight_power"), counts)
        print(f"warning: {path}: its state.json records no class counts (a run begun by an older feedbackd), "
              "so it is scored without the class scale its export would apply", file=sys.stderr)
        return DEFAULT_SPEC
    record = read_record(path)  # refuses another model's record rather than quietly scoring without it
    if record is None:  # as convert says it: the score then differs from the card's
        print(f"warning: {path.with_suffix('.train.json')} not found: scoring {path.name} with the default input "
              "spec, without the class_scale logit adjustment its training record gives", file=sys.stderr)
        return DEFAULT_SPEC
    return record_spec(record, path)


def check_model_path(model: Path) -> None:
    """Fail before minutes of data loading: the model must be a .tflite beside its manifest, a .keras
    or a run folder."""
    if model.is_dir():
        missing = [n for n in ("config.json", STATE) if not (model / n).is_file()]
        if missing:
            raise ModelError(f"{model}: not a training run folder (no {', '.join(missing)})")
        if not (weights := chosen_weights(model, read_state(model))).is_file():
            raise ModelError(f"{model}: no {weights.name} to score (a run none of whose epochs beat its --init "
                             "model exports nothing)")
    elif not model.is_file():
        raise ModelError(f"{model}: no such model file or run folder")
    elif model.suffix not in (".tflite", ".keras"):
        raise ModelError(f"{model}: expected a .tflite or .keras model or a training run folder")
    elif model.suffix == ".tflite":
        verified_manifest(model)  # a missing manifest or another model's


def predict_probs(model: Path, faces: np.ndarray, spec: InputSpec | None, threads: int = 2) -> np.ndarray:
    """Class probabilities (N, 7) from a `.tflite` (device code, its manifest's spec) or a Keras model
    or run (`spec`, its `keras_spec`)."""
    if model.suffix == ".tflite":
        clf = EmotionClassifier(model, num_threads=threads)
        if tuple(clf.manifest.labels) != CLASSES:
            raise ModelError(f"{model}: manifest labels {clf.manifest.labels} are not FER-2013's {CLASSES}")
        return clf.predict_batched(faces)
    return predict_keras(model, faces, spec)


def format_report(r: dict) -> str:
    lines = [f"faces {r['n']}   accuracy {r['accuracy']:.4f}   macro-F1 {r['macro_f1']:.4f}", "",
             f"{'class':<10} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>8}"]
    for name, shown in zip(CLASSES, DISPLAY_NAMES, strict=True):
        c = r["per_class"][name]
        lines.append(f"{shown:<10} {c['precision']:>9.3f} {c['recall']:>7.3f} {c['f1']:>6.3f} {c['support']:>8}")
    return "\n".join(lines)


def write_pngs(model: Path, r: dict, out_dir: Path) -> list[Path]:
    """The confusion matrix (and a run's curves) as PNGs; none, with a note, where matplotlib is not
    installed, as in a Pi's venv of device packages: the report printed before them is what counts."""
    from training.plots import confusion_png, curves_png

    stem = model.name if model.is_dir() else model.stem
    history = model / "history.csv" if model.is_dir() and (model / "history.csv").exists() else None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        pngs = [confusion_png(np.array(r["confusion_matrix"]), out_dir / f"{stem}_confusion.png",
                              f"{stem} on {Path(r['data']).name} ({r['split']}): accuracy {r['accuracy']:.1%}")]
        return pngs + ([curves_png(history, out_dir / f"{stem}_curves.png")] if history else [])
    except ImportError as e:
        if not not_installed(e, "matplotlib"):
            raise
        skipped = "confusion matrix and curves PNGs" if history else "confusion matrix PNG"
        print(f"note: {skipped} not written: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return []


def out_dir_error(out_dir: Path) -> str | None:
    """Why the PNGs could not go into --out-dir, said before minutes of scoring rather than as a
    traceback after them; none where matplotlib is not installed (a Pi's venv), which draws nothing."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return None
    return out_error(out_dir, "the confusion matrix PNG (and a run's curves)", flag="--out-dir", writer="evaluate")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help=".keras, .tflite or a training run folder")
    p.add_argument("--data", type=Path, required=True, help="FER-2013 CSV, layout folder/zip or class folders")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--out-dir", type=Path, default=Path("build/eval"), help="where the PNGs go")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad images instead of stopping")
    p.add_argument("--threads", type=int, default=2, help="LiteRT threads for a .tflite (default: %(default)s)")
    p.add_argument("--split", choices=["test", "private"],
                   help="of a CSV or split layout: test (PublicTest, the default) or private (PrivateTest)")
    args = p.parse_args(argv)
    if args.threads < 1:  # LiteRT's own message would blame the model, after the data has loaded
        p.error(f"--threads {args.threads}: must be at least 1")
    if error := out_dir_error(args.out_dir):
        print(error, file=sys.stderr)
        return 2

    try:
        check_model_path(args.model)
        spec = None if args.model.suffix == ".tflite" else keras_spec(args.model)  # a bad record: before the data
        split = args.split or fer.eval_split_name(args.data)
        data = fer.load_split(args.data, split, skip_bad=args.skip_bad)
        probs = predict_probs(args.model, data.x, spec, args.threads)
    except (fer.DataError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = report(data.y, probs.argmax(1))
    r.update(model=str(args.model), data=str(args.data), split=split, skipped=len(data.skipped))

    # printed before the PNGs are drawn: the minutes of scoring are not lost if drawing fails
    if args.json:
        print(json.dumps(r))
    else:
        print(format_report(r))
        if data.skipped:
            print(f"\nskipped {len(data.skipped)} bad files, first: {data.skipped[0]}")
    if (pngs := write_pngs(args.model, r, args.out_dir)) and not args.json:
        print("\nwrote " + ", ".join(map(str, pngs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

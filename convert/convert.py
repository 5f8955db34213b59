"""`make convert`: quantize the trained VGG16 to TFLite, verify every variant through the
device's own LiteRT code, and only then move the files into `models/`.

    python -m convert [--model models/fer_vgg16.keras] --data FER2013 [--variants int8,float16,dynamic]

Refuses (exit 1, `models/` untouched) when int8 accuracy falls more than --max-drop points, or
macro-F1 more than --max-f1-drop, below the float model, unless --allow-drop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np

from convert.tflite import VARIANTS, representative_faces, to_tflite
from device.model import SCHEMA_VERSION, EmotionClassifier, ModelError, manifest_path, sha256_file
from device.preprocess import CLASSES, DEFAULT_SPEC, DISPLAY_NAMES, InputSpec, preprocess
from training import data as fer
from training.export import MODEL_NAME, check_trained_on, load_float_model, out_error, read_record, record_spec
from training.metrics import report
from training.run import replace_durably

DEFAULT_VARIANTS = ("int8", "float16", "dynamic")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/fer_vgg16.keras"), help="float Keras model")
    p.add_argument("--data", type=Path, required=True, help="FER-2013 (CSV, layout folder or zip)")
    p.add_argument("--out", type=Path, help="where the TFLite models go (default: the float model's folder)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: %(default)s)")
    p.add_argument("--calibration", type=int, default=300, metavar="N",
                   help=f"int8 calibration faces, class-stratified: N // {len(CLASSES)} of each class, so "
                        "300 (the default) gives 294")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad images instead of stopping")
    p.add_argument("--seed", type=int, default=2013)
    p.add_argument("--max-drop", type=float, default=1.0, help="largest int8 accuracy drop allowed, in points")
    p.add_argument("--max-f1-drop", type=float, default=0.02,
                   help="largest int8 macro-F1 drop allowed, from 0 to 1 (default: %(default)s; the shipped int8 "
                        "lost under 0.001): accuracy barely moves when a rare class, disgust say, loses 0.14 of "
                        "its F1, which this bar refuses")
    p.add_argument("--allow-drop", action="store_true", help="keep an int8 model that breaks either bar")
    p.add_argument("--latency-runs", type=int, default=100, help="single-face invokes timed per variant")
    args = p.parse_args(argv)
    if args.model.suffix != ".keras":  # a .tflite given by mistake: said before minutes of loading the data
        p.error(f"--model {args.model}: not a float Keras model (.keras); the converter makes the .tflite files")
    if args.calibration < len(CLASSES):
        p.error(f"--calibration: {args.calibration} faces cannot cover the {len(CLASSES)} classes")
    if args.latency_runs < 1:
        p.error("--latency-runs: at least 1")
    if not 0 <= args.seed < 2**32:  # else numpy refuses it after minutes of loading and scoring
        p.error(f"--seed {args.seed}: must be from 0 to 2**32 - 1")
    args.out = args.out or args.model.parent  # a side model's conversion never replaces the shipped one
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        p.error(f"--variants: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(VARIANTS)}")
    return args


def tool_versions() -> dict:
    out = {}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def io_details(tflite: Path) -> tuple[dict, dict]:
    """Input and output tensor descriptions (shape, dtype, quantization) for the manifest."""
    from device.model import load_interpreter

    interp = load_interpreter(tflite)

    def describe(d: dict) -> dict:
        scale, zero = d["quantization"]
        q = {"scale": float(scale), "zero_point": int(zero)} if scale else None
        return {"shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name, "quantization": q}

    return describe(interp.get_input_details()[0]), describe(interp.get_output_details()[0])


def latency_ms(clf: EmotionClassifier, face: np.ndarray, runs: int) -> float:
    """Median single-face latency with the interpreter's own thread count."""
    clf.predict(face)
    times = []
    for _ in range(max(1, runs)):
        t = time.perf_counter()
        clf.predict(face)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def training_spec(model: Path, data: fer.Split) -> InputSpec:
    """The input spec the manifest will carry: the one the training record (the .train.json beside
    the model) names, class_scale included, or the default for a model without a record. Refuses a
    record of another model, one whose labels are not this code's, or one trained on other data than
    `data`: the calibration, the accuracy gate and the manifest's metrics would not be its own."""
    path = model.with_suffix(".train.json")
    record = read_record(model)
    if record is None:
        print(f"warning: {path} not found: converting {model.name} with the default input spec, without the "
              "class_scale logit adjustment its training record gives (copy the .train.json beside it)",
              file=sys.stderr)
        return DEFAULT_SPEC
    check_trained_on(record, model, data, required=False)
    return record_spec(record, model)


def write_manifest(tflite: Path, final_name: str, variant: str, spec: InputSpec, extra: dict) -> Path:
    inp, out = io_details(tflite)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model": final_name,
        "variant": variant,
        "labels": [{"name": n, "display_name": d} for n, d in zip(CLASSES, DISPLAY_NAMES, strict=True)],
        "input": {**inp, **spec.to_dict()},
        "output": out,
        "tflite_sha256": sha256_file(tflite),
        **extra,
    }
    path = manifest_path(tflite)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def converted_from(manifest: Path) -> dict | None:
    """A manifest this converter wrote, with the float model it came from; None for anything else."""
    try:
        m = json.loads(manifest.read_text())
        return m if isinstance(m["source_model"]["sha256"], str) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def same_model(m: dict, source_sha256: str, spec: InputSpec) -> bool:
    """Whether a converted variant's manifest is of this float model read this way: re-scoring a
    model (training.export --model) may change its input spec, class scale say, not its weights."""
    try:
        return m["source_model"]["sha256"] == source_sha256 and InputSpec.from_dict(m["input"]) == spec
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C or SIGTERM between two renames would leave a manifest naming a model that is not there
    (and the staged one deleted on the way out): each is acted on once the block is done. Python
    handlers, not a signal mask, which TensorFlow's threads would not share."""
    got: list[int] = []
    old = {s: signal.signal(s, lambda n, _: got.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if got:  # not after an error: the run ends with it, and its staged files are removed on the way
        signal.raise_signal(got[0])


def remove_stale_variants(out: Path, stem: str, source_sha256: str, spec: InputSpec) -> list[Path]:
    """Variants left from an earlier float model or input spec (not rebuilt this time) would
    contradict the report and the card: every converted file in `out` comes from the current one."""
    removed = []
    for manifest in (out / f"{stem}_{v}.json" for v in VARIANTS):  # not fer_vgg16_small_int8.json, say
        m = converted_from(manifest)
        model = manifest.with_suffix(".tflite")
        if m and model.exists() and not same_model(m, source_sha256, spec):
            model.unlink()
            manifest.unlink()
            removed.append(model)
    return removed


def earlier_rows(out: Path, stem: str, source_sha256: str, spec: InputSpec, data_sha256: str,
                 done: list[str]) -> list[dict]:
    """Report rows, from their manifests, for variants of this same float model and input spec,
    scored on the same data, that an earlier conversion kept: `--variants float16` must not drop
    the int8 model's row from the report."""
    rows = []
    for v in (v for v in VARIANTS if v not in done):
        model = out / f"{stem}_{v}.tflite"
        m = converted_from(manifest_path(model))
        if not (m and same_model(m, source_sha256, spec) and model.is_file()):
            continue
        try:
            if m["dataset"]["sha256"] != data_sha256:
                continue
            rows.append({"variant": v, "file": f"{model.name} (converted {m['created']})", "earlier": True,
                         "size": int(m["size_bytes"]), "latency_ms": float(m["latency_ms_per_face"]),
                         **{k: float(m["metrics"][k]) for k in ("accuracy", "macro_f1", "agreement")},
                         "calibration": {k: int(m["calibration"][k]) for k in ("faces", "seed")} if v == "int8"
                         else None})
        except (KeyError, TypeError, ValueError):  # a manifest from before these fields: no row
            continue
    return rows


def int8_shortfalls(float_report: dict, int8: dict, args: argparse.Namespace) -> list[str]:
    """How far the int8 model falls below the float model beyond --max-drop and --max-f1-drop."""
    drop = 100 * (float_report["accuracy"] - int8["accuracy"])
    f1_drop = float_report["macro_f1"] - int8["macro_f1"]
    said = []
    if drop > args.max_drop:
        said.append(f"int8 PublicTest accuracy {int8['accuracy']:.2%} is {drop:.2f} points below the float "
                    f"model's {float_report['accuracy']:.2%} (allowed: {args.max_drop:.2f})")
    if f1_drop > args.max_f1_drop:
        said.append(f"int8 PublicTest macro-F1 {int8['macro_f1']:.4f} is {f1_drop:.4f} below the float "
                    f"model's {float_report['macro_f1']:.4f} (allowed: {args.max_f1_drop:.4f})")
    return said


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.model.is_file():
        print(f"error: {args.model}: float model not found (train one with 'make train')", file=sys.stderr)
        return 2
    if error := out_error(args.out, "the .tflite models, their manifests and the conversion report"):
        print(error, file=sys.stderr)  # before minutes of loading and scoring
        return 2
    try:
        train = fer.load_split(args.data, "train", skip_bad=args.skip_bad)
        # a pair, as a run's: a CSV row of no split is counted once, by the train load
        test = fer.load_split(args.data, fer.eval_split_name(args.data), skip_bad=args.skip_bad, count_unassigned=False)
        for split in (train, test):
            if split.skipped:
                print(f"skipped {len(split.skipped)} bad files, first: {split.skipped[0]}", file=sys.stderr)
        spec = training_spec(args.model, test)
        model = load_float_model(args.model, spec)
    except (ModelError, fer.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from training.train import classify

    source = {"file": args.model.name, "sha256": sha256_file(args.model)}
    float_pred = classify(model, test.x, spec).argmax(1)  # as the device will run it
    float_report = report(test.y, float_pred)
    calib = preprocess(representative_faces(train.x, train.y, args.calibration, args.seed), spec)
    print(f"float model {args.model}: PublicTest accuracy {float_report['accuracy']:.4f} "
          f"({len(test)} faces); calibrating int8 on {len(calib)} Training faces")

    # Reference row: the unquantized float32 TFLite, for size and latency ratios.
    variants = list(dict.fromkeys(["float32", *args.variants]))
    stem = args.model.stem
    args.out.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []  # (temporary, final) pairs, renamed only after all checks
    rows = []
    try:
        for variant in variants:
            keep = variant in args.variants
            final = args.out / f"{stem}_{variant}.tflite"
            tmp = args.out / f".{stem}_{variant}.tmp.tflite"
            tmp.write_bytes(to_tflite(model, variant, calib if variant == "int8" else None))
            extra = {
                "source_model": source,
                "dataset": {"file": Path(test.source).name, "sha256": test.checksum},
                "calibration": {"faces": len(calib), "split": "train", "seed": args.seed,
                                "stratified": True} if variant == "int8" else None,
                "tools": tool_versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_manifest(tmp, final.name, variant, spec, extra)
            clf = EmotionClassifier(tmp, num_threads=2)  # the device's loader: checks the manifest too
            pred = clf.predict_batched(test.x).argmax(1)
            r = report(test.y, pred)
            row = {
                "variant": variant,
                "file": final.name if keep else "(reference, not kept)",
                "accuracy": r["accuracy"],
                "macro_f1": r["macro_f1"],
                "agreement": float((pred == float_pred).mean()),
                "size": tmp.stat().st_size,
                "latency_ms": latency_ms(EmotionClassifier(tmp, num_threads=1), test.x[:1], args.latency_runs),
                "calibration": extra["calibration"],
            }
            rows.append(row)
            print(f"{variant:>8}: accuracy {row['accuracy']:.4f}  macro-F1 {row['macro_f1']:.4f}  "
                  f"agreement {row['agreement']:.4f}  {row['size'] / 1e6:.1f} MB  {row['latency_ms']:.1f} ms/face")
            if keep:
                metrics = {k: row[k] for k in ("accuracy", "macro_f1", "agreement")}
                m = json.loads(manifest_path(tmp).read_text())
                m.update(metrics={"split": test.split, "n": r["n"], **metrics,
                                  "float_accuracy": float_report["accuracy"]},
                         size_bytes=row["size"], latency_ms_per_face=round(row["latency_ms"], 3))
                manifest_path(tmp).write_text(json.dumps(m, indent=2) + "\n")
                staged.append((tmp, final))
            else:
                tmp.unlink()
                manifest_path(tmp).unlink()

        int8 = next((r for r in rows if r["variant"] == "int8"), None)
        if int8 and (shortfalls := int8_shortfalls(float_report, int8, args)) and not args.allow_drop:
            print(f"error: refused: {'; '.join(shortfalls)}; {args.out} is unchanged (--allow-drop keeps it anyway)",
                  file=sys.stderr)
            return 1

        from convert.report import write_report

        rows += earlier_rows(args.out, stem, source["sha256"], spec, test.checksum, variants)
        report_tmp = write_report(args.out / f".{stem}_CONVERT_REPORT.tmp.md", args, source, float_report, rows,
                                  len(test), spec)
        # another model's conversion into the same folder keeps its own report: the shipped one's stays true
        report_path = args.out / ("CONVERT_REPORT.md" if stem == MODEL_NAME else f"{stem}_CONVERT_REPORT.md")
        with signals_held():  # each rename on the disk, the folder whole before a Ctrl-C or a stop acts
            for tmp, final in staged:  # manifests first: a model never sits beside a stale manifest
                replace_durably(manifest_path(tmp), manifest_path(final))
                replace_durably(tmp, final)
            replace_durably(report_tmp, report_path)
            removed = remove_stale_variants(args.out, stem, source["sha256"], spec)
        print(f"wrote {', '.join(str(f) for _, f in staged)} and {report_path}")
        for old in removed:
            print(f"removed {old}: converted from an older {args.model.name} or input spec")
        return 0
    except ModelError as e:
        print(f"error: verification failed: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk while staging: named, not a traceback (the staged files go below)
        print(f"error: {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        for variant in variants:  # this run's staging files only: not another model's of a similar name
            tmp = args.out / f".{stem}_{variant}.tmp.tflite"
            tmp.unlink(missing_ok=True)
            manifest_path(tmp).unlink(missing_ok=True)
        (args.out / f".{stem}_CONVERT_REPORT.tmp.md").unlink(missing_ok=True)

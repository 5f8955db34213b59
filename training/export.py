"""Export a run's best epoch (or its average, see `training.average`) to `models/`: the float32
Keras model, its training record (JSON), the confusion matrix and curves, and the model card.

    python -m training.export --run-dir RUN --data FER2013 [--out models]
    python -m training.export --model models/fer_vgg16.keras --data FER2013 [--skip-bad]

The second form re-scores an exported model whose run is gone with this code's reading of it
(its class_scale), rewriting its record, confusion matrix and card; the weights are untouched (a
model exported before `deflate` is stored again compressed, the same weights in a smaller file).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from device.model import ModelError, sha256_file
from device.preprocess import CLASSES, ONE_VIEW, InputSpec
from training import data as fer
from training.metrics import report
from training.run import (
    STATE,
    XLA_ENGINE,
    chosen_weights,
    finished_state,
    holding,
    other_data,
    read_config,
    read_json,
    read_state,
    replace_durably,
    save_state,
)

MODEL_NAME = "fer_vgg16"


def deflate(src: Path, dst: Path) -> None:
    """Write the .keras archive `src` to `dst` (whole or not at all) with its members compressed.
    Keras stores them as they are; deflating VGG16's float32 weights takes the shipped model from
    64.4 MB to 59.3 MB, under the 64 MB a model in `models/` may take. The weights keep their bytes."""
    tmp = dst.with_name(dst.stem + ".deflating" + dst.suffix)
    try:
        with zipfile.ZipFile(src) as plain, zipfile.ZipFile(tmp, "w") as packed:
            for member in plain.infolist():
                info = zipfile.ZipInfo(member.filename, member.date_time)  # the same date: the same bytes again
                info.compress_type = zipfile.ZIP_DEFLATED
                packed.writestr(info, plain.read(member))
    except BaseException:  # a full disk or a Ctrl-C leaves no part-written archive in models/
        tmp.unlink(missing_ok=True)
        raise
    replace_durably(tmp, dst)


def stored_plain(path: Path) -> bool:
    """Whether a .keras archive holds a member uncompressed (every export before `deflate`)."""
    with zipfile.ZipFile(path) as z:
        return any(m.compress_type == zipfile.ZIP_STORED for m in z.infolist())


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores"


def architecture(model) -> str:
    """What the record calls the model, read off its layers: a --width run is narrower than VGG16."""
    import keras

    convs = [x for x in model.layers if isinstance(x, keras.layers.Conv2D)]
    blocks = {x.name.split("_")[0]: x.filters for x in convs}  # a block's convs share its width
    fc = [x.units for x in model.layers if isinstance(x, keras.layers.Dense)]
    return (f"VGG16-BN ({len(convs)} conv in {len(blocks)} blocks {'-'.join(map(str, blocks.values()))}, "
            f"FC {'-'.join(map(str, fc))})")


def warm_start_lineage(init: str | None) -> dict | None:
    """What a warm start began from; read when the run starts, before its export may overwrite that file.
    Its record is the one beside it, else the one in models/ of the same model (a start from a copy of
    the shipped model, as CYCLES.md's commands make, has none beside it)."""
    if not init or not Path(init).is_file():
        return None
    path, models = Path(init), Path("models")  # where exports go unless told otherwise (run_out)
    entry = {"file": path.name, "sha256": sha256_file(path)}
    for record_path in [path.with_name(path.stem + ".train.json"), *sorted(models.glob("*.train.json"))]:
        if not record_path.is_file():
            continue
        if (prev := read_json(record_path, "training record")).get("sha256") != entry["sha256"]:
            continue  # another model's (an older export, the shipped model beside a copy of another)
        try:
            return {**entry, "epochs": prev["epochs"], "config": prev["config"],
                    "publictest_accuracy": prev.get("publictest_single_view", prev["publictest"])["accuracy"],
                    "wall_seconds": prev.get("wall_seconds"),  # the card adds up the lineage's
                    "warm_start_from": prev.get("warm_start_from"), "average": prev.get("average")}
        except (KeyError, TypeError) as e:
            raise ModelError(f"{record_path}: unreadable training record ({type(e).__name__}: {e})") from None
    if path.suffix == ".keras":  # ImageNet weights (.h5) have no FER epochs to count
        print(f"warning: --init {path}: no training record of this model beside it or in {models}/, so its "
              "lineage is unknown: the record and card will count only this run's epochs", file=sys.stderr)
    return entry


def run_out(state: dict, out: Path | None) -> Path:
    """Where a run's export goes: --out if given, else where the run itself exported (models/ for runs
    that did not record it), so a resume, average or re-export of a side run never lands in models/."""
    return out or Path(state.get("out", "models"))


def out_error(out: Path, writes: str = f"{MODEL_NAME}.keras and its card", flag: str = "--out",
              writer: str = "the export") -> str | None:
    """Why `writer` could not write into the folder `out` (given as `flag`: a run's --run-dir, evaluate's
    --out-dir), said before hours of training or minutes of loading data: a file there, or a read-only
    folder, would only fail when it is written, as a traceback."""
    if out.exists() and not out.is_dir():
        return f"error: {flag} {out}: a file, not a folder ({writer} writes {writes} into it)"
    folder = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"error: {flag} {out}: {folder} is not writable for this user"
    return None


def staged_path(model: Path) -> Path:
    """Where an export or re-score writes the model before the record names it and it moves over `model`."""
    return model.with_name(f"{MODEL_NAME}.staged.keras")


def land_staged(model: Path) -> None:
    """Finish an export or re-score stopped after its record was written but before the staged model
    moved in (the record names the staged file): the model, its record and card agree again. A staged
    model no record names is left to the next export, which writes over it: it may be one under way."""
    staged, record_path = staged_path(model), model.with_suffix(".train.json")
    if model.name != f"{MODEL_NAME}.keras" or not staged.is_file() or not record_path.is_file():
        return
    record = read_json(record_path, "training record")
    if record.get("sha256") == sha256_file(staged):
        replace_durably(staged, model)
        write_record(record, model.parent)  # the card and confusion matrix may be the old model's


def exported_record(model: Path) -> dict | None:
    """The training record of the model at `model`; None where there is no model, or no record of it
    (a file without its record has no score to keep)."""
    land_staged(model)
    record_path = model.with_suffix(".train.json")
    if not model.is_file() or not record_path.is_file():
        return None
    record = read_json(record_path, "training record")
    return record if record.get("sha256") == sha256_file(model) else None


def comparable(record: dict, test: fer.Split) -> bool:
    """Whether a record's PublicTest figure was measured on `test`'s faces: the same data and face count
    (a folder data set's test/ has 7178 faces, PublicTest 3589)."""
    data = record.get("data") or {}
    return data.get("sha256") == test.checksum and data.get("publictest_faces") == len(test)


def export_model(run: Path, out: Path, train: fer.Split, test: fer.Split, force: bool = False) -> Path:
    """Export the run's chosen weights to `out`; refused (ModelError) where the model already there
    scored higher on the same PublicTest faces by its record, unless `force`: the run keeps what it
    would export (its state says so, for a new run in its folder)."""
    import keras
    import tensorflow as tf

    from training.model import build_vgg16
    from training.plots import curves_png
    from training.train import code_commit, model_spec, policy_name

    export_commit = code_commit()  # before this export's own files make the tree dirty; an export
    # redone later may score the model with newer code than the run's
    cfg = read_config(run, "width", "dropout", "class_weight_power")
    state = read_state(run, "epochs_done", "best_epoch", "wall_seconds")
    keras.mixed_precision.set_global_policy("float32")
    model = build_vgg16(width=cfg["width"], dropout=cfg["dropout"])
    model.load_weights(chosen_weights(run, state))

    # Saved when the run started (runs before that saving: read now, which is right only for the
    # run's own first export, before it replaced the --init file).
    lineage = state["warm_start_from"] if "warm_start_from" in state else warm_start_lineage(cfg.get("init"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{MODEL_NAME}.keras"
    kept = None if force else exported_record(path)  # an unreadable record refuses before anything is staged

    # The faces the run's class weights came from (its --limit subset, if any), kept in its state:
    # re-exporting with the whole split must not give another class_scale.
    counts = state.get("train_class_counts") or train.class_counts().tolist()
    spec = model_spec(cfg, counts)
    val, single = score(model, spec, test)
    if kept and (kept_accuracy := (kept.get("publictest") or {}).get("accuracy")) is not None:
        if not comparable(kept, test):  # no bar: said, so that the replacement is seen
            data = kept.get("data") or {}
            print(f"warning: {path} scored {kept_accuracy:.2%} on {data.get('publictest_faces', '?')} test faces of "
                  f"data sha256 {(data.get('sha256') or '?')[:12]}, this export {val['accuracy']:.2%} on {len(test)} "
                  f"of {test.checksum[:12]}: not comparable figures, so it is replaced", file=sys.stderr)
        elif kept_accuracy > val["accuracy"]:
            if state.get("export_due"):  # a new run in the folder names --force, not a retry refused again
                save_state({**state, "export_refused": {"model": str(path), "model_accuracy": kept_accuracy,
                                                        "export_accuracy": val["accuracy"]}}, run / STATE)
            raise ModelError(f"refused: {path} scored {kept_accuracy:.2%} on PublicTest (its training record), "
                             f"this export {val['accuracy']:.2%}; {out} is unchanged and {run} keeps the weights: "
                             f"python -m training.export --run-dir {run} --data DATA --out {out} --force replaces "
                             "it anyway")
    # staged until its record is written, then moved over the model: an export stopped while it
    # writes the record leaves the model before it beside its own record, not the new one beside it
    staged = staged_path(path)
    with tempfile.TemporaryDirectory() as tmp:  # Keras writes its members stored, uncompressed
        model.save(plain := Path(tmp) / path.name)
        deflate(plain, staged)
    with open(run / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    commit_file = run / "code_commit"
    record = {
        "model": path.name,
        "sha256": sha256_file(staged),
        "size_bytes": staged.stat().st_size,
        "architecture": architecture(model),
        "parameters": int(model.count_params()),
        "input": spec.to_dict(),
        "labels": list(CLASSES),
        "config": cfg,
        "epochs": state["epochs_done"],
        "warm_start_from": lineage,
        "best_epoch": state["best_epoch"],
        "average": state.get("average"),
        "wall_seconds": round(state["wall_seconds"], 1),
        "publictest": val,
        "publictest_single_view": single,
        "data": {
            "source": Path(train.source).name,
            "sha256": train.checksum,
            "train_faces": int(sum(counts)),
            "train_class_counts": counts,
            "publictest_faces": len(test),
            "train_skipped": len(train.skipped),  # bad files --skip-bad left out
            "publictest_skipped": len(test.skipped),
            "publictest_mixed": test.mixed,  # test/ read whole: it may hold PrivateTest, which the card then says
        },
        "code_commit": ", resumed on ".join(commit_file.read_text().split()) if commit_file.exists() else "unknown",
        "export_commit": export_commit,
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
        },
        "cpu": "; ".join(state.get("cpus") or [cpu_name()]),  # where it trained, not where it was exported
        "precision": "; ".join(state.get("policies") or [state.get("policy") or policy_name(cfg["precision"])]),
        "engine": "; ".join(state.get("engines") or [XLA_ENGINE]),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "history": history,
    }
    curves_png(run / "history.csv", out / f"{MODEL_NAME}_curves.png")
    write_record(record, out)
    replace_durably(staged, path)
    warn_stale_conversions(path, record)
    if state.get("export_due"):  # the run's result is out of its folder: a new run there may remove it
        state.pop("export_refused", None)
        save_state({**state, "export_due": False}, run / STATE)
    return path


def score(model, spec, test: fer.Split) -> tuple[dict, dict]:
    """PublicTest as the device classifies (`spec`), and on one view of the network alone (no
    class_scale), the figure training chose epochs by."""
    from training.train import classify

    val = report(test.y, classify(model, test.x, spec).argmax(1))
    single = report(test.y, classify(model, test.x, replace(spec, views=ONE_VIEW, class_scale=())).argmax(1))
    return val, {k: single[k] for k in ("accuracy", "macro_f1")}


def write_record(record: dict, out: Path) -> None:
    """The training record, confusion matrix and card beside the model."""
    from training.card import write_card
    from training.plots import confusion_png

    tmp = out / f"{MODEL_NAME}.train.json.{os.getpid()}.tmp"  # two writers at once each write their own
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    replace_durably(tmp, out / f"{MODEL_NAME}.train.json")
    val = record["publictest"]
    confusion_png(np.array(val["confusion_matrix"]), out / f"{MODEL_NAME}_confusion.png",
                  f"VGG16 on FER-2013 PublicTest: accuracy {val['accuracy']:.1%}")
    write_card(record, out / "MODEL_CARD.md")


def read_record(model: Path, land: bool = False) -> dict | None:
    """The training record beside an exported model, None where there is none; refuses one that
    cannot be read or is another model's. Only a writer (a re-score) may `land` a staged model: a
    reader (evaluate, convert) moving files could pull one from under an export still writing."""
    if land:
        land_staged(model)
    path = model.with_suffix(".train.json")
    if not path.is_file():
        return None
    record = read_json(path, "training record")
    if record.get("sha256") != sha256_file(model):
        staged = staged_path(model)
        if staged.is_file() and record.get("sha256") == sha256_file(staged):
            raise ModelError(f"{path}: this training record is for {staged}, which an export or re-score has not "
                             f"moved over {model} yet: wait for it to finish, or, if it was stopped, finish it with "
                             f"python -m training.export --model {model} --data DATA")
        raise ModelError(f"{path}: this training record is for another model than {model} (sha256 differs)")
    return record


def record_spec(record: dict, model: Path) -> InputSpec:
    """The input spec a training record names, refused by name when the record cannot give one, gives
    a class_scale of another length than the labels, or other labels (a hand edit): else scoring fails
    bare, or misnames its classes, after the data has loaded."""
    path = model.with_suffix(".train.json")
    try:
        spec = InputSpec.from_dict(record["input"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # AttributeError: "input" not an object
        raise ModelError(f"{path}: unreadable training record ({type(e).__name__}: {e})") from None
    if spec.class_scale and len(spec.class_scale) != len(CLASSES):
        raise ModelError(f"{path}: class_scale has {len(spec.class_scale)} values for {len(CLASSES)} labels")
    if record.get("labels") != list(CLASSES):  # scored or converted, its outputs would be read as other classes
        raise ModelError(f"{path}: the model was trained with labels {record.get('labels')}, "
                         f"but feedbackd reads its outputs as {list(CLASSES)}")
    return spec


def check_trained_on(record: dict, model: Path, data: fer.Split, required: bool = True) -> None:
    """Refuse a record trained on other data than `data`: scores, calibration and gates computed on
    it would not be the model's own. `required=False` lets a record that names no data through."""
    trained_on = (record.get("data") or {}).get("sha256")
    if trained_on == data.checksum or (trained_on is None and not required):
        return
    raise ModelError(f"{model.with_suffix('.train.json')}: the model was trained on data sha256 "
                     f"{(trained_on or '?')[:12]}, not on {data.source} ({data.checksum[:12]}); "
                     "use the data it was trained on")


def load_float_model(path: Path, spec: InputSpec):
    """The Keras model at `path`, refused by name when it is not one, or when it does not take the
    spec's faces and give one probability per class: else a bare Keras error deep in scoring."""
    import keras

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras and h5py raise many kinds for a file that is not a model
        raise ModelError(f"{path}: cannot load the Keras model ({type(e).__name__}: {e})") from None
    shapes = {"input": (tuple(model.input_shape[1:]), (spec.size, spec.size, 1)),
              "output": (tuple(model.output_shape[1:]), (len(CLASSES),))}
    for name, (actual, expected) in shapes.items():
        if actual != expected:
            raise ModelError(f"{path}: the model's {name} is {actual}, expected {expected}")
    return model


def rescore(path: Path, test: fer.Split) -> dict:
    """Score an exported model again with this code's `model_spec` (its record's config and class
    counts) and rewrite what the export wrote beside it, but for the weights and the curves. Only the
    views and class_scale are this code's: the size and normalization stay the record's, which the
    weights were trained with."""
    from training.train import code_commit, model_spec

    record_path = path.with_suffix(".train.json")
    if path.name != f"{MODEL_NAME}.keras":  # the card and record it writes are named for the shipped model
        raise ModelError(f"{path}: re-scoring writes {MODEL_NAME}.train.json and MODEL_CARD.md beside the model, "
                         f"so it must be named {MODEL_NAME}.keras (copy it into a folder of its own)")
    record = read_record(path, land=True)  # a writer: finishes a re-score or export stopped before its model moved
    if record is None:
        raise ModelError(f"{record_path}: no training record beside {path} to re-score")
    check_trained_on(record, path, test)
    try:  # a hand-edited or older record: named, not a bare KeyError after the data has loaded
        counts = record["data"]["train_class_counts"]
        fresh = model_spec(record["config"], counts)
        if len(counts) != len(CLASSES):
            raise ValueError(f"{len(counts)} train_class_counts for {len(CLASSES)} labels")
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{record_path}: unreadable training record ({type(e).__name__}: {e})") from None
    spec = replace(record_spec(record, path), views=fresh.views, class_scale=fresh.class_scale)
    val, single = score(load_float_model(path, spec), spec, test)
    record.update(input=spec.to_dict(), publictest=val, publictest_single_view=single, export_commit=code_commit(),
                  exported=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), rescored=True)
    record["data"]["publictest_mixed"] = test.mixed  # an older record's card must not say PrivateTest was held back
    if stored_plain(path):
        staged = staged_path(path)  # as an export: the record first, then the model
        deflate(path, staged)
        size = path.stat().st_size
        record.update(sha256=sha256_file(staged), size_bytes=staged.stat().st_size)
        write_record(record, path.parent)
        replace_durably(staged, path)
        print(f"{path}: stored deflated, {size:,} bytes to {record['size_bytes']:,}, the same weights")
    else:
        write_record(record, path.parent)
    warn_stale_conversions(path, record)
    return record


def warn_stale_conversions(model: Path, record: dict) -> None:
    """The device runs the converted file, not this one: a variant beside it converted from other
    weights or another input spec (class scale, views) is said, with what brings it up to date."""
    from convert.convert import converted_from, same_model
    from convert.tflite import VARIANTS

    spec = record_spec(record, model)
    manifests = (model.parent / f"{MODEL_NAME}_{v}.json" for v in VARIANTS)  # not fer_vgg16_small_int8.json
    stale = sorted(m.name for m in manifests
                   if (made := converted_from(m)) and not same_model(made, record["sha256"], spec))
    if stale:
        print(f"warning: {', '.join(stale)} in {model.parent} describe another model than {model.name} now holds "
              "(its sha256 or input spec differs): run make convert, or the device keeps the old one",
              file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-dir", type=Path, help="export this run's chosen weights")
    which.add_argument("--model", type=Path, help="re-score this exported model (its .train.json beside it)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, help="default: where the run exports (models/ unless it said otherwise)")
    p.add_argument("--skip-bad", action="store_true",
                   help="with --model: skip and count bad images in PublicTest, as the run that trained it did")
    p.add_argument("--force", action="store_true",
                   help="with --run-dir: export even over a model in --out whose training record scored "
                        "higher on PublicTest")
    args = p.parse_args(argv)
    if args.model and args.out:
        p.error("--out: a re-scored model's files stay beside it")
    if args.run_dir and args.skip_bad:
        p.error("--skip-bad: a run's export reads the data as the run did (its own --skip-bad)")
    if args.model and args.model.suffix != ".keras":  # a .tflite given by mistake: before loading the data
        p.error(f"--model {args.model}: not an exported Keras model (.keras); only that is re-scored")
    if args.model and not args.model.is_file():  # before minutes of loading the data
        p.error(f"--model {args.model}: no such model file")
    return holding(args.run_dir, lambda: run_export(args))


def run_export(args: argparse.Namespace) -> int:
    """The export or re-score, a run's folder held by this process alone."""
    state = {}
    if args.run_dir:
        state, error = finished_state(args.run_dir, f"finish it with training.train --resume --run-dir "
                                                    f"{args.run_dir} (which exports it)")
        if error:
            print(error, file=sys.stderr)
            return 2
        if error := out_error(run_out(state, args.out)):
            print(error, file=sys.stderr)
            return 2
        if not (weights := chosen_weights(args.run_dir, state)).is_file():
            print(f"error: --run-dir {args.run_dir}: no {weights.name} to export (a run none of whose epochs "
                  "beat its --init model exports nothing)", file=sys.stderr)
            return 2
    try:
        if args.model:  # re-scoring reads PublicTest only
            r = rescore(args.model, fer.load_split(args.data, "test", skip_bad=args.skip_bad))["publictest"]
            print(f"{args.model}: PublicTest accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}")
            return 0
        train, test = fer.train_and_test(args.data, skip_bad=state.get("skip_bad", False))  # as the run read it
    except (fer.DataError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if error := other_data(args.run_dir, state, train.checksum, args.data):
        print(error, file=sys.stderr)
        return 2
    try:
        print(export_model(args.run_dir, run_out(state, args.out), train, test, force=args.force))
    except (ModelError, OSError) as e:  # OSError: a card that filled up, say
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

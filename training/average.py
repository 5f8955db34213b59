"""Average the weights of models from one run's lineage (stochastic weight averaging, Izmailov
et al. 2018), re-estimate batch-norm statistics on the Training faces, and export the average
in place of the run's best epoch when it scores higher on PublicTest.

    python -m training.average --run-dir RUN --data FER2013 --models RUN/epoch7.weights.h5 ...

Models of one lineage (the epochs of a cycle, kept by `training.train --keep-epochs`, or the
cycle's starting model) lie in one basin of the loss, and their average sits nearer its flat
middle than any of them: it generalizes better at the cost of one pass over the data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from device.model import ModelError, sha256_file
from device.preprocess import DEFAULT_SPEC, preprocess
from training import data as fer
from training.export import MODEL_NAME, export_model, out_error, run_out
from training.metrics import report
from training.run import chosen_weights, commit_files, finished_state, holding, other_data, read_config


def load_weights(model, path: Path) -> list[np.ndarray]:
    """The weights of a `.keras` model or a `.weights.h5` file, checked against `model`'s shapes."""
    import keras

    if not path.is_file():
        raise SystemExit(f"error: --models {path}: no such file")
    try:
        if path.suffix == ".keras":
            weights = keras.saving.load_model(path, compile=False).get_weights()
        else:
            model.load_weights(path)
            weights = model.get_weights()
    except Exception as e:  # Keras, zipfile and h5py raise many kinds for a file that is not a model
        raise SystemExit(f"error: --models {path}: cannot load it ({type(e).__name__}: {e})") from None
    shapes = [w.shape for w in model.get_weights()]
    if [w.shape for w in weights] != shapes:
        raise SystemExit(f"error: --models {path}: not the run's architecture")
    return weights


def average_weights(model, paths: list[Path]) -> None:
    """Set `model`'s weights to the element-wise mean of the models in `paths`."""
    total = None
    for path in paths:
        weights = [w.astype(np.float64) for w in load_weights(model, path)]
        total = weights if total is None else [t + w for t, w in zip(total, weights, strict=True)]
    model.set_weights([(t / len(paths)).astype(np.float32) for t in total])


def recalibrate_batch_norm(model, x: np.ndarray, batch_size: int = 256) -> None:
    """Batch norm's moving statistics belong to the weights they were gathered with; for the
    average they are re-estimated over all of `x`, batch by batch."""
    import keras
    import tensorflow as tf

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momentum = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0  # each call leaves its own batch's statistics in the moving ones
    try:
        step = tf.function(lambda xb: model(xb, training=True), jit_compile=True)
        sums = [np.zeros((2, *layer.moving_mean.shape)) for layer in layers]
        for i in range(0, len(x), batch_size):
            n = len(x[i : i + batch_size])
            step(x[i : i + batch_size])  # with dropout, as in training: fc2_bn's inputs pass fc1's
            for total, layer in zip(sums, layers, strict=True):
                mean = layer.moving_mean.numpy().astype(np.float64)
                total += n * np.stack([mean, layer.moving_variance.numpy() + mean**2])  # E[v], E[v^2]
        for total, layer in zip(sums, layers, strict=True):
            mean, square = total / len(x)
            layer.moving_mean.assign(mean.astype(np.float32))
            layer.moving_variance.assign((square - mean**2).astype(np.float32))
    finally:
        for layer, m in zip(layers, momentum, strict=True):
            layer.momentum = m


def check_start(run: Path, state: dict, models: list[Path]) -> str | None:
    """Why a weights file is not one of the run's own, or why a `.keras` among the models cannot stand
    for the cycle's start (which the card repeats as a copy of the run's --init), or None: the run's
    own export there would average its best epoch in twice, another model would average another basin
    in. Judged by sha256, the run's start as it recorded it first (an export that did not land leaves
    the start in place)."""
    export = run_out(state, None) / f"{MODEL_NAME}.keras"
    exported = export.is_file() and (state["best_epoch"] or "average" in state)  # else it may be the start
    ours = sha256_file(export) if exported else None
    for m in models:  # the card repeats each as RUN/<name>: another run's epoch3 would read as this one's
        if m.suffix != ".keras" and m.absolute().parent.resolve() != run.resolve():
            return (f"error: --models {m}: not in {run}: the card would repeat it as one of this run's epochs; "
                    "average a run's own epoch files (and a copy of its --init model)")
    start = state.get("warm_start_from") or {}
    for m in (m for m in models if m.suffix == ".keras" and m.is_file()):
        sha = sha256_file(m)
        if start and sha == start.get("sha256"):
            continue
        if sha == ours:
            why = f"it is the model at {export}, where {run} exported its best epoch or average over its start"
        elif "warm_start_from" in state:  # runs before it was kept: unchecked
            why = (f"not the model {run} started from ({start['file']}, sha256 {start['sha256'][:12]})" if start
                   else f"{run} trained from scratch: it has no starting model to average in")
        else:
            continue
        return (f"error: --models {m}: {why}; pass a copy of the cycle's --init model, made before its export "
                "replaced it")
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.average", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, required=True, help="the run whose record the export carries")
    p.add_argument("--data", required=True, help="FER-2013 as the run was trained on")
    p.add_argument("--models", type=Path, nargs="+", required=True, help=".keras or .weights.h5 files to average")
    p.add_argument("--out", type=Path, help="default: where the run exports (models/ unless it said otherwise)")
    p.add_argument("--batch-norm-faces", type=int, default=0, metavar="N",
                   help="re-estimate batch norm on N Training faces drawn at random (default: all)")
    p.add_argument("--force", action="store_true",
                   help="export even over a model in --out whose training record scored higher on PublicTest")
    args = p.parse_args(argv)
    if args.batch_norm_faces < 0:  # a slice by a negative N would keep all but N, and the card say N
        p.error(f"--batch-norm-faces {args.batch_norm_faces}: must be at least 0 (0: all)")
    return holding(args.run_dir, lambda: run_average(args))


def run_average(args: argparse.Namespace) -> int:
    """The average, its run's folder held by this process alone."""
    run = args.run_dir
    # a run still training would drop the average from the state at its next epoch
    state, error = finished_state(run, "average it once it has finished (training.train --resume)")
    if error:
        print(error, file=sys.stderr)
        return 2
    out = run_out(state, args.out)
    if error := out_error(out):
        print(error, file=sys.stderr)
        return 2
    try:
        cfg = read_config(run, "width", "dropout", "seed", "init")
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if error := check_start(run, state, args.models):  # before minutes of loading the data
        print(error, file=sys.stderr)
        return 2
    if state["best_epoch"] == 0 and "average" not in state:  # the bar is the --init model: it must be the same one
        init, started = Path(cfg["init"]), (state.get("warm_start_from") or {}).get("sha256")
        if not init.is_file() or (started and sha256_file(init) != started):
            print(f"error: --init {init}: {'changed since' if init.is_file() else 'gone since'} {run} started "
                  "from it; the average has no bar to beat (restore that model there)", file=sys.stderr)
            return 2
    try:
        train, test = fer.train_and_test(args.data, skip_bad=state.get("skip_bad", False))  # as the run read it
    except fer.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if error := other_data(run, state, train.checksum, args.data):
        print(error, file=sys.stderr)
        return 2

    import keras

    from training.model import build_vgg16
    from training.train import limit_faces, predict

    limit_faces(train, cfg.get("limit", 0), cfg["seed"])

    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(cfg["seed"])  # dropout masks in the batch-norm pass: the same average every time
    model = build_vgg16(width=cfg["width"], dropout=cfg["dropout"])
    average_weights(model, args.models)
    n = args.batch_norm_faces or len(train)
    faces = train.x[np.random.default_rng(cfg["seed"]).permutation(len(train))[:n]]  # mixed batches
    recalibrate_batch_norm(model, preprocess(faces, DEFAULT_SPEC))
    x_test = preprocess(test.x, DEFAULT_SPEC)
    acc = report(test.y, predict(model, x_test).argmax(1))["accuracy"]
    # the bar in float32 too: the run scored its epochs in its training precision (bfloat16)
    chosen = build_vgg16(width=cfg["width"], dropout=cfg["dropout"])
    if state["best_epoch"] == 0 and "average" not in state:  # no epoch beat the --init model
        chosen.set_weights(load_weights(chosen, Path(cfg["init"])))
    else:
        chosen.load_weights(chosen_weights(run, state))
    bar = report(test.y, predict(chosen, x_test).argmax(1))["accuracy"]
    print(f"average of {len(args.models)} models: PublicTest accuracy {acc:.4f} (one view, float32); "
          f"the run's {'average' if 'average' in state else 'best epoch' if state['best_epoch'] else '--init model'} "
          f"{bar:.4f}")
    if acc <= bar:
        print(f"the average does not beat the run's best; {out} left as it was")
        return 0
    state.update(best_accuracy=acc, average={
        "models": [{"file": m.name, "sha256": sha256_file(m)} for m in args.models],
        "batch_norm_faces": len(faces),
        "publictest_accuracy": acc,
    }, export_due=True)  # a stop before the export lands must not let a new run remove the average
    # Staged and committed by the state like an epoch: a stop in between never leaves the state
    # describing one average and the file holding another.
    commit_files(run, state, lambda folder: model.save_weights(folder / "average.weights.h5"))
    try:
        path = export_model(run, out, train, test, force=args.force)
    except (ModelError, OSError) as e:  # a better model in --out, a full card: the run keeps the average
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported the average to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

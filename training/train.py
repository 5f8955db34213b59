"""Train VGG16 on FER-2013.

    python -m training.train --data ../shared/data/fer2013/fer2013-training-publictest.zip

Reads top to bottom: data, model, schedule, the epoch loop (checkpoint every epoch,
best epoch chosen on PublicTest), then the export of the best weights to `models/`.
A run directory holds everything needed to `--resume` exactly where a run stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from device.model import ModelError
from device.preprocess import CLASSES, DEFAULT_SPEC, InputSpec, predict_faces, preprocess
from training import data as fer
from training.distill import teacher_ensemble, teacher_records, teacher_targets
from training.export import cpu_name, export_model, out_error, read_record, run_out, warm_start_lineage
from training.metrics import report
from training.run import STATE, XLA_ENGINE, clear_run, commit_files, finish_pending, holding, read_state

# The recipe from scratch that learns (training/CYCLES.md): at a peak of 0.05 without a full epoch of
# warm-up a run stayed at chance for its first epochs. A resume runs with its own saved config.
DEFAULTS = {
    "epochs": 40,
    "batch_size": 128,
    "lr": 0.02,
    "warmup_epochs": 1.0,
    "weight_decay": 5e-3,
    "momentum": 0.9,
    "label_smoothing": 0.1,
    "dropout": 0.4,
    "width": 1.0,
    "class_weight_power": 0.3,
    "erase": 0.5,
    "mixup": 0.0,
    "distill": 0.0,
    "lr_floor": 0.0,
    "teacher_sees": "faces",
    "seed": 1234,
}
# What a run whose saved config predates a setting ran with (not today's default): its resume and
# the card's Reproduce read a missing key as this
PREDATED = {"erase": 0.0, "mixup": 0.0, "distill": 0.0, "lr_floor": 0.0, "teacher_sees": "faces"}
RANGES = [
    ("epochs", lambda v, a: v >= 1, "at least 1"),
    ("batch_size", lambda v, a: v >= 1, "at least 1"),
    ("lr", lambda v, a: v > 0, "above 0"),
    ("warmup_epochs", lambda v, a: 0 <= v < a.epochs, "at least 0 and below --epochs"),
    ("weight_decay", lambda v, a: v >= 0, "at least 0"),
    ("momentum", lambda v, a: 0 <= v < 1, "from 0 up to (not including) 1"),
    ("label_smoothing", lambda v, a: 0 <= v < 1, "from 0 up to (not including) 1"),
    ("dropout", lambda v, a: 0 <= v < 1, "from 0 up to (not including) 1"),
    ("width", lambda v, a: v > 0, "above 0"),
    ("erase", lambda v, a: 0 <= v <= 1, "between 0 and 1"),
    ("mixup", lambda v, a: v >= 0, "at least 0 (0: off)"),
    ("lr_floor", lambda v, a: 0 <= v <= 1, "between 0 and 1"),
    ("teacher_sees", lambda v, a: v in ("faces", "batches"), "faces or batches"),
    ("limit", lambda v, a: v >= 0, "at least 0"),
    ("seed", lambda v, a: 0 <= v < 2**32, "from 0 to 2**32 - 1"),  # numpy's seeds
    ("stop_after", lambda v, a: v >= 0, "at least 0 (0: run to the end)"),  # -1 would stop every sitting at once
]
# Settings whose flag alone does not say what they do
HELP = {"lr_floor": "where the cosine ends, as a fraction of --lr (1: constant after warm-up, for a run whose "
                    "epochs training.average averages); ",
        "mixup": "blend each face with another of its batch, weight ~ Beta(a, a) per face (mixup; with "
                 "--teacher-sees batches the teachers read the blend); 0: off; ",
        "teacher_sees": "what the --teacher models read: faces (each un-augmented face and its mirror image, "
                        "once per run) or batches (each augmented batch as the student sees it, every step: "
                        "about 1.3x the time an epoch); "}
HISTORY_FIELDS = ["epoch", "lr", "loss", "accuracy", "val_accuracy", "val_macro_f1", "seconds"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="FER-2013: CSV, image-folder layout folder or zip")
    p.add_argument("--run-dir", type=Path, default=fer.cache_dir() / "runs" / "vgg16",
                   help="checkpoints, history and logs of this run (default: %(default)s)")
    p.add_argument("--out", type=Path,
                   help="where the best model is exported (default: models/, or where the resumed run's goes)")
    again = p.add_mutually_exclusive_group()  # both would resume, silently
    again.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly")
    again.add_argument("--restart", action="store_true",
                       help="discard the unfinished run in --run-dir and start a new one there")
    p.add_argument("--init", type=Path, help="warm start from a .keras model or ImageNet VGG16 .h5 weights")
    p.add_argument("--teacher", action="append", default=[], metavar="MODEL",
                   help="a .keras model whose probabilities (averaged over all --teacher models) the "
                        "training targets mix in with weight --distill; repeatable")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"],
                   help="auto (default): mixed bfloat16 where the CPU has it; a resume keeps the run's "
                        "unless this is given")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad images instead of stopping")
    p.add_argument("--limit", type=int,
                   help="train on a seeded random N of the training faces (quick trials; default 0: all)")
    p.add_argument("--deterministic", action="store_true", help="bit-for-bit repeatable ops (slower)")
    p.add_argument("--keep-epochs", action="store_true",
                   help="keep every epoch's weights (epochN.weights.h5) for training.average; a resume keeps it")
    p.add_argument("--stop-after", type=int, default=0, metavar="N",
                   help="stop cleanly after epoch N of the run (continue later with --resume)")
    p.add_argument("--force", action="store_true",
                   help="export even over a model in --out whose training record scored higher on PublicTest")
    for key, value in DEFAULTS.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), help=HELP.get(key, "") + f"default {value}")
    args = p.parse_args(argv)
    # Which were given, 0 included (--limit 0: all the faces): a resume refuses those it would otherwise ignore.
    args.given = {k for k in (*DEFAULTS, "init", "limit") if getattr(args, k) is not None}
    args.given |= {"teacher"} if args.teacher else set()
    if args.limit is None:
        args.limit = 0
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key, ok, want in RANGES:  # named here, not as a Keras error (or a silent empty run) later
        if not ok(getattr(args, key), args):
            default = " (its default)" if key in DEFAULTS and key not in args.given else ""  # --epochs 1 alone
            p.error(f"--{key.replace('_', '-')} {getattr(args, key)}: must be {want}{default}")
    return args


def cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_xla() -> bool:
    """XLA's CPU kernels skip AMX, which oneDNN uses: on an AMX CPU a step runs 1.65x faster without XLA."""
    return "amx_bf16" not in cpu_flags()


def policy_name(precision: str) -> str:
    """The Keras dtype policy for --precision: auto is mixed bfloat16 where the CPU has bf16 instructions."""
    bf16 = precision == "bfloat16" or (precision == "auto" and cpu_has_bf16())
    return "mixed_bfloat16" if bf16 else "float32"


def class_weights(y: np.ndarray, power: float) -> np.ndarray:
    """Per-class weights ~ count^-power, scaled so the average sample weight is 1."""
    counts = np.bincount(y, minlength=len(CLASSES)).astype(float)
    w = np.where(counts > 0, np.maximum(counts, 1) ** -power, 0.0)
    return w * len(y) / (counts * w).sum()


def model_spec(cfg: dict, train_counts) -> InputSpec:
    """How the device reads a model trained with `cfg` on classes counted `train_counts`: the
    class weights' tilt (~count^-power) undone by a class_scale ~count^power (mean 1)."""
    power = cfg["class_weight_power"]
    if not power:
        return DEFAULT_SPEC
    s = np.maximum(np.asarray(train_counts, dtype=float), 1) ** power
    return replace(DEFAULT_SPEC, class_scale=tuple(float(f"{v:.6g}") for v in s / s.mean()))


def train_dataset(x, y, w, cfg: dict, epoch: int, teacher=None):
    """One epoch of shuffled, augmented batches; a pure function of (seed, epoch). The targets
    are the one-hot labels, mixed with the `teacher` probabilities by weight cfg["distill"]: one
    row per training face, or a model that reads each augmented batch (cfg["teacher_sees"]), after
    mixup (cfg["mixup"]) where that is on.

    `epoch` counts from the start of the model's lineage (see `epoch_offset`), so a
    warm-restart cycle draws new orders and augmentations instead of replaying its
    predecessor's epoch 1, 2, 3 (which the model had already fitted)."""
    import tensorflow as tf

    from training.augment import augment, mix_up

    order = np.random.default_rng([cfg["seed"], epoch]).permutation(len(y))
    seed = cfg["seed"] * 100_003 + epoch
    eye = tf.eye(len(CLASSES))
    mix = cfg.get("distill", PREDATED["distill"]) if teacher is not None else 0.0
    alpha = cfg.get("mixup", PREDATED["mixup"])

    def teach(target, taught):
        return (1 - mix) * target + mix * tf.cast(taught, target.dtype)

    def make_batch(i, idx):
        key = tf.stack([tf.constant(seed, tf.int64), i])
        xb = augment(tf.gather(x, idx), key, erase=cfg.get("erase", PREDATED["erase"]))
        target, wb = tf.gather(eye, tf.gather(y, idx)), tf.gather(w, idx)
        if mix and isinstance(teacher, tf.Tensor):  # per-face targets: blended by mixup with the faces
            target = teach(target, tf.gather(teacher, idx))
        if alpha:
            xb, target, wb = mix_up(tf.random.experimental.stateless_fold_in(key, 1), alpha, xb, target, wb)
        if mix and not isinstance(teacher, tf.Tensor):  # the teachers read the very batch, mixed or not
            target = teach(target, teacher(xb, training=False))
        return xb, target, wb

    ds = tf.data.Dataset.from_tensor_slices(order).batch(cfg["batch_size"]).enumerate()
    return ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def lr_schedule(cfg: dict, steps_per_epoch: int):
    """Linear warm-up from a tenth of the peak, then cosine decay down to `lr_floor` x the peak."""
    import keras

    warmup = int(cfg["warmup_epochs"] * steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg["lr"] / 10,
        warmup_target=cfg["lr"],
        warmup_steps=warmup,
        decay_steps=cfg["epochs"] * steps_per_epoch - warmup,
        alpha=cfg.get("lr_floor", PREDATED["lr_floor"]),
    )


def build_and_compile(cfg: dict, steps_per_epoch: int):
    import keras

    from training.model import build_vgg16

    model = build_vgg16(width=cfg["width"], dropout=cfg["dropout"])
    opt = keras.optimizers.SGD(lr_schedule(cfg, steps_per_epoch), momentum=cfg["momentum"], nesterov=True,
                               weight_decay=cfg["weight_decay"])
    opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(
        optimizer=opt,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg["label_smoothing"]),
        metrics=["accuracy"],
        jit_compile=use_xla(),  # XLA: about 1.15x faster per step on CPUs without AMX
    )
    return model


def epoch_offset(lineage: dict | None) -> int:
    """Epochs the --init model already had, from the training record beside it (0 if none)."""
    from training.card import total_epochs

    return total_epochs(lineage) if lineage and "epochs" in lineage else 0


def imagenet_kernels(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The kernels of the conv layers `names` in a keras.applications VGG16 .h5, read by layer name:
    the file with the classifier on top holds more layers than the one without, so loading by
    layer order fits only one of them."""
    import h5py

    kernels = {}
    with h5py.File(path, "r") as f:
        for name in names:
            first = f[name].attrs["weight_names"][0]  # the kernel; the bias follows it
            kernels[name] = np.asarray(f[name][first.decode() if isinstance(first, bytes) else first])
    return kernels


def warm_start(model, path: Path) -> None:
    """Copy weights from our own .keras model, or conv kernels from ImageNet VGG16 weights."""
    import keras

    if path.suffix == ".keras":
        try:
            model.set_weights(keras.saving.load_model(path, compile=False).get_weights())
        except Exception as e:  # Keras raises many kinds for another architecture or a broken file
            raise SystemExit(f"error: --init {path}: cannot load it into this model "
                             f"({type(e).__name__}: {e})") from None
        return
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    try:
        kernels = imagenet_kernels(path, [conv.name for conv in convs])
    except (OSError, KeyError, IndexError) as e:  # not HDF5, or no such layer or weights in it
        raise SystemExit(f"error: --init {path}: not ImageNet VGG16 weights ({type(e).__name__}: {e})") from None
    for target in convs:
        kernel = kernels[target.name]
        if target.name == "block1_conv1":
            kernel = kernel.sum(axis=2, keepdims=True)  # RGB -> gray
        if target.kernel.shape != kernel.shape:
            raise SystemExit(f"error: --init {path}: {target.name} has shape {kernel.shape}, "
                             f"this model needs {tuple(target.kernel.shape)}")
        target.kernel.assign(kernel)


def resume_model(cfg: dict, steps: int, path: Path):
    """The run's model and optimizer state from `last.keras`, in a freshly compiled model: a
    loaded optimizer forgets which variables are excluded from weight decay."""
    import keras

    model = build_and_compile(cfg, steps)
    try:
        saved = keras.saving.load_model(path)
        model.set_weights(saved.get_weights())
        model.optimizer.build(model.trainable_variables)
        for mine, theirs in zip(model.optimizer.variables, saved.optimizer.variables, strict=True):
            mine.assign(theirs)
    except Exception as e:  # Keras raises many kinds for a missing, cut-short or hand-made checkpoint
        raise ModelError(f"{path}: cannot load the run's checkpoint ({type(e).__name__}: {e})") from None
    return model


def limit_faces(train: fer.Split, limit: int, seed: int) -> None:
    """Keep the run's seeded --limit subset of the training faces (all when 0): averaging a run's
    epochs re-estimates batch-norm statistics on the faces it trained on, not on others."""
    if limit:
        keep = np.sort(np.random.default_rng(seed).permutation(len(train))[:limit])
        train.x, train.y = train.x[keep], train.y[keep]


def reseed_dropout(model, seed: int, epoch: int) -> None:
    """Dropout draws from per-layer seed state; pin it per epoch so a resumed run repeats it. Each
    step adds one to the state's second half, so the layers differ in the first: two that differed
    only in the second would draw the same masks a few steps apart."""
    for i, layer in enumerate(model.layers):
        gen = getattr(layer, "seed_generator", None)
        if gen is not None:
            key = np.random.default_rng([seed, epoch, i]).integers(2**31)
            gen.state.assign(np.array([key, 0], dtype=gen.state.dtype))


def predict(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return np.concatenate([model(x[i : i + batch_size], training=False).numpy()
                           for i in range(0, len(x), batch_size)])


def classify(model, faces: np.ndarray, spec: InputSpec = DEFAULT_SPEC) -> np.ndarray:
    """Probabilities for uint8 faces exactly as the device computes them (its views averaged)."""
    return predict_faces(lambda x: predict(model, x), faces, spec)


def code_commit(repo: Path = Path(__file__).parent) -> str:
    """The git commit the run's code came from, '-dirty' when the code had changes (not models/ or
    the Markdown documents, which change nothing a run does)."""
    import subprocess

    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], capture_output=True, text=True, cwd=repo)
        return r.stdout.strip() if r.returncode == 0 else ""

    head = git("rev-parse", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)models",
                  ":(top,exclude,glob)**/*.md")
    return head + ("-dirty" if changed else "")


def keep_history_rows(path: Path, n: int) -> None:
    """A run saved before epochs were committed whole may have logged an epoch it never saved."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) > n + 1:
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(rows[: n + 1])


def fmt_time(s: float) -> str:
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = args.run_dir
    # a file there, or a read-only folder, would fail only once the data has loaded, as a traceback
    if error := out_error(run, "its checkpoints, history and state", flag="--run-dir", writer="the run"):
        print(error, file=sys.stderr)
        return 2
    if not args.resume:  # a --resume with a typo names the missing run, and makes no folder
        run.mkdir(parents=True, exist_ok=True)  # for its lock
    return holding(run, lambda: run_training(args))


def run_training(args: argparse.Namespace) -> int:
    """The run, its folder held by this process alone."""
    run = args.run_dir
    try:
        old = read_state(run, "config", "epochs_done") if (run / STATE).exists() else None
    except ModelError as e:
        if not args.restart:  # a damaged or hand-edited state: --restart is the way out, so it may discard it
            print(f"error: {e}; --restart discards the run there, or use another --run-dir", file=sys.stderr)
            return 2
        old = None

    # --- configuration: fresh from the command line, or as saved by the run we resume
    discard = False
    if args.resume:
        if old is None:
            print(f"error: --resume: no run to resume in {run} (no state.json)", file=sys.stderr)
            return 2
        state = old
        cfg = state["config"]  # the run's own settings: a flag that would change them is refused
        ours = {**{k: getattr(args, k) for k in DEFAULTS}, "limit": args.limit,
                "init": str(args.init) if args.init else None, "teacher": args.teacher}
        theirs = {**cfg, "teacher": [t["file"] for t in cfg.get("teachers", [])]}
        changed = sorted(k for k in args.given if ours[k] != theirs.get(k, PREDATED.get(k)))
        if changed:
            print(f"error: --resume continues {run} with its own settings: drop "
                  + ", ".join(f"--{k.replace('_', '-')} (the run has {theirs.get(k)})" for k in changed)
                  + ", or start a new run with --restart or another --run-dir", file=sys.stderr)
            return 2
        finish_pending(run, state)  # a stop while an epoch was being saved
        if 0 < args.stop_after <= state["epochs_done"]:
            print(f"error: --stop-after {args.stop_after}: {run} has already done {state['epochs_done']} epochs; "
                  "drop it or give a later epoch", file=sys.stderr)
            return 2
    else:
        if old and old["epochs_done"] < old["config"]["epochs"] and not args.restart:
            print(f"error: {run} holds a run stopped after epoch {old['epochs_done']} of "
                  f"{old['config']['epochs']}: --resume to continue it, --restart to discard it, "
                  "or another --run-dir", file=sys.stderr)
            return 2
        if old and old.get("export_due") and not args.restart:  # its best epoch or average is only here
            if refused := old.get("export_refused"):  # retrying without --force would be refused again
                folder = Path(refused["model"]).parent  # --out as that export had it, not as the run does
                print(f"error: {run} holds a finished run whose export was refused: {refused['model']} scored "
                      f"{refused['model_accuracy']:.2%} on PublicTest, the run {refused['export_accuracy']:.2%}: "
                      f"--resume --force --out {folder} (or python -m training.export --run-dir {run} --data DATA "
                      f"--out {folder} --force) to replace it anyway, --restart to discard the run, or another "
                      "--run-dir", file=sys.stderr)
                return 2
            print(f"error: {run} holds a finished run whose export to {old.get('out', 'models')} did not complete: "
                  f"--resume (or python -m training.export --run-dir {run} --data DATA) to export it, --restart to "
                  "discard it, or another --run-dir", file=sys.stderr)
            return 2
        starts = [("--init", args.init)] if args.init else []
        for flag, path in starts + [("--teacher", Path(t)) for t in args.teacher]:
            if not path.is_file():
                print(f"error: {flag} {path}: no such file", file=sys.stderr)
                return 2
            try:  # its checksum is taken next: a file this user may not read is named, not a traceback
                open(path, "rb").close()
            except OSError as e:
                print(f"error: {flag} {path}: cannot read ({e.strerror})", file=sys.stderr)
                return 2
        if bool(args.teacher) != (args.distill > 0) or not 0 <= args.distill <= 1:
            print(f"error: --distill {args.distill}: give it (between 0 and 1) with --teacher, and "
                  "--teacher with it", file=sys.stderr)
            return 2
        discard = bool(old or args.restart)
        # The lineage is read now: the export overwrites the --init file when it lands in --out.
        try:
            lineage = warm_start_lineage(str(args.init)) if args.init else None
        except ModelError as e:
            print(f"error: --init {args.init}: {e}", file=sys.stderr)
            return 2
        cfg = {k: getattr(args, k) for k in DEFAULTS}
        cfg.update(precision=args.precision or "auto", limit=args.limit,
                   init=str(args.init) if args.init else None, epoch_offset=epoch_offset(lineage))
        if args.teacher:
            cfg["teachers"] = teacher_records(args.teacher)
        state = {"config": cfg, "epochs_done": 0, "best_accuracy": -1.0, "best_epoch": 0, "wall_seconds": 0.0,
                 "warm_start_from": lineage, "policy": policy_name(cfg["precision"])}

    # Run options a resume keeps, so that resuming with fewer flags cannot export over models/
    # or repeat the run differently
    out = run_out(state, args.out)  # as given, like --init
    if error := out_error(out):
        print(error, file=sys.stderr)
        return 2
    keep_epochs = args.keep_epochs or state.get("keep_epochs", False)
    deterministic = args.deterministic or state.get("deterministic", False)
    skip_bad = args.skip_bad or state.get("skip_bad", False)
    earlier = state.get("policy") or policy_name(cfg["precision"])  # runs from before the policy was kept
    policy = policy_name(args.precision) if args.resume and args.precision else earlier  # say, a CPU without bf16
    cpus = dict.fromkeys([*state.get("cpus", []), cpu_name()])  # each CPU a sitting trained on, once
    policies = dict.fromkeys([*state.get("policies", [earlier]), policy])  # and each precision, for the record
    state.update(out=str(out), keep_epochs=keep_epochs, deterministic=deterministic, skip_bad=skip_bad,
                 policy=policy, cpus=list(cpus), policies=list(policies))

    # --- data: FER-2013 Training to learn from, PublicTest to choose the best epoch
    try:
        train, test = fer.train_and_test(args.data, skip_bad=skip_bad)
    except fer.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s in (train, test):
        if s.skipped:
            print(f"skipped {len(s.skipped)} bad files in {s.split}, first: {s.skipped[0]}")
    if state.setdefault("data_sha256", train.checksum) != train.checksum:
        print(f"error: --resume: {run} was trained on data sha256 {state['data_sha256'][:12]}, "
              f"{args.data} is {train.checksum[:12]}", file=sys.stderr)
        return 2
    limit_faces(train, cfg["limit"], cfg["seed"])
    state["train_class_counts"] = train.class_counts().tolist()  # those the class weights (and class_scale) use
    print(f"data: {len(train)} training faces, {len(test)} PublicTest faces (sha256 {train.checksum[:12]})")

    import keras
    import tensorflow as tf

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg["seed"])
    keras.mixed_precision.set_global_policy(policy)
    print(f"precision: {policy}" + (" (this CPU has no bfloat16 instructions: slow; --resume --precision "
                                     "float32 switches)" if policy == "mixed_bfloat16" and not cpu_has_bf16() else ""))

    x_train = tf.constant(preprocess(train.x, DEFAULT_SPEC))
    y_train = tf.constant(train.y)
    w_train = tf.constant(class_weights(train.y, cfg["class_weight_power"])[train.y], tf.float32)
    x_test = preprocess(test.x, DEFAULT_SPEC)
    try:
        teacher = None
        if cfg.get("teachers") and cfg.get("teacher_sees", PREDATED["teacher_sees"]) == "batches":
            teacher = teacher_ensemble(cfg["teachers"], policy)
        elif cfg.get("teachers"):
            teacher = tf.constant(teacher_targets(run, cfg["teachers"], train.x))
    except ModelError as e:  # a teacher that is not a model, changed, or does not take these faces
        print(f"error: --teacher {e}", file=sys.stderr)
        return 2

    def publictest(model) -> dict:
        return report(test.y, predict(model, x_test).argmax(1))

    steps = -(-len(train) // cfg["batch_size"])

    # --- model: a fresh VGG16, a warm start, or the last checkpoint of the run we resume
    if args.resume:
        try:
            model = resume_model(cfg, steps, run / "last.keras")
        except ModelError as e:
            print(f"error: {e}; --restart discards the run there, or use another --run-dir", file=sys.stderr)
            return 2
        keep_history_rows(run / "history.csv", state["epochs_done"])
        print(f"resuming {run} after epoch {state['epochs_done']}")
    else:
        model = build_and_compile(cfg, steps)
        if cfg["init"]:
            warm_start(model, Path(cfg["init"]))
            # the bar to beat: an export never replaces the init model with a worse one
            state.update(best_accuracy=publictest(model)["accuracy"])
            print(f"--init {cfg['init']}: PublicTest accuracy {state['best_accuracy']:.4f}, "
                  f"{cfg['epoch_offset']} epochs so far")
        if discard:  # only now that the data, --init and the teachers are known good: a typo must not cost a run
            print(f"{run}: removed the previous run's {clear_run(run)} files")
        with open(run / "history.csv", "w", newline="") as f:
            csv.writer(f).writerow(HISTORY_FIELDS)
    # What compiled each sitting's step, for the card: Keras turns XLA off under op determinism too.
    before = ["oneDNN" if deterministic else XLA_ENGINE] if state["epochs_done"] else []
    engine = XLA_ENGINE if model.jit_compile else "oneDNN"
    state["engines"] = list(dict.fromkeys([*state.get("engines", before), engine]))
    commit_file, commit = run / "code_commit", code_commit()
    sittings = commit_file.read_text().split() if args.resume and commit_file.exists() else []
    # one line per commit the run trained under, oldest first: written with an epoch, so a resume
    # that trains nothing (a finished run) credits nothing
    commits = "".join(f"{c}\n" for c in (sittings if sittings[-1:] == [commit] else [*sittings, commit]))
    (run / "config.json").write_text(json.dumps(cfg, indent=2))

    # --- the epoch loop
    offset = cfg.get("epoch_offset", 0)
    for epoch in range(state["epochs_done"], cfg["epochs"]):
        t0 = time.time()
        reseed_dropout(model, cfg["seed"], offset + epoch)
        fit = model.fit(train_dataset(x_train, y_train, w_train, cfg, offset + epoch, teacher),
                        initial_epoch=epoch, epochs=epoch + 1, verbose=1)
        val = publictest(model)
        seconds = time.time() - t0
        lr = float(model.optimizer.learning_rate)
        row = [epoch + 1, f"{lr:.6f}", f"{fit.history['loss'][0]:.4f}", f"{fit.history['accuracy'][0]:.4f}",
               f"{val['accuracy']:.4f}", f"{val['macro_f1']:.4f}", f"{seconds:.1f}"]
        best = val["accuracy"] > state["best_accuracy"]
        if best:  # an average chosen earlier (training.average) gives way to a better epoch
            state.pop("average", None)
            state.update(best_accuracy=val["accuracy"], best_epoch=epoch + 1, best_report=val)
        state["epochs_done"] = epoch + 1
        # committed with the last epoch, cleared by the export: a stop in between must not let a new run remove it
        state["export_due"] = state["epochs_done"] == cfg["epochs"] and state["best_epoch"] > 0
        state["wall_seconds"] += seconds

        def write(folder: Path, best=best, row=row, n=epoch + 1) -> None:
            (folder / "code_commit").write_text(commits)
            model.save(folder / "last.keras")
            if best:
                model.save_weights(folder / "best.weights.h5")
            if keep_epochs:
                model.save_weights(folder / f"epoch{n}.weights.h5")
            shutil.copy(run / "history.csv", folder / "history.csv")
            with open(folder / "history.csv", "a", newline="") as f:
                csv.writer(f).writerow(row)

        commit_files(run, state, write)
        eta = seconds * (cfg["epochs"] - epoch - 1)
        print(f"epoch {epoch + 1}/{cfg['epochs']}  lr {lr:.5f}  loss {row[2]}  acc {row[3]}  "
              f"val_acc {val['accuracy']:.4f}  val_f1 {val['macro_f1']:.4f}  "
              f"best {state['best_accuracy']:.4f}@{state['best_epoch']}  {fmt_time(seconds)}  "
              f"eta {fmt_time(eta)}", flush=True)
        if args.stop_after and epoch + 1 >= args.stop_after and epoch + 1 < cfg["epochs"]:
            print(f"stopped after epoch {epoch + 1}; continue with --resume --run-dir {run}")
            return 0

    # --- export the best epoch (or, resuming a finished run, its average) as a plain float32 model
    # with its training record
    if state["best_epoch"] == 0 and "average" not in state:
        print(f"no epoch beat the --init model ({state['best_accuracy']:.4f}); {out} left as it was")
        return 0
    try:
        path = export_model(run, out, train, test, force=args.force)
    except (ModelError, OSError) as e:  # a better model in --out, a full card: the run keeps its weights
        print(f"error: {e}", file=sys.stderr)
        return 2
    chosen = "average" if "average" in state else f"best epoch ({state['best_epoch']})"
    device_way = read_record(path)["publictest"]["accuracy"]  # the card's figure, not the one epochs were chosen on
    print(f"exported the {chosen} to {path}: PublicTest accuracy {device_way:.4f} scored the device's way "
          f"({state['best_accuracy']:.4f} on one view in training)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

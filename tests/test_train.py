"""Training: the model builder learns, a stopped run resumes exactly, export and warm start."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys
from dataclasses import replace

import numpy as np
import pytest
from conftest import ROOT, synthetic_faces, write_csv

from device.model import sha256_file
from device.preprocess import CLASSES, DEFAULT_SPEC, ONE_VIEW, InputSpec, predict_faces, preprocess
from training import data as fer
from training import export
from training import train as T
from training.export import main as export_main
from training.export import stored_plain, warm_start_lineage

TINY = ["--width", "0.0625", "--batch-size", "16", "--seed", "3", "--warmup-epochs", "0.5", "--deterministic"]


def test_vgg16_topology():
    from keras import layers

    from training.model import build_vgg16

    model = build_vgg16()
    convs = [lay for lay in model.layers if isinstance(lay, layers.Conv2D)]
    assert len(convs) == 13
    assert [c.filters for c in convs] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    assert all(c.kernel_size == (3, 3) for c in convs)
    dense = [lay for lay in model.layers if isinstance(lay, layers.Dense)]
    assert len(dense) == 3 and dense[-1].units == 7
    assert model.input_shape == (None, 48, 48, 1) and model.output_shape == (None, 7)


def test_each_dropout_layer_draws_its_own_masks_and_a_resumed_epoch_the_same():
    from training.model import build_vgg16

    model = build_vgg16(width=0.0625, dropout=0.5)
    gens = [lay.seed_generator for lay in model.layers if getattr(lay, "seed_generator", None) is not None]
    assert len(gens) >= 2

    def draws(epoch: int) -> list[list[tuple]]:  # each layer's seeds for an epoch's first steps, as fit draws them
        T.reseed_dropout(model, 1234, epoch)
        return [[tuple(int(v) for v in np.asarray(g.next())) for _ in range(30)] for g in gens]

    first = draws(3)
    seen = [seed for layer in first for seed in layer]
    assert len(set(seen)) == len(seen)  # no layer repeats another's masks, however many steps apart
    assert draws(3) == first and draws(4)[0][0] != first[0][0]


def test_one_epoch_on_synthetic_faces_lowers_the_loss():
    import keras
    import tensorflow as tf

    x, y = synthetic_faces(24)
    cfg = dict(T.DEFAULTS, width=0.0625, batch_size=16, epochs=1, lr=0.02, warmup_epochs=0.5, dropout=0.0, erase=0.0)
    keras.utils.set_random_seed(0)
    model = T.build_and_compile(cfg, steps_per_epoch=len(y) // 16)
    xp = preprocess(x)

    def loss() -> float:  # batch statistics: ten steps are too few to settle BN's moving averages
        probs = model(xp, training=True)
        return float(keras.ops.mean(keras.losses.categorical_crossentropy(np.eye(7)[y], probs)))

    before = loss()
    w = tf.constant(T.class_weights(y, 0.3)[y], tf.float32)
    model.fit(T.train_dataset(tf.constant(xp), tf.constant(y), w, cfg, 0), verbose=0)
    after = loss()
    assert after < before - 0.1, (before, after)


@pytest.mark.parametrize(("flags", "xla"), [("avx512f avx512_bf16", True), ("avx512_bf16 amx_bf16 amx_tile", False)])
def test_xla_compiles_the_step_except_on_amx_cpus(monkeypatch, flags, xla):
    import keras

    monkeypatch.setattr(T, "cpu_flags", lambda: f"flags\t\t: fpu {flags}\n")
    asked = {}
    compile_ = keras.Model.compile
    # what training asks for: Keras itself turns XLA off where an earlier test enabled op determinism
    monkeypatch.setattr(keras.Model, "compile", lambda self, **kw: asked.update(kw) or compile_(self, **kw))
    cfg = dict(T.DEFAULTS, width=0.0625, batch_size=16, epochs=2)
    T.build_and_compile(cfg, steps_per_epoch=2)
    assert asked["jit_compile"] is xla


def test_lr_floor_holds_the_rate_after_warm_up_where_the_cosine_would_end_at_zero():
    cfg = dict(T.DEFAULTS, epochs=4, lr=0.01, warmup_epochs=1.0)
    steps = 10

    def rates(**change) -> list[float]:
        schedule = T.lr_schedule({**cfg, **change}, steps)
        return [float(schedule(s)) for s in (0, steps, 2 * steps, 4 * steps)]

    start, peak, middle, end = rates()
    assert start == pytest.approx(0.001) and peak == pytest.approx(0.01) and end == pytest.approx(0, abs=1e-7)
    assert rates(lr_floor=1.0) == pytest.approx([0.001, 0.01, 0.01, 0.01])
    assert rates(lr_floor=0.5)[3] == pytest.approx(0.005)
    with pytest.raises(SystemExit):
        T.parse_args(["--data", "x.csv", "--lr-floor", "1.5"])


def test_class_weights_favour_rare_classes():
    y = np.array([0] * 90 + [1] * 10)
    w = T.class_weights(y, 0.5)
    assert w[1] / w[0] == pytest.approx(3.0)
    assert (w[y]).mean() == pytest.approx(1.0)


def test_the_device_undoes_the_class_weights():
    """class_scale x class weight is the same for every class: the tilt training gave the rare
    classes is taken back at inference, where a balanced guess would cost accuracy."""
    y = np.repeat(np.arange(7), [3995, 436, 4097, 7215, 4965, 4830, 3171])
    counts = np.bincount(y)
    spec = T.model_spec({"class_weight_power": 0.3}, counts)
    product = T.class_weights(y, 0.3) * np.array(spec.class_scale)
    np.testing.assert_allclose(product, product[0], rtol=1e-5)
    assert np.mean(spec.class_scale) == pytest.approx(1.0, abs=1e-5)
    assert replace(spec, class_scale=()) == DEFAULT_SPEC
    assert T.model_spec({"class_weight_power": 0}, counts) == DEFAULT_SPEC  # no weights, nothing to undo
    # on the device: probabilities scaled, renormalized; a close call between classes flips
    probs = np.array([[0.3, 0.32, 0.08, 0.3, 0, 0, 0]], np.float32)
    out = predict_faces(lambda x: np.repeat(probs, len(x), axis=0), np.zeros((1, 48, 48), np.uint8), spec)
    expected = probs * np.array(spec.class_scale)
    np.testing.assert_allclose(out, expected / expected.sum(), rtol=1e-5)
    assert out.argmax() == 3 and probs.argmax() == 1
    with pytest.raises(ValueError, match="class_scale has 7 values for 3 classes"):
        predict_faces(lambda x: np.ones((len(x), 3), np.float32), np.zeros((1, 48, 48), np.uint8), spec)
    with pytest.raises(ValueError, match="invalid class_scale"):
        InputSpec.from_dict({**spec.to_dict(), "class_scale": [1, 0, 1, 1, 1, 1, 1]})
    assert InputSpec.from_dict(spec.to_dict()) == spec and "class_scale" not in DEFAULT_SPEC.to_dict()


def test_evaluate_reads_a_keras_model_and_a_run_with_their_class_scale(tiny_model, tmp_path):
    """The fixture data has as many faces of each class, so its runs' class_scale is all 1.0 and the tests that
    evaluate agrees with the export would pass were it dropped: here the class counts differ."""
    import keras

    from training.evaluate import keras_spec, predict_probs

    counts = [3995, 436, 4097, 7215, 4965, 4830, 3171]  # FER-2013's Training split
    spec = T.model_spec({"class_weight_power": 0.3}, counts)
    assert len(set(spec.class_scale)) == 7
    model = tmp_path / "fer_vgg16.keras"
    shutil.copy(tiny_model, model)
    model.with_suffix(".train.json").write_text(json.dumps({"sha256": sha256_file(model), "labels": list(CLASSES),
                                                            "input": spec.to_dict()}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"width": 1 / 16, "dropout": 0.5, "class_weight_power": 0.3}))
    (run / "state.json").write_text(json.dumps({"config": {}, "epochs_done": 1, "train_class_counts": counts}))
    keras.saving.load_model(tiny_model, compile=False).save_weights(run / "best.weights.h5")
    faces = synthetic_faces(2, seed=5)[0]
    unscaled = T.classify(keras.saving.load_model(tiny_model, compile=False), faces, replace(spec, class_scale=()))
    expected = unscaled * np.array(spec.class_scale)
    expected /= expected.sum(axis=1, keepdims=True)
    assert not np.allclose(expected, unscaled, atol=1e-3)  # the scale changes the probabilities
    for path in (model, run):
        assert keras_spec(path) == spec, path
        np.testing.assert_allclose(predict_probs(path, faces, keras_spec(path)), expected, rtol=1e-4, atol=1e-6)


def _history(run) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_stopped_run_resumes_exactly(tmp_path, fer_csv, capsys):
    common = ["--data", str(fer_csv), "--epochs", "2", "--erase", "0.5", *TINY]  # erasing repeats too
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert T.main([*common, "--run-dir", str(straight), "--out", str(tmp_path / "out1")]) == 0
    assert T.main([*common, "--run-dir", str(stopped), "--out", str(tmp_path / "out2"), "--keep-epochs",
                   "--stop-after", "1"]) == 0
    assert len(_history(stopped)) == 1 and not (tmp_path / "out2").exists()
    other = write_csv(tmp_path / "other.csv", {"Training": synthetic_faces(2), "PublicTest": synthetic_faces(1)})
    assert T.main(["--data", str(other), "--run-dir", str(stopped), "--resume"]) == 2
    assert "was trained on data sha256" in capsys.readouterr().err
    state = json.loads((stopped / "state.json").read_text())
    assert state["policy"] == T.policy_name("auto") and state["deterministic"] is True
    assert state["engines"] == ["oneDNN"]  # --deterministic: Keras compiles without XLA on any CPU
    state.pop("policy"), state.pop("cpus"), state.pop("engines")  # as runs from before they were kept: resumable
    (stopped / "state.json").write_text(json.dumps(state))
    assert T.main([*common, "--run-dir", str(stopped), "--resume", "--epochs", "3", "--lr", "0.01"]) == 2
    assert "drop --epochs (the run has 2), --lr (the run has 0.02)" in capsys.readouterr().err  # not ignored
    assert T.main([*common, "--run-dir", str(stopped), "--resume", "--stop-after", "1"]) == 2  # not one more epoch
    assert "--stop-after 1: " in capsys.readouterr().err and len(_history(stopped)) == 1
    assert T.main([*common, "--run-dir", str(stopped), "--resume"]) == 0  # the run's own command, resumed
    assert json.loads((stopped / "state.json").read_text())["engines"] == ["oneDNN"]  # its first sitting's too
    # the resume kept the run's --out, --keep-epochs and --deterministic without being told again
    assert (tmp_path / "out2" / "fer_vgg16.keras").exists() and (stopped / "epoch2.weights.h5").exists()
    a, b = _history(straight), _history(stopped)
    assert len(a) == len(b) == 2
    assert a[1]["lr"] == b[1]["lr"]
    for key in ("loss", "accuracy", "val_accuracy", "val_macro_f1"):
        assert a[1][key] == b[1][key], key
    import keras  # the weights too: a resumed optimizer that decayed BN or biases would differ

    for x, y in zip(*(keras.saving.load_model(r / "last.keras").get_weights() for r in (straight, stopped)),
                    strict=True):
        np.testing.assert_array_equal(x, y)
    # and both exported the same epoch: the resume kept the best so far
    records = [json.loads((tmp_path / o / "fer_vgg16.train.json").read_text()) for o in ("out1", "out2")]
    assert records[0]["best_epoch"] == records[1]["best_epoch"]
    assert records[0]["publictest"] == records[1]["publictest"] and records[0]["sha256"] != ""
    for x, y in zip(*(keras.saving.load_model(tmp_path / o / "fer_vgg16.keras").get_weights()
                      for o in ("out1", "out2")), strict=True):
        np.testing.assert_array_equal(x, y)

    # the export: float model, its training record, pictures and the card
    out = tmp_path / "out1"
    record = json.loads((out / "fer_vgg16.train.json").read_text())
    vals = [float(r["val_accuracy"]) for r in a]
    assert record["epochs"] == 2 and record["best_epoch"] == 1 + vals.index(max(vals))  # the first of the best
    assert record["data"]["sha256"] and len(record["history"]) == 2
    assert record["architecture"] == "VGG16-BN (13 conv in 5 blocks 4-8-16-32-32, FC 32-32-7)"  # --width 0.0625's
    for name in ("fer_vgg16.keras", "fer_vgg16_confusion.png", "fer_vgg16_curves.png", "MODEL_CARD.md"):
        assert (out / name).stat().st_size > 0, name
    card = (out / "MODEL_CARD.md").read_text()
    assert f"{record['publictest']['accuracy']:.2%}" in card and "falls short" in card
    # the command that repeats the run: its data and the flags that left the defaults (--erase 0.5 is one now)
    assert 'make train DATA=fer2013.csv ARGS="--epochs 2 --batch-size 16 --warmup-epochs 0.5 --width 0.0625 --seed 3"' \
        in card and "With `DATA` the path of `fer2013.csv`" in card
    # the record scores the model the device's way (its views averaged, the class weights undone)
    # and the way epochs were chosen
    spec = InputSpec.from_dict(record["input"])
    assert spec == T.model_spec(record["config"], record["data"]["train_class_counts"]) and spec.class_scale
    assert spec.describe_views() in card and "class_scale ~ count^0.3" in card
    assert f"{record['publictest_single_view']['accuracy']:.2%}" in card
    from training.evaluate import main as evaluate_main

    capsys.readouterr()
    assert evaluate_main(["--model", str(out / "fer_vgg16.keras"), "--data", str(fer_csv), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == record["publictest"]["accuracy"]


def test_the_defaults_are_the_recipe_from_scratch_that_learns():
    """`make train` with no flags: at the old peak of 0.05 a run stayed at chance for its first
    epochs (training/CYCLES.md). Runs whose config predates erasing are repeated without it."""
    args = T.parse_args(["--data", "fer2013.csv"])
    assert (args.epochs, args.lr, args.warmup_epochs, args.erase) == (40, 0.02, 1.0, 0.5)
    from training.card import train_command

    older = {k: v for k, v in T.DEFAULTS.items() if k not in ("erase", "distill")}  # a cycle-1 config
    assert train_command(dict(older, lr=0.05)) == 'make train ARGS="--lr 0.05 --erase 0.0"'


def test_the_card_gives_the_margin_of_a_met_target_in_faces():
    from training.card import _verdict

    assert _verdict(2513 / 3589, 3589) == ("This meets the 70% target: 2,513 of 3,589 faces right, 2,513 needed "
                                           "(the goal is 73%).")
    assert _verdict(2512 / 3589, 3589).startswith("**This falls short of the 70% target**")


def test_an_export_never_replaces_a_model_that_scored_higher_unless_forced(tmp_path, fer_csv, capsys):
    out, run = tmp_path / "out", tmp_path / "second"
    command = ["--data", str(fer_csv), "--epochs", "1", *TINY, "--limit", "56", "--out", str(out)]
    assert T.main([*command, "--run-dir", str(tmp_path / "first")]) == 0
    record_path = out / "fer_vgg16.train.json"
    better = json.loads(record_path.read_text())
    better["publictest"]["accuracy"] = 0.99  # as a better model's record
    record_path.write_text(json.dumps(better))
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    capsys.readouterr()
    assert T.main([*command, "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"refused: {re.escape(str(out / 'fer_vgg16.keras'))} scored 99\.00% on PublicTest "
                     r"\(its training record\), this export \d+\.\d\d%", err), err
    assert f"--run-dir {run} --data DATA --out {out} --force replaces it anyway" in err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # the card, PNGs and no staged file too
    # the run keeps its weights, and its folder is kept for the export
    state = json.loads((run / "state.json").read_text())
    assert (run / "best.weights.h5").exists() and state["export_due"]
    assert state["export_refused"]["model_accuracy"] == 0.99
    assert export_main(["--run-dir", str(run), "--data", str(fer_csv)]) == 2
    # the same command again: named as refused, with what gets past it, not as an export to retry
    assert T.main([*command, "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run} holds a finished run whose export was refused: {out / 'fer_vgg16.keras'} scored 99.00%" in err
    assert (f"--resume --force --out {out} (or python -m training.export --run-dir {run} --data DATA --out {out} "
            "--force) to replace it anyway") in err and "--restart to discard the run" in err
    assert T.main([*command, "--run-dir", str(run), "--resume", "--force"]) == 0
    exported = json.loads(record_path.read_text())
    assert exported["sha256"] == sha256_file(out / "fer_vgg16.keras") != better["sha256"]
    assert exported["size_bytes"] == (out / "fer_vgg16.keras").stat().st_size
    state = json.loads((run / "state.json").read_text())
    assert state["export_due"] is False and "export_refused" not in state


def test_an_out_that_cannot_take_the_export_is_refused_before_training_averaging_or_exporting(tmp_path, fer_csv,
                                                                                               capsys):
    """`--out models/fer_vgg16.keras` (the file, not its folder) would only fail at the export, after
    hours of training, as a traceback; averaging and exporting a finished run say it before loading data."""
    from training.average import main as average_main

    run, file = tmp_path / "run", tmp_path / "fer_vgg16.keras"
    file.write_bytes(b"a model")
    command = ["--data", str(fer_csv), "--epochs", "1", *TINY, "--keep-epochs", "--run-dir", str(run)]
    assert T.main([*command, "--out", str(file)]) == 2
    assert f"error: --out {file}: a file, not a folder" in capsys.readouterr().err
    assert not (run / "state.json").exists() and file.read_bytes() == b"a model"
    assert T.main([*command, "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert export_main(["--run-dir", str(run), "--data", str(fer_csv), "--out", str(file)]) == 2
    assert f"error: --out {file}: a file, not a folder" in capsys.readouterr().err
    assert average_main(["--run-dir", str(run), "--data", str(fer_csv), "--models", str(run / "epoch1.weights.h5"),
                         "--out", str(file)]) == 2
    assert f"error: --out {file}: a file, not a folder" in capsys.readouterr().err
    assert file.read_bytes() == b"a model"


def test_a_run_dir_or_out_dir_that_cannot_be_written_is_refused_before_the_data_is_read(tmp_path, fer_csv, tiny_model,
                                                                                      monkeypatch, capsys):
    """A file as --run-dir (or evaluate's --out-dir), or a read-only folder, failed as a bare FileExistsError
    or PermissionError once the data had loaded (for evaluate, after scoring): named first, exit 2."""
    from training import export as export_module
    from training.evaluate import main as evaluate_main

    file, locked = tmp_path / "a-file", tmp_path / "locked"
    file.write_bytes(b"not a folder")
    locked.mkdir()
    real_access = os.access  # tests run as root, to whom a chmod 500 folder is writable
    monkeypatch.setattr(export_module.os, "access", lambda p, mode: p != locked and real_access(p, mode))
    train = ["--data", str(fer_csv), "--epochs", "1", *TINY, "--out", str(tmp_path / "out")]
    evaluate = ["--model", str(tiny_model), "--data", str(fer_csv)]
    for main, command, flag, writes in ((T.main, train, "--run-dir", "the run writes its checkpoints"),
                                        (evaluate_main, evaluate, "--out-dir", "evaluate writes the confusion matrix")):
        assert main([*command, flag, str(file)]) == 2
        out, err = capsys.readouterr()
        assert f"error: {flag} {file}: a file, not a folder ({writes}" in err and out == ""  # before the data
        assert main([*command, flag, str(locked / "sub")]) == 2
        out, err = capsys.readouterr()
        assert f"error: {flag} {locked / 'sub'}: {locked} is not writable for this user" in err and out == ""
    assert file.read_bytes() == b"not a folder" and not (tmp_path / "out").exists()


def test_an_export_replaces_a_model_scored_on_other_faces_and_never_stages_over_an_unreadable_record(
        tmp_path, fer_csv, capsys):
    """A folder data set's test/ (7178 faces) or other data: its figure is no bar, and the replacement is said.
    An unreadable record refuses the export before anything is staged: --out stays as it was."""
    out, run = tmp_path / "out", tmp_path / "run"
    assert T.main(["--data", str(fer_csv), "--epochs", "1", *TINY, "--limit", "56", "--run-dir", str(run),
                   "--out", str(out)]) == 0
    record_path = out / "fer_vgg16.train.json"
    ours = json.loads(record_path.read_text())
    faces, sha = ours["data"]["publictest_faces"], ours["data"]["sha256"]
    for data, seen in [(dict(ours["data"], sha256="ff" * 32), f"on {faces} test faces of data sha256 ffffffffffff"),
                       (dict(ours["data"], publictest_faces=7178), f"on 7178 test faces of data sha256 {sha[:12]}")]:
        kept = json.loads(record_path.read_text())  # the model there, each export's own
        record_path.write_text(json.dumps(dict(kept, publictest=dict(kept["publictest"], accuracy=0.99), data=data)))
        capsys.readouterr()
        assert export_main(["--run-dir", str(run), "--data", str(fer_csv)]) == 0
        err = capsys.readouterr().err
        assert f"warning: {out / 'fer_vgg16.keras'} scored 99.00% {seen}, this export " in err
        assert f" on {faces} of {sha[:12]}: not comparable figures, so it is replaced" in err
        assert json.loads(record_path.read_text())["data"] == ours["data"]  # replaced
    record_path.write_text(record_path.read_text()[:100])  # truncated
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert export_main(["--run-dir", str(run), "--data", str(fer_csv)]) == 2
    assert "unreadable training record" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # no staged model left there


def test_warm_start_draws_new_epochs_and_never_exports_a_worse_model(tmp_path, fer_csv, monkeypatch, capsys):
    first, out = tmp_path / "first", tmp_path / "out"
    assert T.main(["--data", str(fer_csv), "--epochs", "1", *TINY, "--run-dir", str(first), "--out", str(out)]) == 0
    init = out / "fer_vgg16.keras"
    assert T.epoch_offset(warm_start_lineage(str(init))) == 1 and T.epoch_offset(None) == 0
    before = init.read_bytes()
    scores = iter([0.9, 0.5])  # the init model scores 0.9, the cycle's one epoch 0.5
    real_report = T.report
    monkeypatch.setattr(T, "report", lambda y, p: dict(real_report(y, p), accuracy=next(scores)))
    drawn = []  # the epochs whose shuffles and augmentations the cycle draws
    real_dataset = T.train_dataset
    monkeypatch.setattr(T, "train_dataset", lambda x, y, w, cfg, epoch, teacher: drawn.append(epoch) or real_dataset(
        x, y, w, cfg, epoch, teacher))
    second = tmp_path / "second"
    assert T.main(["--data", str(fer_csv), "--epochs", "1", *TINY, "--init", str(init),
                   "--run-dir", str(second), "--out", str(out)]) == 0
    assert json.loads((second / "config.json").read_text())["epoch_offset"] == 1
    assert drawn == [1]  # the lineage's second epoch, not a replay of its first (0)
    assert "no epoch beat the --init model (0.9000)" in capsys.readouterr().out
    assert init.read_bytes() == before


def test_exporting_again_keeps_the_lineage(tmp_path, fer_csv, monkeypatch):
    """A warm start's export replaces its --init file; exporting the run again must still name the parent."""
    out = tmp_path / "out"
    assert T.main(["--data", str(fer_csv), "--epochs", "1", *TINY, "--limit", "56", "--run-dir", str(tmp_path / "a"),
                   "--out", str(out)]) == 0
    first = json.loads((out / "fer_vgg16.train.json").read_text())
    assert first["data"]["train_faces"] == sum(first["data"]["train_class_counts"]) == 56  # what it trained on
    assert export_main(["--run-dir", str(tmp_path / "a"), "--data", str(fer_csv), "--out", str(tmp_path / "a2")]) == 0
    assert json.loads((tmp_path / "a2" / "fer_vgg16.train.json").read_text())["input"] == first["input"]
    parent = sha256_file(out / "fer_vgg16.keras")
    scores = iter([0.1, 0.5])  # the init model scores 0.1, the cycle's epoch 0.5: it is exported
    real_report = T.report
    monkeypatch.setattr(T, "report", lambda y, p: dict(real_report(y, p), accuracy=next(scores)))
    assert T.main(["--data", str(fer_csv), "--epochs", "1", *TINY, "--init", str(out / "fer_vgg16.keras"),
                   "--run-dir", str(tmp_path / "b"), "--out", str(out)]) == 0
    record = json.loads((out / "fer_vgg16.train.json").read_text())
    assert record["warm_start_from"]["sha256"] == parent and record["sha256"] != parent
    assert record["warm_start_from"]["wall_seconds"] == first["wall_seconds"]  # the card adds up the lineage's
    hours = (first["wall_seconds"] + record["wall_seconds"]) / 3600
    assert f"({record['precision']}, oneDNN); {hours:.2f} h for all 2 epochs." in (out / "MODEL_CARD.md").read_text()
    assert export_main(["--run-dir", str(tmp_path / "b"), "--data", str(fer_csv), "--out", str(out)]) == 0
    again = json.loads((out / "fer_vgg16.train.json").read_text())
    assert again["warm_start_from"] == record["warm_start_from"] and again["epochs"] == record["epochs"]
    other = write_csv(tmp_path / "other.csv", {"Training": synthetic_faces(2), "PublicTest": synthetic_faces(1)})
    assert export_main(["--run-dir", str(tmp_path / "b"), "--data", str(other), "--out", str(out)]) == 2
    assert json.loads((out / "fer_vgg16.train.json").read_text()) == again  # its record names the run's data


def test_an_export_stopped_while_it_scores_leaves_the_model_with_its_own_record(tmp_path, fer_csv, monkeypatch,
                                                                                capsys):
    """Scoring takes a minute on a 2-core CPU: Ctrl-C, or a sitting that ends, may stop it there.
    A run stopped between epochs is not exported at all: its card would name a longer run."""
    import training.export as E
    from training.export import read_record

    out = tmp_path / "out"
    a = ["--data", str(fer_csv), "--epochs", "2", *TINY, "--limit", "56", "--run-dir", str(tmp_path / "a"),
         "--out", str(out)]
    assert T.main([*a, "--stop-after", "1"]) == 0
    assert export_main(["--run-dir", str(tmp_path / "a"), "--data", str(fer_csv)]) == 2
    assert "stopped after epoch 1 of 2; finish it with" in capsys.readouterr().err and not out.exists()
    assert T.main([*a, "--resume"]) == 0
    assert T.main(["--data", str(fer_csv), "--epochs", "1", *TINY, "--limit", "56", "--run-dir", str(tmp_path / "b"),
                   "--out", str(out), "--force"]) == 0  # whichever scored higher: a tiny model's figures vary by CPU
    before = sha256_file(out / "fer_vgg16.keras")

    def stopped(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "score", stopped)
    with pytest.raises(KeyboardInterrupt):  # run a's epoch 1, exported over run b's model
        export_main(["--run-dir", str(tmp_path / "a"), "--data", str(fer_csv), "--out", str(out)])
    assert sha256_file(out / "fer_vgg16.keras") == before and read_record(out / "fer_vgg16.keras")["sha256"] == before


def test_rescoring_an_exported_model_rewrites_its_record_not_its_weights(tmp_path, fer_csv, capsys):
    """A model exported before class_scale existed (its run gone) gets the device's reading of it."""
    out = tmp_path / "out"
    assert T.main(["--data", str(fer_csv), "--epochs", "1", *TINY, "--run-dir", str(tmp_path / "run"),
                   "--out", str(out)]) == 0
    model, record_path = out / "fer_vgg16.keras", out / "fer_vgg16.train.json"
    shutil.rmtree(tmp_path / "run")
    exported = json.loads(record_path.read_text())
    old = dict(exported, input=DEFAULT_SPEC.to_dict())  # as an older export wrote it
    record_path.write_text(json.dumps(old))
    weights = model.read_bytes()
    capsys.readouterr()
    assert export_main(["--model", str(model), "--data", str(fer_csv)]) == 0
    record = json.loads(record_path.read_text())
    assert record["input"] == exported["input"] and record["rescored"] is True
    assert record["publictest"] == exported["publictest"] and model.read_bytes() == weights
    card = (out / "MODEL_CARD.md").read_text()
    assert "python -m training.export --model models/fer_vgg16.keras" in card
    assert f"accuracy {record['publictest']['accuracy']:.4f}" in capsys.readouterr().out
    # a model trained with another normalization keeps it: only the views and class_scale are re-read
    spec = InputSpec.from_dict(exported["input"])
    trained = replace(spec, mean=0.4, std=0.3)
    record_path.write_text(json.dumps(dict(old, input=replace(trained, views=ONE_VIEW, class_scale=()).to_dict())))
    assert export_main(["--model", str(model), "--data", str(fer_csv)]) == 0
    assert json.loads(record_path.read_text())["input"] == trained.to_dict()
    assert "- 0.4) / 0.3`" in (out / "MODEL_CARD.md").read_text()
    other = write_csv(tmp_path / "other.csv", {"Training": synthetic_faces(2), "PublicTest": synthetic_faces(1)})
    assert export_main(["--model", str(model), "--data", str(other)]) == 2
    assert f"{record_path}: the model was trained on data sha256" in capsys.readouterr().err
    renamed = out / "old.keras"  # its record and card would land on fer_vgg16's
    shutil.copy(model, renamed)
    shutil.copy(record_path, renamed.with_suffix(".train.json"))
    assert export_main(["--model", str(renamed), "--data", str(fer_csv)]) == 2
    assert f"{renamed}: re-scoring writes fer_vgg16.train.json" in capsys.readouterr().err
    record_path.write_text(json.dumps(dict(old, sha256="0" * 64)))
    assert export_main(["--model", str(model), "--data", str(fer_csv)]) == 2
    assert "is for another model" in capsys.readouterr().err
    # re-scoring reads PublicTest only: a bad Training row of data trained with --skip-bad is no matter
    bad = tmp_path / "bad.csv"
    bad.write_text(fer_csv.read_text() + "0,1 2 3,Training\n")
    record_path.write_text(json.dumps(dict(old, data=dict(old["data"], sha256=fer.source_checksum(bad)))))
    assert export_main(["--model", str(model), "--data", str(bad)]) == 0
    bad.write_text(fer_csv.read_text() + "0,1 2 3,PublicTest\n")  # one in PublicTest is skipped when asked
    record_path.write_text(json.dumps(dict(old, data=dict(old["data"], sha256=fer.source_checksum(bad)))))
    assert export_main(["--model", str(model), "--data", str(bad)]) == 2
    assert f"{bad}:" in capsys.readouterr().err
    assert export_main(["--model", str(model), "--data", str(bad), "--skip-bad"]) == 0


def test_rescoring_a_record_without_its_config_or_class_counts_is_named(tmp_path, fer_csv, capsys):
    """A hand-edited or older .train.json: exit 2 naming the record and what it lacks, not a bare KeyError."""
    model = tmp_path / "fer_vgg16.keras"
    model.write_bytes(b"never loaded: the record is refused first")
    record_path = model.with_suffix(".train.json")
    data = {"sha256": fer.source_checksum(fer_csv), "train_class_counts": [12] * 7}
    good = {"sha256": sha256_file(model), "input": DEFAULT_SPEC.to_dict(), "config": {"class_weight_power": 0.3},
            "data": data}
    for record, message in (({k: v for k, v in good.items() if k != "config"}, "KeyError: 'config'"),
                            (dict(good, config={}), "KeyError: 'class_weight_power'"),
                            (dict(good, data={"sha256": data["sha256"]}), "KeyError: 'train_class_counts'"),
                            (dict(good, data=dict(data, train_class_counts=None)), "TypeError: "),
                            (dict(good, data=dict(data, train_class_counts=[12] * 6)),
                             "ValueError: 6 train_class_counts for 7 labels")):
        record_path.write_text(json.dumps(record))
        assert export_main(["--model", str(model), "--data", str(fer_csv)]) == 2
        assert f"error: {record_path}: unreadable training record ({message}" in capsys.readouterr().err


def test_an_exported_model_is_stored_deflated_and_rescoring_deflates_an_older_one(tmp_path, fer_csv, capsys,
                                                                                   monkeypatch):
    """Keras stores a .keras archive's members uncompressed: the shipped VGG16 was 64.4 MB that way,
    over the 64 MB a model in models/ may take, and 59.3 MB deflated."""
    import keras

    out = tmp_path / "out"
    assert T.main(["--data", str(fer_csv), "--epochs", "1", *TINY, "--run-dir", str(tmp_path / "run"),
                   "--out", str(out)]) == 0
    model, record_path = out / "fer_vgg16.keras", out / "fer_vgg16.train.json"
    assert not stored_plain(model) and not list(out.glob("*.staged.keras")) and not list(out.glob("*.deflating*"))
    weights = keras.saving.load_model(model, compile=False).get_weights()
    keras.saving.load_model(model, compile=False).save(model)  # as every export before this one wrote it
    assert stored_plain(model)
    plain_size = model.stat().st_size
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps(dict(record, sha256=sha256_file(model), size_bytes=plain_size)))

    def cut(tmp, path):  # the power goes after the record is written, before the model moves in
        if tmp.name == "fer_vgg16.staged.keras":
            raise OSError("power cut")
        os.replace(tmp, path)

    monkeypatch.setattr(export, "replace_durably", cut)
    with pytest.raises(OSError, match="power cut"):
        export_main(["--model", str(model), "--data", str(fer_csv)])
    monkeypatch.undo()
    assert stored_plain(model) and (out / "fer_vgg16.staged.keras").exists()
    (out / "MODEL_CARD.md").write_text("the card of the model before\n")  # the cut came before the card
    assert export.read_record(model, land=True)["sha256"] == sha256_file(model)  # the next writer lands it
    assert not stored_plain(model) and not (out / "fer_vgg16.staged.keras").exists()
    assert f"- Model file: {model.stat().st_size:,} bytes" in (out / "MODEL_CARD.md").read_text()
    keras.saving.load_model(model, compile=False).save(model)
    record_path.write_text(json.dumps(dict(record, sha256=sha256_file(model), size_bytes=plain_size)))
    capsys.readouterr()
    assert export_main(["--model", str(model), "--data", str(fer_csv)]) == 0
    assert "stored deflated" in capsys.readouterr().out
    assert not stored_plain(model) and model.stat().st_size < plain_size
    rescored = json.loads(record_path.read_text())
    assert rescored["sha256"] == sha256_file(model) and rescored["size_bytes"] == model.stat().st_size
    assert f"- Model file: {model.stat().st_size:,} bytes" in (out / "MODEL_CARD.md").read_text()
    for x, y in zip(weights, keras.saving.load_model(model, compile=False).get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)
    assert rescored["publictest"] == record["publictest"]


def test_evaluate_and_convert_never_land_a_staged_model(tmp_path, fer_csv, monkeypatch):
    """They are readers: an export may be between writing its record and moving its model in, and would
    find its staged model gone. They name the state instead; a re-score or export lands it."""
    from convert.convert import training_spec
    from device.model import ModelError
    from training.evaluate import keras_spec

    model, staged = tmp_path / "fer_vgg16.keras", tmp_path / "fer_vgg16.staged.keras"
    model.write_bytes(b"the model before")
    staged.write_bytes(b"the model an export is writing")
    model.with_suffix(".train.json").write_text(json.dumps({"sha256": sha256_file(staged),
                                                            "input": DEFAULT_SPEC.to_dict()}))
    monkeypatch.setattr(export, "write_record", lambda *a: pytest.fail("a reader rewrote the record and card"))
    test = fer.load_split(fer_csv, "test")
    for read in (keras_spec, lambda m: training_spec(m, test)):
        with pytest.raises(ModelError, match=re.escape(f"is for {staged}, which an export or re-score has not moved")):
            read(model)
        assert model.read_bytes() == b"the model before" and staged.is_file()


def test_two_writers_of_a_record_each_write_their_own_temporary_file(tmp_path, monkeypatch):
    """Two exports or re-scores at once into one folder must not write one temporary record between them."""
    record = json.loads((ROOT / "models" / "fer_vgg16.train.json").read_text())
    moved = []
    monkeypatch.setattr(export, "replace_durably", lambda tmp, dst: (moved.append(tmp.name), os.replace(tmp, dst)))
    export.write_record(record, tmp_path)
    assert moved == [f"fer_vgg16.train.json.{os.getpid()}.tmp"]
    assert json.loads((tmp_path / "fer_vgg16.train.json").read_text()) == record


def test_a_model_that_is_not_keras_is_refused_before_the_data_is_read(tmp_path, monkeypatch, capsys):
    """`--model models/fer_vgg16_int8.tflite` to convert or re-score: said at once, not after minutes of loading."""
    from convert.convert import main as convert_main

    tflite = tmp_path / "fer_vgg16_int8.tflite"
    tflite.write_bytes(b"a converted model")
    monkeypatch.setattr(fer, "load_split", lambda *a, **k: pytest.fail("the data was read first"))
    for main, what in ((convert_main, "not a float Keras model (.keras)"),
                       (export_main, "not an exported Keras model (.keras)")):
        with pytest.raises(SystemExit) as stop:
            main(["--model", str(tflite), "--data", str(tmp_path / "fer2013.zip")])
        assert stop.value.code == 2 and f"--model {tflite}: {what}" in capsys.readouterr().err


def test_the_card_says_when_privatetest_could_not_be_held_back(tmp_path):
    """A test/ without PublicTest_/PrivateTest_ file names was read whole: the card must not claim PrivateTest
    was never used, when the faces that chose the epochs may be PrivateTest."""
    from training.card import write_card

    record = json.loads((ROOT / "models" / "fer_vgg16.train.json").read_text())
    card = write_card(record, tmp_path / "MODEL_CARD.md").read_text()
    assert "PrivateTest is held back for independent evaluation and was never\nused here." in card
    record["data"]["publictest_mixed"] = True
    card = write_card(record, tmp_path / "MODEL_CARD.md").read_text()
    assert "never\nused here" not in card and "PrivateTest\ngives the unbiased one" not in card
    assert "could not be told apart from PrivateTest, and no PrivateTest\nwas held back." in card


def test_an_export_or_rescore_over_a_converted_model_says_make_convert_must_follow(tmp_path, fer_csv, capsys):
    """The device runs the int8 file: after an export of other weights, or a re-score that changes
    the class scale, the one beside it describes the model before, and that is said."""
    from convert.convert import main as convert_main

    out, run = tmp_path / "out", tmp_path / "run"
    assert T.main(["--data", str(fer_csv), "--epochs", "1", *TINY, "--run-dir", str(run), "--out", str(out)]) == 0
    model, record_path = out / "fer_vgg16.keras", out / "fer_vgg16.train.json"
    assert convert_main(["--model", str(model), "--data", str(fer_csv), "--variants", "int8", "--calibration", "21",
                         "--latency-runs", "1", "--allow-drop"]) == 0
    other = json.loads((out / "fer_vgg16_int8.json").read_text())  # another model's, which make convert leaves
    (out / "fer_vgg16_small_int8.json").write_text(json.dumps({**other, "source_model": {"sha256": "0" * 64}}))
    capsys.readouterr()
    assert export_main(["--model", str(model), "--data", str(fer_csv)]) == 0  # the same model, read the same way
    assert "make convert" not in capsys.readouterr().err
    record = json.loads(record_path.read_text())
    counts = [24, 6, 12, 12, 12, 12, 6]  # as if trained on unbalanced faces: re-scoring gives a class scale
    record_path.write_text(json.dumps({**record, "data": {**record["data"], "train_class_counts": counts}}))
    assert export_main(["--model", str(model), "--data", str(fer_csv)]) == 0
    stale = f"warning: fer_vgg16_int8.json in {out} describe another model than fer_vgg16.keras now holds"
    assert stale in capsys.readouterr().err
    record_path.write_text(json.dumps(record))  # the class scale as converted: the weights are what differ now
    assert export_main(["--run-dir", str(run), "--data", str(fer_csv), "--force"]) == 0
    assert stale in capsys.readouterr().err


def test_the_shipped_int8_model_was_converted_from_the_shipped_float_model_as_its_record_reads_it():
    """`make convert` after every export: else the device runs weights the card does not describe."""
    from convert.convert import converted_from, same_model

    model = ROOT / "models" / "fer_vgg16.keras"
    record = json.loads(model.with_suffix(".train.json").read_text())
    made = converted_from(ROOT / "models" / "fer_vgg16_int8.json")
    assert made and same_model(made, sha256_file(model), export.record_spec(record, model))


def test_the_shipped_model_is_deflated_at_most_64_mb_and_its_record_is_its_own():
    model = ROOT / "models" / "fer_vgg16.keras"
    record = json.loads(model.with_suffix(".train.json").read_text())
    assert not stored_plain(model) and model.stat().st_size == record["size_bytes"] <= 64_000_000
    assert record["sha256"] == sha256_file(model)


def test_resume_without_a_run_is_an_error(tmp_path, fer_csv, capsys):
    assert T.main(["--data", str(fer_csv), "--run-dir", str(tmp_path / "none"), "--resume"]) == 2
    assert "no run to resume" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--epochs", "20", "--warmup-epochs", "25"], "--warmup-epochs 25.0: must be at least 0 and below --epochs"),
    (["--epochs", "1"], "--warmup-epochs 1.0: must be at least 0 and below --epochs (its default)"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
    (["--erase", "1.5"], "--erase 1.5: must be between 0 and 1"),
    (["--dropout", "1"], "--dropout 1.0: must be from 0 up to (not including) 1"),
    (["--seed", "-1"], "--seed -1: must be from 0 to 2**32 - 1"),
    (["--stop-after", "-1"], "--stop-after -1: must be at least 0"),
])
def test_a_setting_out_of_range_is_named_before_anything_runs(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        T.main(["--data", str(tmp_path / "none.csv"), "--run-dir", str(tmp_path / "r"), *flags])
    assert stop.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_bad_data_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("emotion,pixels,Usage\n3,1 2,Training\n")
    assert T.main(["--data", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    assert "bad.csv:2" in capsys.readouterr().err


def test_the_record_counts_the_faces_skip_bad_left_out(tmp_path, capsys):
    data = write_csv(tmp_path / "fer2013.csv", {"Training": synthetic_faces(8, seed=1),
                                                 "PublicTest": synthetic_faces(2, seed=2)})
    with open(data, "a") as f:
        f.write("3,1 2,Training\n")  # too few pixels
    out = tmp_path / "out"
    assert T.main(["--data", str(data), "--epochs", "1", *TINY, "--skip-bad", "--run-dir", str(tmp_path / "run"),
                   "--out", str(out)]) == 0
    assert "skipped 1 bad files in train" in capsys.readouterr().out
    record = json.loads((out / "fer_vgg16.train.json").read_text())
    assert (record["data"]["train_skipped"], record["data"]["publictest_skipped"]) == (1, 0)
    card = (out / "MODEL_CARD.md").read_text()
    assert "; 1 Training and 0 PublicTest faces skipped as bad input (`--skip-bad`)" in card
    assert "(Disgusted has 8 of 56 faces)" in card  # this run's counts, not FER-2013's 436 of 28,709


def test_warm_start_copies_weights(tmp_path, tiny_model):
    import keras

    from training.model import build_vgg16

    model = build_vgg16(width=1 / 16)
    T.warm_start(model, tiny_model)
    ref = keras.saving.load_model(tiny_model, compile=False)
    for a, b in zip(model.get_weights(), ref.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SystemExit, match="missing.keras: cannot load it into this model"):
        T.warm_start(model, tmp_path / "missing.keras")
    with pytest.raises(SystemExit, match=f"{tiny_model.name}: cannot load it into this model"):
        T.warm_start(build_vgg16(width=1 / 8), tiny_model)  # another --width: named, no traceback
    (tmp_path / "vgg16.h5").write_bytes(b"not hdf5")
    with pytest.raises(SystemExit, match="vgg16.h5: not ImageNet VGG16 weights"):
        T.warm_start(model, tmp_path / "vgg16.h5")


def _applications_h5(path, model, seed: int, top: bool) -> dict[str, np.ndarray]:
    """Weights in the layout of keras.applications' VGG16 files, for `model`'s conv shapes: a group
    per layer whose weight_names attribute names its datasets, kernel then bias; the file with the
    top adds the classifier's layers. Returns the conv kernels written."""
    import h5py
    import keras

    rng = np.random.default_rng(seed)
    layers = {}
    for conv in (layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)):
        shape = tuple(conv.kernel.shape)
        if conv.name == "block1_conv1":
            shape = (3, 3, 3, shape[3])  # RGB
        layers[conv.name] = [rng.normal(size=shape), rng.normal(size=shape[3])]
    if top:
        layers.update(flatten=[], fc1=[rng.normal(size=(32, 16)), np.zeros(16)],
                      fc2=[rng.normal(size=(16, 16)), np.zeros(16)],
                      predictions=[rng.normal(size=(16, 10)), np.zeros(10)])
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode() for name in ["input_1", *layers]], dtype="S")
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S")
        for name, weights in layers.items():
            names = [f"{name}/{w}:0" for w in ("kernel", "bias")][: len(weights)]
            f.create_group(name).attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
            for n, w in zip(names, weights, strict=True):
                f[name].create_dataset(n, data=w.astype(np.float32))
    return {name: w[0].astype(np.float32) for name, w in layers.items() if name.startswith("block")}


@pytest.mark.parametrize("top", [False, True], ids=["notop", "with-top"])
def test_warm_start_reads_imagenet_weights_with_or_without_the_top(tmp_path, top):
    from training.model import build_vgg16

    model = build_vgg16(width=1 / 16)
    kernels = _applications_h5(tmp_path / "vgg16.h5", model, seed=int(top), top=top)
    T.warm_start(model, tmp_path / "vgg16.h5")
    np.testing.assert_array_equal(model.get_layer("block3_conv2").kernel.numpy(), kernels["block3_conv2"])
    np.testing.assert_allclose(model.get_layer("block1_conv1").kernel.numpy(),  # RGB summed to gray
                               kernels["block1_conv1"].sum(axis=2, keepdims=True), rtol=1e-6)
    with pytest.raises(SystemExit, match=r"block1_conv1 has shape \(3, 3, 1, 4\), this model needs \(3, 3, 1, 8\)"):
        T.warm_start(build_vgg16(width=1 / 8), tmp_path / "vgg16.h5")


def test_a_missing_init_is_named_before_the_data_is_read(tmp_path, capsys):
    missing = tmp_path / "missing.keras"
    assert T.main(["--data", str(tmp_path / "no-data.csv"), "--init", str(missing),
                   "--run-dir", str(tmp_path / "r")]) == 2
    assert f"--init {missing}: no such file" in capsys.readouterr().err


def test_a_warm_start_from_a_copy_of_the_shipped_model_keeps_its_lineage(tmp_path, monkeypatch, capsys):
    """CYCLES.md starts from a copy (~/.cache/feedbackd/start.keras) with no record beside it: the record
    in models/ of the same bytes gives its epochs and ancestry; a model no record describes is named."""
    monkeypatch.chdir(tmp_path)
    shipped = tmp_path / "models" / "fer_vgg16.keras"
    shipped.parent.mkdir()
    shipped.write_bytes(b"the shipped weights")
    record = {"sha256": sha256_file(shipped), "epochs": 4, "config": {"epochs": 4}, "publictest": {"accuracy": 0.6},
              "warm_start_from": {"file": "fer_vgg16.keras", "sha256": "0" * 64, "epochs": 9}}
    shipped.with_suffix(".train.json").write_text(json.dumps(record))
    copy = tmp_path / "cache" / "start.keras"
    copy.parent.mkdir()
    shutil.copy(shipped, copy)
    lineage = warm_start_lineage(str(copy))
    assert lineage["file"] == "start.keras" and lineage["warm_start_from"] == record["warm_start_from"]
    assert T.epoch_offset(lineage) == 13 and capsys.readouterr().err == ""
    copy.write_bytes(b"weights no record describes")
    assert warm_start_lineage(str(copy)) == {"file": "start.keras", "sha256": sha256_file(copy)}
    assert f"warning: --init {copy}: no training record of this model" in capsys.readouterr().err


def test_an_unreadable_record_or_state_is_named_before_the_data_is_read(tmp_path, fer_csv, capsys):
    """A truncated or hand-edited .train.json beside --init, or state.json in --run-dir: exit 2 naming
    the file (and the missing key), not a bare JSONDecodeError or KeyError; --restart discards such a run."""
    init = tmp_path / "start.keras"
    init.write_bytes(b"weights")
    record = init.with_suffix(".train.json")
    start = ["--data", str(tmp_path / "not-read.csv"), "--init", str(init), "--run-dir", str(tmp_path / "r")]
    for text, message in (('{"sha256": "', "unreadable training record ("),
                          (json.dumps({"sha256": sha256_file(init), "config": {}, "publictest": {"accuracy": 0.5}}),
                           "unreadable training record (KeyError: 'epochs')")):
        record.write_text(text)
        assert T.main(start) == 2
        assert f"error: --init {init}: {record}: {message}" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    for text, message in (("", "unreadable run state ("),
                          (json.dumps({"config": {}}), "unreadable run state (no 'epochs_done')")):
        (run / "state.json").write_text(text)
        assert T.main(["--data", str(tmp_path / "not-read.csv"), "--run-dir", str(run), "--resume"]) == 2
        assert f"error: {run / 'state.json'}: {message}" in capsys.readouterr().err
    command = ["--data", str(fer_csv), "--epochs", "1", *TINY, "--run-dir", str(run), "--out", str(tmp_path / "out")]
    assert T.main(command) == 2
    assert "; --restart discards the run there, or use another --run-dir" in capsys.readouterr().err
    assert T.main([*command, "--restart"]) == 0
    assert json.loads((run / "state.json").read_text())["epochs_done"] == 1


def test_evaluate_without_matplotlib_prints_the_report_and_names_the_pngs_it_skips(tiny_model, fer_csv, tmp_path,
                                                                                   monkeypatch, capsys):
    """A Pi's venv has the device packages only: after minutes of scoring a .tflite there, the report
    must come out whole (under --json as one object on stdout) and the missing PNGs be named, not a traceback."""
    from training.evaluate import main as evaluate_main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    common = ["--model", str(tiny_model), "--data", str(fer_csv), "--out-dir", str(tmp_path / "eval")]
    note = "note: confusion matrix PNG not written: matplotlib is not installed (pip install matplotlib)\n"
    assert evaluate_main(common) == 0
    out, err = capsys.readouterr()
    assert out.startswith("faces 28 ") and "wrote" not in out and err.endswith(note)
    assert evaluate_main([*common, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n"] == 28 and err.endswith(note)  # after the note that the model has no record
    assert not list(tmp_path.rglob("*.png"))


def test_a_record_with_a_class_scale_of_another_length_is_named_before_the_data_is_read(tmp_path, capsys):
    """A hand-edited .train.json: refused by name, not a bare ValueError once the data has loaded."""
    from training.evaluate import main as evaluate_main

    model = tmp_path / "fer_vgg16.keras"
    model.write_bytes(b"read only once the record is accepted")
    record = model.with_suffix(".train.json")
    record.write_text(json.dumps(
        {"sha256": sha256_file(model), "input": {**DEFAULT_SPEC.to_dict(), "class_scale": [1.0] * 6}}))
    assert evaluate_main(["--model", str(model), "--data", str(tmp_path / "not-read.csv")]) == 2
    assert f"error: {record}: class_scale has 6 values for 7 labels" in capsys.readouterr().err
    shuffled = [*CLASSES[1:], CLASSES[0]]  # scored as is, its table would name each row after another class
    record.write_text(json.dumps({"sha256": sha256_file(model), "labels": shuffled, "input": DEFAULT_SPEC.to_dict()}))
    assert evaluate_main(["--model", str(model), "--data", str(tmp_path / "not-read.csv")]) == 2
    assert f"error: {record}: the model was trained with labels {shuffled}" in capsys.readouterr().err
    record.write_text(json.dumps({"sha256": sha256_file(model), "labels": list(CLASSES),  # 1e999 reads as infinity
                                  "input": {**DEFAULT_SPEC.to_dict(), "size": float("inf")}}))
    assert evaluate_main(["--model", str(model), "--data", str(tmp_path / "not-read.csv")]) == 2
    assert f"error: {record}: unreadable training record (ValueError: invalid input spec" in capsys.readouterr().err


def test_a_new_run_never_mixes_with_the_one_in_its_folder(tmp_path, fer_csv, capsys):
    run = tmp_path / "run"
    common = ["--data", str(fer_csv), *TINY, "--run-dir", str(run), "--out", str(tmp_path / "out")]
    assert T.main([*common, "--epochs", "3", "--keep-epochs", "--stop-after", "2"]) == 0
    assert T.main([*common, "--epochs", "1"]) == 2  # forgot --resume: the stopped run is kept
    assert "stopped after epoch 2 of 3: --resume to continue it, --restart" in capsys.readouterr().err
    assert (run / "epoch2.weights.h5").exists()
    assert T.main([*common, "--epochs", "1", "--restart"]) == 0
    assert not (run / "epoch2.weights.h5").exists() and len(_history(run)) == 1  # nothing left to average
    assert T.main([*common, "--epochs", "1"]) == 0  # a finished run's folder is simply reused
    assert "removed the previous run's" in capsys.readouterr().out and len(_history(run)) == 1


def test_a_run_whose_export_was_stopped_is_kept_until_it_is_exported(tmp_path, fer_csv, monkeypatch, capsys):
    """A stop (Ctrl-C, a power cut, a full disk) after the last epoch but before its export landed:
    the run is finished, yet its best epoch is only in its folder, which a new run there would clear."""
    run, out = tmp_path / "run", tmp_path / "out"
    command = ["--data", str(fer_csv), "--epochs", "1", *TINY, "--limit", "56", "--run-dir", str(run),
               "--out", str(out)]

    def stopped(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "export_model", stopped)
    with pytest.raises(KeyboardInterrupt):
        T.main(command)
    monkeypatch.undo()
    assert T.main(command) == 2  # the same command again, without --resume
    err = capsys.readouterr().err
    assert f"{run} holds a finished run whose export to {out} did not complete: --resume" in err
    assert f"python -m training.export --run-dir {run}" in err and (run / "best.weights.h5").exists()
    assert T.main([*command, "--resume"]) == 0  # trains nothing, exports
    said = capsys.readouterr().out
    assert (out / "fer_vgg16.keras").exists() and "exported the best epoch (1)" in said
    record = json.loads((out / "fer_vgg16.train.json").read_text())  # the card's figure, and the one epochs chose
    assert (f"PublicTest accuracy {record['publictest']['accuracy']:.4f} scored the device's way "
            f"({float(record['history'][0]['val_accuracy']):.4f} on one view in training)") in said
    assert json.loads((run / "state.json").read_text())["export_due"] is False
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps(dict(state, export_due=True)))  # stopped again, exported by hand
    assert export_main(["--run-dir", str(run), "--data", str(fer_csv)]) == 0
    assert T.main(command) == 0  # now the folder is simply reused
    assert "removed the previous run's" in capsys.readouterr().out


def test_a_typo_never_costs_the_finished_run_in_its_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text(json.dumps({"config": {"epochs": 1}, "epochs_done": 1}))
    (run / "epoch1.weights.h5").write_bytes(b"kept for averaging")
    assert T.main(["--data", str(tmp_path / "typo.csv"), "--run-dir", str(run)]) == 2
    assert "typo.csv: no such file" in capsys.readouterr().err
    assert (run / "epoch1.weights.h5").read_bytes() == b"kept for averaging"



def test_a_run_folder_in_use_is_refused_by_train_average_and_export(tmp_path, capsys):
    """A second `make train` on the folder of a run still training, a --restart clearing its files, or an average
    or export of it mixed two runs' state.json, last.keras and config.json: refused, the folder untouched."""
    import fcntl

    from training.average import main as average_main
    from training.run import clear_run

    run, data = tmp_path / "run", str(tmp_path / "not-read.csv")
    run.mkdir()
    (run / "state.json").write_text(json.dumps({"config": {"epochs": 1}, "epochs_done": 1, "export_due": True}))
    (run / "epoch1.weights.h5").write_bytes(b"kept for averaging")
    holder = os.open(run, os.O_RDONLY | os.O_DIRECTORY)  # as the run training there holds it
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    before = {f.name: f.read_bytes() for f in run.iterdir()}
    try:
        for main, command in ((T.main, ["--data", data, "--run-dir", str(run), "--restart"]),
                              (T.main, ["--data", data, "--run-dir", str(run), "--resume"]),
                              (average_main, ["--run-dir", str(run), "--data", data, "--models",
                                              str(run / "epoch1.weights.h5")]),
                              (export_main, ["--run-dir", str(run), "--data", data])):
            assert main(command) == 2
            assert (f"error: {run}: in use by another process (a training, average or export on it); wait for it "
                    "or use another --run-dir") in capsys.readouterr().err
            assert {f.name: f.read_bytes() for f in run.iterdir()} == before
    finally:
        os.close(holder)
    assert T.main(["--data", data, "--run-dir", str(run), "--restart"]) == 2  # released, it runs: the typo is named
    assert "not-read.csv: no such file" in capsys.readouterr().err
    assert clear_run(run) == 2 and not list(run.iterdir())  # the lock left no file behind
    missing = tmp_path / "runs" / "vgg61"  # a --resume with a typo: named, and no folder made
    assert T.main(["--data", data, "--run-dir", str(missing), "--resume"]) == 2
    assert "no run to resume" in capsys.readouterr().err and not missing.parent.exists()


def test_resume_and_restart_together_are_refused_and_a_resume_compares_a_given_zero_limit(tmp_path, capsys):
    """`--resume --restart` resumed silently; `--resume --limit 0` (all the faces) on a --limit 56 run kept 56."""
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        T.main(["--data", str(tmp_path / "not-read.csv"), "--run-dir", str(run), "--resume", "--restart"])
    assert stop.value.code == 2 and "--restart: not allowed with argument --resume" in capsys.readouterr().err
    run.mkdir()
    cfg = {**T.DEFAULTS, "epochs": 2, "precision": "auto", "limit": 56, "init": None}
    (run / "state.json").write_text(json.dumps({"config": cfg, "epochs_done": 1}))
    assert T.main(["--data", str(tmp_path / "not-read.csv"), "--run-dir", str(run), "--resume", "--limit", "0"]) == 2
    assert "drop --limit (the run has 56)" in capsys.readouterr().err


def test_an_init_or_teacher_this_user_cannot_read_is_named_before_the_data_is_read(tmp_path, tiny_model, capsys):
    copy = tmp_path / "start.keras"
    shutil.copy(tiny_model, copy)
    copy.chmod(0)
    if os.access(copy, os.R_OK):
        pytest.skip("this user (root) reads a file of mode 000")
    start = ["--data", str(tmp_path / "not-read.csv"), "--run-dir", str(tmp_path / "r")]
    assert T.main([*start, "--init", str(copy)]) == 2
    assert f"error: --init {copy}: cannot read (Permission denied)" in capsys.readouterr().err
    assert T.main([*start, "--teacher", str(copy), "--distill", "0.5"]) == 2
    assert f"error: --teacher {copy}: cannot read (Permission denied)" in capsys.readouterr().err


def test_a_resume_names_a_checkpoint_it_cannot_load(tmp_path, fer_csv, capsys):
    run = tmp_path / "run"
    run.mkdir()
    cfg = {**T.DEFAULTS, "epochs": 2, "width": 0.0625, "precision": "float32", "limit": 0, "init": None}
    (run / "state.json").write_text(json.dumps({"config": cfg, "epochs_done": 1, "best_accuracy": 0.2,
                                                "best_epoch": 1, "wall_seconds": 1.0}))
    (run / "last.keras").write_bytes(b"cut short by a full disk")
    assert T.main(["--data", str(fer_csv), "--run-dir", str(run), "--out", str(tmp_path / "out"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"error: {run / 'last.keras'}: cannot load the run's checkpoint (ValueError: " in err
    assert err.endswith("; --restart discards the run there, or use another --run-dir\n")


def test_a_card_or_picture_cut_short_leaves_the_one_before(tmp_path, monkeypatch):
    """Written in place, a kill left a truncated card or PNG beside a whole record."""
    from training import run as run_folder
    from training.card import write_card
    from training.plots import confusion_png

    record = json.loads((ROOT / "models" / "fer_vgg16.train.json").read_text())
    card, png = tmp_path / "MODEL_CARD.md", tmp_path / "fer_vgg16_confusion.png"
    card.write_text("the card before")
    png.write_bytes(b"the picture before")

    def killed(tmp, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_folder, "replace_durably", killed)
    with pytest.raises(KeyboardInterrupt):
        write_card(record, card)
    with pytest.raises(KeyboardInterrupt):
        confusion_png(np.eye(len(CLASSES)), png, "cut short")
    assert card.read_text() == "the card before" and png.read_bytes() == b"the picture before"
    assert sorted(f.name for f in tmp_path.iterdir()) == [card.name, png.name]  # no temporary file left

def test_an_epoch_or_an_average_is_saved_whole_or_not_at_all(tmp_path, monkeypatch):
    from training import run as run_folder
    from training.run import chosen_weights, commit_files, finish_pending

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.keras").write_text("epoch 1")
    state = {"epochs_done": 2}

    def write_then_lose_power(folder):
        (folder / "last.keras").write_text("epoch 2")
        raise KeyboardInterrupt  # before state.json said epoch 2 was done

    with pytest.raises(KeyboardInterrupt):
        commit_files(run, state, write_then_lose_power)
    assert not (run / "state.json").exists()
    finish_pending(run, {"epochs_done": 1})  # the resume: state.json still says epoch 1
    assert (run / "last.keras").read_text() == "epoch 1" and not list(run.glob(".pending-*"))

    synced = []  # what reaches the disk, in order: the staged files before state.json names them
    monkeypatch.setattr(run_folder, "fsync", lambda path: synced.append(path.name))
    commit_files(run, {"epochs_done": 2}, lambda folder: (folder / "last.keras").write_text("epoch 2"))
    assert synced == ["last.keras", ".pending-commit1", "state.tmp", "run", "run"]
    assert (run / "last.keras").read_text() == "epoch 2"

    # A first average committed, a second staged after the same epoch, and the power cut before
    # state.json named it: the resume keeps the first, which the state describes.
    state = json.loads((run / "state.json").read_text())
    commit_files(run, state, lambda folder: (folder / "average.weights.h5").write_text("average 1"))
    monkeypatch.setattr(run_folder, "save_state", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        commit_files(run, state, lambda folder: (folder / "average.weights.h5").write_text("average 2"))
    finish_pending(run, json.loads((run / "state.json").read_text()))
    assert (run / "average.weights.h5").read_text() == "average 1" and not list(run.glob(".pending-*"))

    # a run begun by an older feedbackd staged by epoch: committed up to its epochs_done
    for n in (3, 4):
        (run / f".pending-epoch{n}").mkdir()
        (run / f".pending-epoch{n}" / "last.keras").write_text(f"epoch {n}")
    finish_pending(run, {"epochs_done": 3})
    assert (run / "last.keras").read_text() == "epoch 3" and not list(run.glob(".pending-*"))

    # two averages committed, the power cut before either moved in: the later one's file wins
    for n in (9, 10):  # "10" sorts before "9" as text
        (run / f".pending-commit{n}").mkdir()
        (run / f".pending-commit{n}" / "average.weights.h5").write_text(f"average {n}")
    (run / ".pending-commit11").mkdir()  # staged, never committed
    (run / ".pending-commit11" / "average.weights.h5").write_text("average 11")
    state = {"epochs_done": 3, "commits": 10, "average": {}}
    # evaluate, which must not move a run's files (it may be training), reads the committed one
    assert chosen_weights(run, state).read_text() == "average 10"
    finish_pending(run, state)
    assert chosen_weights(run, state) == run / "average.weights.h5"
    assert (run / "average.weights.h5").read_text() == "average 10" and not list(run.glob(".pending-*"))


def test_card_reproduces_every_cycle_oldest_first():
    from training.card import _data_sentence, _reproduce

    first = dict(T.DEFAULTS, epochs=4, init=None, epoch_offset=0, precision="auto", limit=0)
    second = dict(T.DEFAULTS, epochs=5, lr=0.03, init="models/fer_vgg16.keras", epoch_offset=4, precision="float32",
                  limit=0)
    record = {"config": second, "warm_start_from": {"file": "fer_vgg16.keras", "sha256": "ab" * 32, "config": first,
                                                    "warm_start_from": None}}
    assert _reproduce(record).splitlines() == [
        '    make train ARGS="--epochs 4"',
        '    make train ARGS="--init models/fer_vgg16.keras --epochs 5 --lr 0.03 --precision float32"',
        "    make evaluate MODEL=models/fer_vgg16.keras DATA=../shared/data/fer2013/fer2013-training-publictest.zip",
    ]
    first.pop("epoch_offset")  # run before warm starts continued the epoch numbering: marked and explained
    lines = _reproduce(record).splitlines()
    assert lines[0].endswith("# *") and not lines[1].endswith("# *") and "bf6f45c" in lines[4]
    first["epoch_offset"] = 0
    parent_avg = {"batch_norm_faces": 8192, "models": [{"file": "startmodel.keras"}, {"file": "epoch4.weights.h5"}]}
    record.update(data={"train_faces": 28709}, average={"batch_norm_faces": 28709,
                                                        "models": [{"file": "epoch5.weights.h5"}]})
    record["warm_start_from"]["average"] = parent_avg  # each cycle's average follows its training command
    lines = _reproduce(record).splitlines()
    assert lines[0].startswith("    # RUN: that cycle's run folder")  # whose epochs were kept for the average
    assert lines[2] == "    cp models/fer_vgg16.keras startmodel.keras"  # made before its cycle replaces it
    assert lines[3] == '    make train ARGS="--epochs 4 --keep-epochs"'
    assert lines[4].endswith("--batch-norm-faces 8192 --models startmodel.keras RUN/epoch4.weights.h5")
    assert lines[5].startswith('    make train ARGS="--init') and "--keep-epochs" in lines[5]
    assert lines[6].endswith("--models RUN/epoch5.weights.h5")
    assert "--batch-norm-faces" not in lines[6] and lines[7].startswith("    make evaluate")
    record["warm_start_from"].pop("config")  # an older record: the chain starts from its file
    assert _reproduce(record).splitlines()[2].startswith("    # start from `fer_vgg16.keras` (sha256 abab")
    # a run on other data (--skip-bad leaving some out) is repeated on that data, with that flag
    record["data"].update(source="fer2013.csv", sha256="cd" * 32, train_skipped=2)
    lines = _reproduce(record).splitlines()
    assert lines[3] == '    make train DATA=fer2013.csv ARGS="--init models/fer_vgg16.keras --epochs 5 --lr 0.03 ' \
                       '--keep-epochs --precision float32 --skip-bad"'
    assert "--data fer2013.csv --models" in lines[4]
    assert lines[5] == '    make evaluate MODEL=models/fer_vgg16.keras DATA=fer2013.csv ARGS="--skip-bad"'
    assert _data_sentence(record) == ("With `DATA` the path of `fer2013.csv` (sha256 cdcdcdcdcdcdcdcd…), "
                                      "which this model learnt from")


def test_the_card_states_the_lineage_wall_time_and_the_model_size(tmp_path):
    """The shipped card counted 75 epochs but gave only its last cycle's wall time; a record names
    its model's size, or the card measures the model file beside it when that is the record's model.
    Each cycle's own record had its time: only the lineage's copy lacked it, and the time is stated once."""
    from training.card import write_card

    record = json.loads((ROOT / "models" / "fer_vgg16.train.json").read_text())
    record.pop("size_bytes", None)
    node = {"file": "fer_vgg16.keras", "config": record["config"], "publictest_accuracy": 0.6, "wall_seconds": None}
    chain = record["warm_start_from"] = dict(node, sha256="ab" * 32, epochs=5, warm_start_from=dict(
        node, sha256="cd" * 32, epochs=3, warm_start_from=None))
    this = (f"wall time {record['wall_seconds'] / 3600:.2f} h on\n  {record['cpu']} ({record['precision']}, "
            f"{record['engine']})")  # XLA, oneDNN where it ran with XLA

    def card() -> str:
        return write_card(record, tmp_path / "MODEL_CARD.md").read_text()

    assert (f"{this};\n  this model's lineage does not carry the wall time of the 2 earlier cycles "
            "(training/CYCLES.md gives it).\n") in card()
    assert card().count("wall time") == 2  # this run's, and what the lineage lacks
    assert " h for all " not in card() and " h with the " not in card()  # no lineage total from times it lacks
    chain["wall_seconds"] = 7200.0
    assert (f"{this}; {(record['wall_seconds'] + 7200) / 3600:.2f} h with the 1 earlier cycle whose wall time its "
            "lineage carries;\n  this model's lineage does not carry the wall time of the other 1 earlier cycle "
            "(training/CYCLES.md gives it).\n") in card()
    chain["warm_start_from"]["wall_seconds"] = 3600.0
    total = (record["wall_seconds"] + 10800) / 3600
    assert f"{this}; {total:.2f} h for all {record['epochs'] + 8} epochs.\n" in card()
    assert card().count("wall time") == 1
    assert f"- Model file: sha256 `{record['sha256']}`." in card()  # no model beside it to measure
    (tmp_path / "fer_vgg16.keras").write_bytes(b"another model")
    assert f"- Model file: sha256 `{record['sha256']}`." in card()
    record["sha256"] = sha256_file(tmp_path / "fer_vgg16.keras")
    assert f"- Model file: 13 bytes (0.0 MiB, 0.0 MB), sha256 `{record['sha256']}`." in card()
    record["size_bytes"] = 64_373_079  # the shipped model's, as Keras stored it uncompressed
    assert "- Model file: 64,373,079 bytes (61.4 MiB, 64.4 MB), sha256" in card()


def test_the_card_counts_a_warm_start_from_imagenet_weights_exactly(tmp_path):
    """ImageNet VGG16 weights (`--init` of a .h5) have no FER-2013 epochs: the run's are all there are. Only a
    .keras start that no training record described leaves the count a lower bound."""
    from training.card import write_card

    record = json.loads((ROOT / "models" / "fer_vgg16.train.json").read_text())
    n = record["epochs"]

    def lineage(start: dict) -> str:
        record["warm_start_from"] = start
        card = write_card(record, tmp_path / "MODEL_CARD.md").read_text()
        return next(line for line in card.splitlines() if line.startswith("- Warm-started from"))

    imagenet = {"file": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "sha256": "ab" * 32}
    assert lineage(imagenet) == ("- Warm-started from `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` (sha256 "
                                 f"`abababababababab…`, ImageNet VGG16 weights: its conv kernels, no FER-2013 epochs); "
                                 f"{n} epochs in all.")
    unknown = {"file": "start.keras", "sha256": "cd" * 32}
    assert lineage(unknown).endswith(f"(sha256 `cdcdcdcdcdcdcdcd…`); its epochs are unknown, so at least {n} in all.")
    earlier = {"file": "fer_vgg16.keras", "sha256": "ef" * 32, "epochs": 4, "publictest_accuracy": 0.6}
    assert lineage(dict(earlier, warm_start_from=imagenet)).endswith(f"; {n + 4} epochs in all.")
    assert lineage(dict(earlier, warm_start_from=unknown)).endswith(
        f"; the epochs of `start.keras` (sha256 `cdcdcdcdcdcdcdcd…`) earlier in its lineage are unknown, "
        f"so at least {n + 4} in all.")


def test_random_erasing_hides_one_rectangle_per_chosen_face():
    import tensorflow as tf

    from training.augment import erase_boxes

    x = tf.ones([64, 48, 48, 1])
    seed = tf.constant([7, 1], tf.int64)
    out = erase_boxes(x, seed, p=0.5).numpy()[..., 0]
    erased = (out == 0).sum(axis=(1, 2))
    assert 16 < (erased > 0).sum() < 48  # about half the faces, the others untouched
    assert np.all(out[erased == 0] == 1)
    for face, n in zip(out, erased, strict=True):
        if n:  # one axis-aligned rectangle of 2 % to 33 % of the face
            rows, cols = np.nonzero(face == 0)
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert box == n and 0.02 * 48 * 48 - 100 <= n <= 0.33 * 48 * 48 + 100
    assert np.array_equal(out, erase_boxes(x, seed, p=0.5).numpy()[..., 0])  # stateless: --resume repeats it
    assert np.array_equal(erase_boxes(x, seed, p=0.0).numpy(), x.numpy())


def test_distillation_mixes_teacher_probabilities_into_the_targets(tmp_path, fer_csv, tiny_model, capsys):
    import tensorflow as tf

    x, y = synthetic_faces(2)
    teacher = np.random.default_rng(1).dirichlet(np.ones(7), len(y)).astype(np.float32)  # one per face
    cfg = dict(T.DEFAULTS, batch_size=len(y), distill=0.25)
    _, target, _ = next(iter(T.train_dataset(tf.constant(preprocess(x)), tf.constant(y),
                                             tf.ones(len(y)), cfg, 0, tf.constant(teacher))))
    order = np.random.default_rng([cfg["seed"], 0]).permutation(len(y))
    np.testing.assert_allclose(target.numpy(), 0.75 * np.eye(7)[y[order]] + 0.25 * teacher[order], rtol=1e-5)

    run = tmp_path / "run"
    args = ["--data", str(fer_csv), "--epochs", "1", *TINY, "--run-dir", str(run), "--out", str(tmp_path / "out")]
    assert T.main([*args, "--teacher", str(tiny_model)]) == 2  # a teacher needs a weight
    assert "--distill" in capsys.readouterr().err
    assert T.main([*args, "--teacher", str(tiny_model), "--distill", "0.5"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["teachers"] == [{"file": str(tiny_model), "sha256": sha256_file(tiny_model)}]
    targets = np.load(run / "teacher_targets.npz")["targets"]
    import keras

    from training import data as fer

    faces = fer.load_split(fer_csv, "train").x  # the teacher's own reading of each Training face, in order
    np.testing.assert_allclose(targets, T.classify(keras.saving.load_model(tiny_model), faces), atol=1e-4)
    card = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert f"--teacher {tiny_model}" in card and "Distilled" in card

    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a model")
    kept = (run / "history.csv").read_bytes()
    assert T.main([*args, "--teacher", str(broken), "--distill", "0.5"]) == 2
    assert f"error: --teacher {broken}: cannot load the Keras model (" in capsys.readouterr().err
    assert (run / "history.csv").read_bytes() == kept  # the finished run is still there
    (run / "teacher_targets.npz").write_bytes(b"")  # as a power cut may leave it: computed again, no crash
    second = keras.saving.load_model(tiny_model)  # another teacher: new targets, not the first one's
    second.set_weights([w * 0.5 for w in second.get_weights()])
    second.save(tmp_path / "second.keras")
    assert T.main([*args, "--teacher", str(tmp_path / "second.keras"), "--distill", "0.5", "--force"]) == 0
    assert not np.allclose(np.load(run / "teacher_targets.npz")["targets"], targets)


def test_a_teacher_that_does_not_take_the_devices_faces_is_named(tmp_path, fer_csv, capsys):
    """Only a teacher's output was checked: one made for other faces failed deep in Keras as a traceback."""
    import keras

    teacher = tmp_path / "small.keras"
    keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Flatten(),
                      keras.layers.Dense(7, activation="softmax")]).save(teacher)
    run = tmp_path / "run"
    assert T.main(["--data", str(fer_csv), "--epochs", "1", *TINY, "--run-dir", str(run),
                   "--out", str(tmp_path / "out"), "--teacher", str(teacher), "--distill", "0.5"]) == 2
    assert (f"error: --teacher {teacher}: the model's input is (32, 32, 1), expected (48, 48, 1)"
            in capsys.readouterr().err)
    assert not (run / "state.json").exists() and not (tmp_path / "out").exists()


def test_code_commit_is_dirty_only_when_code_changed(tmp_path):
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *a], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    (tmp_path / "models").mkdir()
    for name, text in {"train.py": "x = 1\n", "README.md": "r\n", "models/m.json": "{}"}.items():
        (tmp_path / name).write_text(text)
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "first")
    head = git("rev-parse", "HEAD")
    assert T.code_commit(tmp_path) == head
    (tmp_path / "README.md").write_text("changed\n")  # documents, models and new files change no run
    (tmp_path / "models/m.json").write_text("[]")
    (tmp_path / "notes.py").write_text("")
    assert T.code_commit(tmp_path) == head
    (tmp_path / "train.py").write_text("x = 2\n")
    assert T.code_commit(tmp_path) == head + "-dirty"


def test_a_resume_may_switch_precision_and_code(tmp_path, fer_csv, monkeypatch):
    run = tmp_path / "run"
    first = ["--data", str(fer_csv), "--epochs", "2", *TINY, "--run-dir", str(run), "--out", str(tmp_path / "out")]
    monkeypatch.setattr(T, "code_commit", lambda: "aaaa111")
    assert T.main([*first, "--precision", "bfloat16", "--stop-after", "1"]) == 0
    assert json.loads((run / "state.json").read_text())["policy"] == "mixed_bfloat16"
    # the next sitting's CPU has no bfloat16 instructions, and the code moved on
    monkeypatch.setattr(T, "code_commit", lambda: "bbbb222")
    assert T.main(["--data", str(fer_csv), "--run-dir", str(run), "--resume", "--precision", "float32"]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["policy"] == "float32" and state["epochs_done"] == 2
    record = json.loads((tmp_path / "out" / "fer_vgg16.train.json").read_text())
    assert record["code_commit"] == "aaaa111, resumed on bbbb222"  # credited to both sittings' code
    assert record["precision"] == "mixed_bfloat16; float32"  # and to both precisions
    monkeypatch.setattr(T, "code_commit", lambda: "cccc333")  # a later sitting resumes the finished run
    assert T.main(["--data", str(fer_csv), "--run-dir", str(run), "--resume"]) == 0
    again = json.loads((tmp_path / "out" / "fer_vgg16.train.json").read_text())
    assert again["code_commit"] == "aaaa111, resumed on bbbb222"  # it trained nothing: not credited


def test_bench_train_times_the_pipeline_the_later_cycles_run(fer_csv, monkeypatch, capsys):
    """`make bench-train` with random erasing and teacher targets: both reach the timed pipeline."""
    from bench import train_pipeline

    built = []

    def spy(x, y, w, cfg, epoch, teacher=None):
        built.append((cfg["erase"], cfg["distill"], None if teacher is None else tuple(teacher.shape)))
        return train_dataset(x, y, w, cfg, epoch, teacher=teacher)

    train_dataset = T.train_dataset
    monkeypatch.setattr(T, "train_dataset", spy)
    rc = train_pipeline.main(["--data", str(fer_csv), "--steps", "2", "--rounds", "1", "--width", "0.0625",
                              "--batch-size", "8", "--precision", "float32", "--erase", "0.5", "--distill", "0.7"])
    n = len(fer.load_split(fer_csv, "train"))
    assert built == [(0.5, 0.7, (n, 7))]  # one teacher row per Training face
    out = capsys.readouterr().out
    assert "erase 0.5, distill 0.7" in out
    rates = {k: float(v) for k, v in re.findall(r"^(in-memory batch|input pipeline)\s*:\s*([\d.]+) img/s", out, re.M)}
    cost = float(re.search(r"^pipeline cost\s*:\s*(-?[\d.]+) %", out, re.M).group(1))
    real, mem = rates["input pipeline"], rates["in-memory batch"]  # each printed to 0.1 img/s: the cost from
    lowest, highest = 100 * (1 - (real + 0.05) / (mem - 0.05)), 100 * (1 - (real - 0.05) / (mem + 0.05))  # them
    assert lowest - 0.05 <= cost <= highest + 0.05  # is known only that far (a loaded machine's few img/s: far)
    if abs(cost - 10) >= 0.1:  # printed to 0.1 %: at the line itself the verdict may go either way
        assert rc == (0 if cost <= 10 else 1)  # at most 10 % (this tiny model may miss it)


def test_make_bench_fails_naming_the_target_a_figure_missed(converted, fer_csv, monkeypatch, capsys):
    """`make bench` exits 1 when a figure misses its target, as `make bench-train` does: a
    regression read from an exit status, not only from a line among dozens."""
    from bench import device as bench_device

    argv = ["--data", str(fer_csv), "--model", str(converted / "fer_vgg16_int8.tflite"), "--parts", "commit"]
    monkeypatch.setattr(bench_device, "press_to_commit", lambda: (1.0, 20.004))  # printed 20.00: met
    assert bench_device.main(argv) == 0
    assert "missed target" not in capsys.readouterr().err
    monkeypatch.setattr(bench_device, "press_to_commit", lambda: (1.0, 30.0))
    assert bench_device.main(argv) == 1
    assert "bench: missed target: press-to-commit p99 30.00 ms (target <= 20 ms)" in capsys.readouterr().err


def test_the_benchmarks_name_a_missing_model_or_data_set(tmp_path, capsys, fer_csv):
    """`make bench` before `make convert`, or on a Pi without the FER-2013 zip: an error, not a traceback."""
    from bench import device as bench_device
    from bench import train_pipeline

    missing = tmp_path / "none.zip"
    assert train_pipeline.main(["--data", str(missing)]) == 2
    assert f"bench: error: {missing}" in capsys.readouterr().err
    n = len(fer.load_split(fer_csv, "train"))  # more steps than one epoch holds would time its short last batch
    assert train_pipeline.main(["--data", str(fer_csv), "--batch-size", "4", "--steps", str(n // 4 - 1)]) == 2
    assert f"--steps {n // 4 - 1}: at most {n // 4 - 2} with --batch-size 4 on {n} faces" in capsys.readouterr().err
    for bench, flag, message in [  # -3 steps would time an endless take(-1), 0 divide by zero
            *((train_pipeline, f, f"{f} 0: must be at least 1") for f in ("--steps", "--rounds", "--batch-size")),
            (train_pipeline, "--width", "--width 0.0: must be above 0"),
            *((bench_device, f, f"{f} 0: must be at least 1") for f in ("--frames", "--round-trip"))]:
        with pytest.raises(SystemExit) as stop:
            bench.main(["--data", str(missing), flag, "0"])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    model = tmp_path / "fer_vgg16_int8.tflite"
    assert bench_device.main(["--data", str(missing), "--model", str(model)]) == 2
    assert f"bench: error: {model}" in capsys.readouterr().err  # named before the data is read
    with pytest.raises(SystemExit) as stop:  # a typo dropped the paper comparison without a word
        bench_device.main(["--data", str(missing), "--float", str(tmp_path / "typo.keras")])
    assert stop.value.code == 2 and f"--float {tmp_path / 'typo.keras'}: no such model" in capsys.readouterr().err


def test_a_teacher_that_sees_batches_reads_each_augmented_batch(tmp_path, fer_csv, tiny_model):
    """Consistent teaching: the target of an erased, shifted face is what the teachers say about that very
    image, not about the clean face; no per-face targets are saved, and the card says which it was."""
    import keras
    import tensorflow as tf

    from training.distill import teacher_ensemble

    teachers = [{"file": str(tiny_model), "sha256": sha256_file(tiny_model)}]
    ensemble = teacher_ensemble(teachers, "float32")
    x, y = synthetic_faces(2)
    cfg = dict(T.DEFAULTS, batch_size=len(y), distill=0.25, erase=1.0)
    xb, target, _ = next(iter(T.train_dataset(tf.constant(preprocess(x)), tf.constant(y), tf.ones(len(y)),
                                              cfg, 0, ensemble)))
    order = np.random.default_rng([cfg["seed"], 0]).permutation(len(y))
    seen = keras.saving.load_model(tiny_model)(xb, training=False).numpy()
    np.testing.assert_allclose(target.numpy(), 0.75 * np.eye(7)[y[order]] + 0.25 * seen, atol=1e-5)
    clean = keras.saving.load_model(tiny_model)(preprocess(x)[order], training=False).numpy()
    assert not np.allclose(seen, clean, atol=1e-3)  # the augmented batch, not the faces
    bf16 = teacher_ensemble(teachers, "mixed_bfloat16")
    assert bf16.get_layer("teacher0").get_layer("block1_conv1").dtype_policy.name == "mixed_bfloat16"
    np.testing.assert_allclose(bf16(xb).numpy(), seen, atol=0.05)

    run, out = tmp_path / "run", tmp_path / "out"
    args = ["--data", str(fer_csv), "--epochs", "1", *TINY, "--run-dir", str(run), "--out", str(out),
            "--teacher", str(tiny_model), "--distill", "0.5"]
    with pytest.raises(SystemExit, match="2"):
        T.main([*args, "--teacher-sees", "pixels"])
    assert T.main([*args, "--teacher-sees", "batches"]) == 0
    assert json.loads((run / "config.json").read_text())["teacher_sees"] == "batches"
    assert not (run / "teacher_targets.npz").exists()
    card = (out / "MODEL_CARD.md").read_text()
    assert "--teacher-sees batches" in card and "each augmented face as the student saw it" in card


def test_mixup_blends_each_face_its_target_and_weight_with_its_mate(tmp_path, fer_csv, tiny_model):
    """--mixup: face k of a batch is blended with face n-1-k by its own weight, its target and sample
    weight by the same one, the same way at every resume; teachers reading batches read the blend."""
    import keras
    import tensorflow as tf

    from training.distill import teacher_ensemble

    x, y = synthetic_faces(2)
    xs, ys, w = tf.constant(preprocess(x)), tf.constant(y), tf.constant(np.arange(1.0, len(y) + 1, dtype=np.float32))
    cfg = dict(T.DEFAULTS, batch_size=len(y))
    xb, target, wb = (t.numpy() for t in next(iter(T.train_dataset(xs, ys, w, cfg, 0))))
    mixed = [t.numpy() for t in next(iter(T.train_dataset(xs, ys, w, dict(cfg, mixup=0.4), 0)))]
    lam = (mixed[2] - wb[::-1]) / (wb - wb[::-1])  # every weight differs from its mate's
    assert lam.min() >= 0 and lam.max() <= 1 and lam.std() > 0.05  # a draw per face, not per batch
    np.testing.assert_allclose(mixed[0], lam[:, None, None, None] * xb + (1 - lam[:, None, None, None]) * xb[::-1],
                               atol=1e-4)
    np.testing.assert_allclose(mixed[1], lam[:, None] * target + (1 - lam[:, None]) * target[::-1], atol=1e-5)
    again = next(iter(T.train_dataset(xs, ys, w, dict(cfg, mixup=0.4), 0)))
    np.testing.assert_array_equal(again[0].numpy(), mixed[0])

    teachers = [{"file": str(tiny_model), "sha256": sha256_file(tiny_model)}]
    taught = dict(cfg, mixup=0.4, distill=0.25, teacher_sees="batches")
    xm, tm, _ = next(iter(T.train_dataset(xs, ys, w, taught, 0, teacher_ensemble(teachers, "float32"))))
    np.testing.assert_allclose(xm.numpy(), mixed[0], atol=1e-6)
    seen = keras.saving.load_model(tiny_model)(xm, training=False).numpy()
    np.testing.assert_allclose(tm.numpy(), 0.75 * mixed[1] + 0.25 * seen, atol=1e-5)

    run, out = tmp_path / "run", tmp_path / "out"
    args = ["--data", str(fer_csv), "--epochs", "1", *TINY, "--run-dir", str(run), "--out", str(out)]
    with pytest.raises(SystemExit, match="2"):
        T.main([*args, "--mixup", "-0.2"])
    assert T.main([*args, "--mixup", "0.2"]) == 0
    assert json.loads((run / "config.json").read_text())["mixup"] == 0.2
    assert "(mixup, weight ~ Beta(0.2, 0.2))" in (out / "MODEL_CARD.md").read_text()

"""Weight averaging: the mean of kept epochs, batch norm re-estimated, exported only when it beats the run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_train import TINY

from device.preprocess import preprocess
from training import average as A
from training import train as T
from training.evaluate import main as evaluate_main
from training.export import main as export_main
from training.export import warm_start_lineage


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory, fer_csv):
    """A two-epoch tiny run that kept both epochs' weights."""
    d = tmp_path_factory.mktemp("avg")
    assert T.main(["--data", str(fer_csv), "--epochs", "2", *TINY, "--keep-epochs",
                   "--run-dir", str(d / "run"), "--out", str(d / "first")]) == 0
    return d / "run"


def _model():
    from training.model import build_vgg16

    return build_vgg16(width=0.0625)


def test_average_is_the_mean_of_the_models(kept_run):
    paths = [kept_run / "epoch1.weights.h5", kept_run / "epoch2.weights.h5"]
    weights = [A.load_weights(_model(), p) for p in paths]
    assert any(not np.array_equal(a, b) for a, b in zip(*weights, strict=True))  # the epochs differ
    model = _model()
    A.average_weights(model, paths)
    for got, a, b in zip(model.get_weights(), *weights, strict=True):
        np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-6, atol=1e-7)
    with pytest.raises(SystemExit, match="missing.keras: no such file"):
        A.average_weights(model, [kept_run / "missing.keras"])
    with pytest.raises(SystemExit, match="config.json: "):  # not a weights file: named, no traceback
        A.average_weights(model, [kept_run / "config.json"])



def test_a_models_file_that_is_not_a_model_is_named(tmp_path):
    """A zip without config.json, or with a damaged member, raised KeyError or BadZipFile as a traceback."""
    import zipfile

    bare, damaged = tmp_path / "bare.keras", tmp_path / "damaged.keras"
    with zipfile.ZipFile(bare, "w") as z:
        z.writestr("metadata.json", "{}")
    with zipfile.ZipFile(damaged, "w") as z:
        z.writestr("config.json", "{" + " " * 64 + "}")
    damaged.write_bytes(damaged.read_bytes().replace(b" " * 64, b"x" + b" " * 63))  # its CRC no longer matches
    for path, why in ((bare, "KeyError"), (damaged, "BadZipFile")):
        with pytest.raises(SystemExit, match=f"error: --models {path}: cannot load it \\({why}: "):
            A.load_weights(_model(), path)

def test_batch_norm_statistics_are_those_of_all_the_data(kept_run):
    import keras

    model = _model()
    A.average_weights(model, [kept_run / "epoch2.weights.h5"])
    x = preprocess(np.random.default_rng(0).integers(0, 256, (40, 48, 48), dtype=np.uint8))
    A.recalibrate_batch_norm(model, x, batch_size=8)
    bn = model.get_layer("block1_bn1")
    conv = keras.Model(model.input, model.get_layer("block1_conv1").output)(x).numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), conv.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5)
    assert bn.momentum == 0.99  # restored for later training


def _scores(monkeypatch, average: float, bar: float) -> list[np.ndarray]:
    """PublicTest scores average.main sees: the average's first, then the run's chosen weights'.

    Returns the first conv kernel of each model scored, in order, so a test can check that the bar
    was measured on the weights it should be."""
    from training.metrics import report

    scores, kernels = iter([average, bar]), []
    real_predict = T.predict

    def predict(model, x):
        kernels.append(model.get_layer("block1_conv1").get_weights()[0])
        return real_predict(model, x)

    monkeypatch.setattr(T, "predict", predict)
    monkeypatch.setattr(A, "report", lambda y, p: dict(report(y, p), accuracy=next(scores)))
    return kernels


def _kernel(path) -> np.ndarray:
    return A.load_weights(_model(), path)[0]


def test_average_exports_only_when_it_beats_the_run(kept_run, fer_csv, tmp_path, capsys, monkeypatch):
    out = tmp_path / "models"
    args = ["--run-dir", str(kept_run), "--data", str(fer_csv), "--out", str(out),
            "--models", str(kept_run / "epoch1.weights.h5"), str(kept_run / "epoch2.weights.h5")]
    state_path = kept_run / "state.json"
    state = json.loads(state_path.read_text())
    kernels = _scores(monkeypatch, 0.5, 0.5)  # a tie is no gain
    assert A.main(args) == 0
    assert "does not beat the run's best" in capsys.readouterr().out and not out.exists()
    mean = (_kernel(kept_run / "epoch1.weights.h5") + _kernel(kept_run / "epoch2.weights.h5")) / 2
    np.testing.assert_allclose(kernels[0], mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(kernels[1], _kernel(kept_run / "best.weights.h5"))  # the bar: the best epoch

    _scores(monkeypatch, 0.5, 0.4)
    assert A.main(args) == 0
    record = json.loads((out / "fer_vgg16.train.json").read_text())
    assert [m["file"] for m in record["average"]["models"]] == ["epoch1.weights.h5", "epoch2.weights.h5"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "the average of 2 models" in card and "python -m training.average" in card
    assert "--models RUN/epoch1.weights.h5 RUN/epoch2.weights.h5" in card  # as typed from the repository
    assert "--batch-norm-faces" not in card  # all Training faces: the default
    # a cycle warm-started from this model carries its average, so its card repeats that step too
    assert warm_start_lineage(str(out / "fer_vgg16.keras"))["average"] == record["average"]
    import keras

    kernel = keras.saving.load_model(out / "fer_vgg16.keras").get_layer("block1_conv1").get_weights()[0]
    epochs = [A.load_weights(_model(), p)[0] for p in (kept_run / "epoch1.weights.h5", kept_run / "epoch2.weights.h5")]
    np.testing.assert_allclose(kernel, (epochs[0] + epochs[1]) / 2, rtol=1e-6, atol=1e-7)
    capsys.readouterr()  # scored as the record says
    assert evaluate_main(["--model", str(out / "fer_vgg16.keras"), "--data", str(fer_csv), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == record["publictest"]["accuracy"]

    # without --out the average goes where the run exported (the fixture's --out), never to models/
    # (forced: the tiny model's real score there may be lower than the first export's)
    first = kept_run.parent / "first" / "fer_vgg16.train.json"
    _scores(monkeypatch, 0.5, 0.4)
    assert A.main([*args[: args.index("--out")], *args[args.index("--out") + 2:], "--force"]) == 0
    assert json.loads(first.read_text())["average"] == record["average"]
    state_path.write_text(json.dumps(state))
    # the batch-norm pass draws dropout masks: seeded, the same command gives the same model
    fc2 = [keras.saving.load_model(d / "fer_vgg16.keras").get_layer("fc2_bn").moving_variance.numpy()
           for d in (out, first.parent)]
    np.testing.assert_array_equal(*fc2)


def test_averaging_a_limited_run_re_estimates_batch_norm_on_the_faces_it_trained_on(fer_csv, tmp_path, monkeypatch):
    from training import data as fer

    run = tmp_path / "run"
    assert T.main(["--data", str(fer_csv), "--epochs", "1", *TINY, "--limit", "40", "--keep-epochs",
                   "--run-dir", str(run), "--out", str(tmp_path / "first")]) == 0
    seen = []
    monkeypatch.setattr(A, "recalibrate_batch_norm", lambda model, x: seen.append(x))
    _scores(monkeypatch, 0.5, 0.4)
    assert A.main(["--run-dir", str(run), "--data", str(fer_csv), "--out", str(tmp_path / "out"),
                   "--models", str(run / "epoch1.weights.h5")]) == 0
    train = fer.load_split(fer_csv, "train")
    T.limit_faces(train, 40, 3)  # TINY's seed
    assert sorted(x.tobytes() for x in seen[0]) == sorted(x.tobytes() for x in preprocess(train.x))
    record = json.loads((tmp_path / "out" / "fer_vgg16.train.json").read_text())
    assert record["average"]["batch_norm_faces"] == record["data"]["train_faces"] == 40


def test_average_and_export_name_a_missing_or_unfinished_run(tmp_path, fer_csv, capsys):
    average = ["--run-dir", str(tmp_path), "--data", str(fer_csv), "--models", "x.keras"]
    export = ["--run-dir", str(tmp_path), "--data", str(fer_csv)]
    assert A.main(average) == 2
    assert "no run there" in capsys.readouterr().err
    assert export_main(export) == 2
    assert "no run there" in capsys.readouterr().err
    (tmp_path / "state.json").write_text(json.dumps({"config": {"epochs": 3}, "epochs_done": 1}))
    assert A.main(average) == 2
    assert "stopped after epoch 1 of 3; average it once it has finished" in capsys.readouterr().err
    assert export_main(export) == 2
    assert "stopped after epoch 1 of 3; finish it with training.train --resume" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # named before minutes of loading the data
        export_main(["--model", str(tmp_path / "gone.keras"), "--data", str(tmp_path / "none.csv")])
    assert stop.value.code == 2 and f"--model {tmp_path / 'gone.keras'}: no such model file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        A.main(["--run-dir", str(tmp_path), "--data", str(fer_csv), "--models", "x.keras", "--batch-norm-faces", "-5"])
    assert stop.value.code == 2 and "--batch-norm-faces -5: must be at least 0" in capsys.readouterr().err


def test_average_export_and_evaluate_name_an_unreadable_state_or_config(tmp_path, fer_csv, capsys):
    """A truncated or hand-edited state.json or config.json: the file named, exit 2, no traceback."""
    average = ["--run-dir", str(tmp_path), "--data", str(fer_csv), "--models", "x.keras"]
    export = ["--run-dir", str(tmp_path), "--data", str(fer_csv)]
    state, config = tmp_path / "state.json", tmp_path / "config.json"
    state.write_text('{"config": {"epochs": 1}, "epochs_')
    config.write_text("{}")
    evaluate = ["--model", str(tmp_path), "--data", str(fer_csv)]
    for main, args in ((A.main, average), (export_main, export), (evaluate_main, evaluate)):
        assert main(args) == 2
        assert f"error: {state}: unreadable run state (" in capsys.readouterr().err
    state.write_text(json.dumps({"config": {"epochs": 1}}))
    assert export_main(export) == 2
    assert f"error: {state}: unreadable run state (no 'epochs_done')" in capsys.readouterr().err
    state.write_text(json.dumps({"config": {"epochs": 1}, "epochs_done": 1, "best_epoch": 1}))
    (tmp_path / "best.weights.h5").write_bytes(b"not read: the config is refused first")
    config.write_text("[]")
    assert A.main(average) == 2
    assert f"error: {config}: unreadable run config (a JSON list, not an object)" in capsys.readouterr().err
    config.write_text("{}")
    assert export_main(export) == 2
    assert f"error: {config}: unreadable run config (no 'width'" in capsys.readouterr().err


def test_a_cycle_no_epoch_of_which_beat_its_start_is_measured_against_the_start(
        kept_run, fer_csv, tmp_path, capsys, monkeypatch):
    init = tmp_path / "start.keras"
    shutil.copy(kept_run.parent / "first" / "fer_vgg16.keras", init)
    start = init.read_bytes()
    run, out = tmp_path / "cycle", tmp_path / "out"
    scores = iter([0.9, 0.5])  # the --init model scores 0.9, the cycle's one epoch 0.5
    real_report = T.report
    monkeypatch.setattr(T, "report", lambda y, p: dict(real_report(y, p), accuracy=next(scores)))
    cycle = ["--data", str(fer_csv), "--epochs", "1", *TINY, "--keep-epochs", "--init", str(init),
             "--run-dir", str(run), "--out", str(out)]
    assert T.main(cycle) == 0
    assert not (run / "best.weights.h5").exists()
    kernels = _scores(monkeypatch, 0.6, 0.7)
    assert A.main(["--run-dir", str(run), "--data", str(fer_csv), "--models", str(init),
                   str(run / "epoch1.weights.h5")]) == 0
    assert "the run's --init model 0.7000" in capsys.readouterr().out and not out.exists()
    np.testing.assert_array_equal(kernels[1], _kernel(init))  # the bar: the model the cycle started from
    assert export_main(["--run-dir", str(run), "--data", str(fer_csv)]) == 2  # nothing of its own to export
    assert "no best.weights.h5 to export" in capsys.readouterr().err
    args = ["--run-dir", str(run), "--data", str(fer_csv), "--models", str(run / "epoch1.weights.h5")]
    init.write_bytes(b"another model")  # the bar would be another model's
    assert A.main(args) == 2
    assert f"--init {init}: changed since {run} started" in capsys.readouterr().err
    init.unlink()
    assert A.main(args) == 2
    assert f"--init {init}: gone since {run} started" in capsys.readouterr().err

    # the start restored, the average beats it, and a stop comes before its export lands: a new run
    # in the folder is refused, and --resume exports the average, though no epoch beat the start
    init.write_bytes(start)
    _scores(monkeypatch, 0.8, 0.7)

    def stopped(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(A, "export_model", stopped)
    with pytest.raises(KeyboardInterrupt):
        A.main([*args, str(init)])
    assert T.main(cycle) == 2 and "did not complete: --resume" in capsys.readouterr().err
    assert T.main([*cycle, "--resume"]) == 0 and "exported the average" in capsys.readouterr().out
    assert [m["file"] for m in json.loads((out / "fer_vgg16.train.json").read_text())["average"]["models"]] == [
        "epoch1.weights.h5", "start.keras"]


def test_a_keras_model_averaged_in_must_be_the_cycles_start(kept_run, fer_csv, tmp_path, monkeypatch, capsys):
    """The start's file is where the cycle exports: passed after that export, the model would average
    its best epoch in twice, and the card would tell to copy the start there."""
    out, run = tmp_path / "models", tmp_path / "cycle"
    out.mkdir()
    shutil.copy(kept_run.parent / "first" / "fer_vgg16.keras", out / "fer_vgg16.keras")
    start = shutil.copy(out / "fer_vgg16.keras", tmp_path / "start.keras")  # kept before the export replaces it
    scores = iter([0.1, 0.5])  # the --init model scores 0.1, the cycle's epoch 0.5: it is exported over it
    real_report = T.report
    monkeypatch.setattr(T, "report", lambda y, p: dict(real_report(y, p), accuracy=next(scores)))
    assert T.main(["--data", str(fer_csv), "--epochs", "1", *TINY, "--keep-epochs", "--init",
                   str(out / "fer_vgg16.keras"), "--run-dir", str(run), "--out", str(out)]) == 0
    average = ["--run-dir", str(run), "--data", str(fer_csv), "--models", str(run / "epoch1.weights.h5")]
    capsys.readouterr()

    def refused(argv: list[str]) -> str:
        assert A.main(argv) == 2
        return capsys.readouterr().err

    why = refused([*average, str(out / "fer_vgg16.keras")])
    assert f"--models {out / 'fer_vgg16.keras'}: it is the model at {out / 'fer_vgg16.keras'}, where {run} " \
           "exported its best epoch" in why and "pass a copy of the cycle's --init" in why
    started = warm_start_lineage(str(start))["sha256"][:12]
    assert f"not the model {run} started from (fer_vgg16.keras, sha256 {started})" in refused(
        [*average, str(kept_run / "last.keras")])  # another lineage's model
    assert f"it is the model at {kept_run.parent / 'first' / 'fer_vgg16.keras'}" in refused(
        ["--run-dir", str(kept_run), "--data", str(fer_csv), "--models", str(start)])  # the start of this cycle
    assert f"{kept_run} trained from scratch" in refused(
        ["--run-dir", str(kept_run), "--data", str(fer_csv), "--models", str(kept_run / "last.keras")])
    assert f"--models {kept_run / 'epoch1.weights.h5'}: not in {run}: the card would repeat it" in refused(
        [*average, str(kept_run / "epoch1.weights.h5")])  # another run's epoch, named like one of this run's
    shutil.copy(start, out / "fer_vgg16.keras")  # as if the export had not landed: the start is still there
    _scores(monkeypatch, 0.5, 0.6)
    assert A.main([*average, str(start)]) == 0  # the copy made before the export: averaged


def test_an_average_never_replaces_a_model_that_scored_higher_unless_forced(kept_run, fer_csv, tmp_path, capsys,
                                                                          monkeypatch):
    """The average's export shares the run's guard: a better model in --out stays, the run keeps the average."""
    out, state_path = tmp_path / "models", kept_run / "state.json"
    state = state_path.read_text()
    out.mkdir()
    for name in ("fer_vgg16.keras", "fer_vgg16.train.json"):
        shutil.copy(kept_run.parent / "first" / name, out / name)
    record = json.loads((out / "fer_vgg16.train.json").read_text())
    record["publictest"]["accuracy"] = 0.99  # as a better model's record
    (out / "fer_vgg16.train.json").write_text(json.dumps(record))
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    args = ["--run-dir", str(kept_run), "--data", str(fer_csv), "--out", str(out),
            "--models", str(kept_run / "epoch1.weights.h5"), str(kept_run / "epoch2.weights.h5")]
    _scores(monkeypatch, 0.5, 0.4)  # the average beats the run's best epoch
    capsys.readouterr()
    assert A.main(args) == 2
    assert f"refused: {out / 'fer_vgg16.keras'} scored 99.00% on PublicTest" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert "average" in json.loads(state_path.read_text())  # kept, for `training.export --force`
    _scores(monkeypatch, 0.5, 0.4)
    assert A.main([*args, "--force"]) == 0
    assert json.loads((out / "fer_vgg16.train.json").read_text())["average"]["models"][0]["file"] == "epoch1.weights.h5"
    state_path.write_text(state)  # the run as the other tests know it


def test_evaluate_scores_a_run_folder_as_its_export_does(kept_run, fer_csv, tmp_path, capsys):
    """`training.evaluate --model RUN`: the run's chosen weights, read with its class scale, and its curves drawn."""
    assert export_main(["--run-dir", str(kept_run), "--data", str(fer_csv), "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "fer_vgg16.train.json").read_text())
    capsys.readouterr()
    assert evaluate_main(["--model", str(kept_run), "--data", str(fer_csv), "--json",
                          "--out-dir", str(tmp_path / "eval")]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == record["publictest"]["accuracy"]
    for png in ("run_curves.png", "run_confusion.png"):
        assert (tmp_path / "eval" / png).stat().st_size > 0, png

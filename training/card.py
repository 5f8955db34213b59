"""Write models/MODEL_CARD.md from an export's training record, so the card never disagrees
with the model beside it."""

from __future__ import annotations

import math
from pathlib import Path

from device.model import sha256_file
from device.preprocess import CLASSES, DISPLAY_NAMES, InputSpec
from training.run import XLA_ENGINE, write_whole

TARGET = 0.70
GOAL = 0.73
DEFAULT_DATA = "../shared/data/fer2013/fer2013-training-publictest.zip"  # the Makefile's DATA


def total_epochs(record: dict) -> int:
    """Epochs of a model and of every model its warm starts came from."""
    total, node = record["epochs"], record.get("warm_start_from")
    while node and "epochs" in node:
        total += node["epochs"]
        node = node.get("warm_start_from")
    return total


def train_command(cfg: dict, keep_epochs: bool = False, data: str | None = None, skip_bad: bool = False) -> str:
    """The `make train` line that repeats a run: the flags where its config left the defaults (a
    setting its config predates at the value the run had), --keep-epochs where a weight average of
    its epochs followed, and the data where it was not the Makefile's."""
    from training.train import DEFAULTS, PREDATED

    flags = [f"--{k.replace('_', '-')} {v}" for k, default in DEFAULTS.items()
             if (v := cfg.get(k, PREDATED.get(k))) is not None and v != default]
    if keep_epochs:
        flags.append("--keep-epochs")
    if cfg.get("precision", "auto") != "auto":
        flags.append(f"--precision {cfg['precision']}")
    if cfg.get("limit"):
        flags.append(f"--limit {cfg['limit']}")
    if skip_bad:
        flags.append("--skip-bad")
    flags += [f"--teacher {t['file']}" for t in cfg.get("teachers", [])]
    if cfg.get("init"):
        flags.insert(0, f"--init {cfg['init']}")
    return "make train" + (f" DATA={data}" if data else "") + (f' ARGS="{" ".join(flags)}"' if flags else "")


def _data(record: dict) -> tuple[str | None, bool]:
    """The DATA a record's run read where it was not the Makefile's (the record keeps its file name,
    not its folder), and whether bad files were skipped in it (--skip-bad)."""
    data = record.get("data") or {}
    source = data.get("source")
    skipped = bool(data.get("train_skipped") or data.get("publictest_skipped"))
    return (None if source in (None, Path(DEFAULT_DATA).name) else source), skipped


def _data_sentence(record: dict) -> str:
    data, _ = _data(record)
    if data is None:
        return f"With `DATA` at its default (`{DEFAULT_DATA}`)"
    return f"With `DATA` the path of `{data}` (sha256 {record['data']['sha256'][:16]}…), which this model learnt from"


def _distilled(cfg: dict) -> str:
    teachers = cfg.get("teachers")
    if not teachers:
        return ""
    names = ", ".join(f"`{t['file']}` (sha256 {t['sha256'][:16]}…)" for t in teachers)
    seen = ("each augmented face as the student saw it" if cfg.get("teacher_sees") == "batches"
            else "the un-augmented face and its mirror image")
    return (f"\nDistilled: each face's target mixed its one-hot label ({1 - cfg['distill']:.2g}) with the averaged "
            f"probabilities ({cfg['distill']:.2g}) of {len(teachers)} teacher model(s) on {seen}: {names}.")


def _average_command(avg: dict, train_faces: int, data: str) -> str:
    faces = avg["batch_norm_faces"]
    return (f"    .venv/bin/python -m training.average --run-dir RUN --data {data} "
            + (f"--batch-norm-faces {faces} " if faces < train_faces else "") + "--models "
            + " ".join(m["file"] if m["file"].endswith(".keras") else f"RUN/{m['file']}" for m in avg["models"]))


def _reproduce(record: dict) -> str:
    """One command per cycle, oldest first; each cycle starts from the model the one before exported,
    its weight average (`training.average`) when it had one."""
    chain, node = [(record["config"], record.get("average"))], record.get("warm_start_from")
    while node and "config" in node:
        chain.insert(0, (node["config"], node.get("average")))
        node = node.get("warm_start_from")
    if node:  # an older record without its config: the chain starts from that model
        chain.insert(0, (None, None))
    data, skip_bad = _data(record)
    where = data or DEFAULT_DATA
    lines = []
    for c, avg in chain:
        # a .keras file among the average's --models is the model that cycle started from, which its export replaces
        start = (c or {}).get("init") or "models/fer_vgg16.keras"
        lines += [f"    cp {start} {m['file']}" for m in (avg or {}).get("models", []) if m["file"].endswith(".keras")]
        lines.append(f"    # start from `{node['file']}` (sha256 {node['sha256'][:16]}…)" if c is None
                     else f"    {train_command(c, keep_epochs=bool(avg), data=data, skip_bad=skip_bad)}"
                     + ("   # *" if "epoch_offset" not in c else ""))
        if avg:
            lines.append(_average_command(avg, record["data"]["train_faces"], where))
    if any(avg for _, avg in chain):
        lines[:0] = ["    # RUN: that cycle's run folder, where --keep-epochs kept epochN.weights.h5;",
                     "    # cp: the model a cycle starts from, kept for its average (its export replaces it)"]
    if record.get("rescored"):  # exported before the code wrote a class_scale
        lines.append(f"    .venv/bin/python -m training.export --model models/fer_vgg16.keras --data {where}"
                     + (" --skip-bad" if skip_bad else ""))
    lines.append(f"    make evaluate MODEL=models/fer_vgg16.keras DATA={where}"
                 + (' ARGS="--skip-bad"' if skip_bad else ""))
    if any(c is not None and "epoch_offset" not in c for c, _ in chain):
        lines += ["", "\\* ran on code before commit bf6f45c, which moved the head's dropout after its batch norm",
                  "and made a warm start draw new epochs (before, each cycle replayed its predecessor's first",
                  "epochs): today's code repeats those commands, not their exact models."]
    return "\n".join(lines)


def _class_scale(record: dict) -> str:
    scale = record["input"].get("class_scale")
    if not scale:
        return ""
    factors = ", ".join(f"{n} {v:.3g}" for n, v in zip(DISPLAY_NAMES, scale, strict=True))
    power = record["config"]["class_weight_power"]
    return (f"\nThe class weights tilt the network's probabilities towards rare expressions; the device tilts them"
            f"\nback, multiplying the averaged probabilities by class_scale ~ count^{power} (mean 1) before"
            f"\nrenormalizing: {factors}.")


def _average_note(record: dict) -> str:
    avg = record.get("average")
    if not avg:
        return ""
    files = ", ".join(f"`{m['file']}`" for m in avg["models"])
    return (f"\n- Exported weights: the average of {len(avg['models'])} models ({files}), batch-norm"
            f"\n  statistics re-estimated on {avg['batch_norm_faces']} Training faces (`training.average`).")


def _cycles(n: int) -> str:
    return f"{n} earlier cycle{'s' if n != 1 else ''}"


def _imagenet(node: dict) -> bool:
    """Whether a lineage entry without epochs is ImageNet VGG16 weights (`--init` of a .h5), which have
    no FER-2013 epochs, rather than a .keras model whose training record was not found."""
    return not node["file"].endswith(".keras")


def _epochs_in_all(record: dict) -> str:
    """The lineage's epochs: exact where it starts from scratch or from ImageNet weights, a lower bound
    where it starts from a .keras model no record described."""
    node = record.get("warm_start_from")
    while node and "epochs" in node:
        node = node.get("warm_start_from")
    if node is None or _imagenet(node):
        return f"{total_epochs(record)} epochs in all."
    whose = ("its epochs" if node is record["warm_start_from"]
             else f"the epochs of `{node['file']}` (sha256 `{node['sha256'][:16]}…`) earlier in its lineage")
    return f"{whose} are unknown, so at least {total_epochs(record)} in all."


def _lineage_wall_time(record: dict) -> str:
    """What the card adds to this run's wall time: the lineage's total where its records carry every earlier
    cycle's time, else which are missing (each cycle's own record had its time; lineages before commit
    0a2977c did not copy it)."""
    earlier, node = [], record.get("warm_start_from")
    while node and ("epochs" in node or not _imagenet(node)):  # ImageNet weights (.h5): none here
        earlier.append(node.get("wall_seconds"))
        node = node.get("warm_start_from")
    if not earlier:
        return ""
    kept = [s for s in earlier if s is not None]
    total = (record["wall_seconds"] + sum(kept)) / 3600
    if len(kept) == len(earlier):
        return f"; {total:.2f} h for all {total_epochs(record)} epochs"
    with_kept = f"; {total:.2f} h with the {_cycles(len(kept))} whose wall time its lineage carries" if kept else ""
    return (f"{with_kept};\n  this model's lineage does not carry the wall time of the {'other ' if kept else ''}"
            f"{_cycles(len(earlier) - len(kept))} (training/CYCLES.md gives it)")


def _model_file(record: dict, folder: Path) -> str:
    """The model file's size and sha256; the size from the record, else from the file beside the card
    when it is that model (records before the size was kept)."""
    size = record.get("size_bytes")
    model = folder / record["model"]
    if size is None and model.is_file() and sha256_file(model) == record["sha256"]:
        size = model.stat().st_size
    where = f"{size:,} bytes ({size / 2**20:.1f} MiB, {size / 1e6:.1f} MB), " if size is not None else ""
    return f"- Model file: {where}sha256 `{record['sha256']}`."


def _skipped(data: dict) -> str:
    train, test = data.get("train_skipped", 0), data.get("publictest_skipped", 0)  # none kept before they were counted
    if not train and not test:
        return ""
    return f"; {train} Training and {test} PublicTest faces skipped as bad input (`--skip-bad`)"


def _held_back(record: dict) -> str:
    """Whether PrivateTest was kept out: not where the data's test/ was read whole (its file names say neither)."""
    if (record.get("data") or {}).get("publictest_mixed"):
        return ("The data's test/ names no file PublicTest_ or PrivateTest_, so it was read whole: the\n"
                "faces that chose the best epoch of every cycle, the weight averages and the test-time views,\n"
                "and guided the learning rates, could not be told apart from PrivateTest, and no PrivateTest\n"
                "was held back. This figure is optimistic, and no unbiased one remains in this data.")
    return ("PrivateTest is held back for independent evaluation and was never\n"
            "used here. PublicTest chose the best epoch of every cycle, the weight averages and the\n"
            "test-time views, and guided the learning rates, so this figure is optimistic; PrivateTest\n"
            "gives the unbiased one.")


def _verdict(acc: float, n: int) -> str:
    """Met or not, with the margin in faces: a target met by one face says so."""
    if acc >= GOAL:
        return f"This meets the {GOAL:.0%} goal."
    if acc >= TARGET:
        right, needed = round(acc * n), math.ceil(TARGET * n - 1e-9)
        return (f"This meets the {TARGET:.0%} target: {right:,} of {n:,} faces right, {needed:,} needed "
                f"(the goal is {GOAL:.0%}).")
    return (f"**This falls short of the {TARGET:.0%} target** by {100 * (TARGET - acc):.1f} points. "
            "See *Status* below.")


def write_card(record: dict, path: Path) -> Path:
    val = record["publictest"]
    single = record.get("publictest_single_view", val)
    views = InputSpec.from_dict(record["input"]).describe_views()
    export = record.get("export_commit", record["code_commit"])
    exported_by = f" (trained); exported and scored by `{export}`" if export != record["code_commit"] else ""
    cfg = record["config"]
    hours = record["wall_seconds"] / 3600
    data = record["data"]  # this run's faces (its --limit subset), not FER-2013's whole Training split
    rare = f"Disgusted has {data['train_class_counts'][CLASSES.index('disgust')]:,} of {data['train_faces']:,} faces"
    epoch_minutes = record["wall_seconds"] / 60 / record["epochs"]
    rows = "\n".join(
        f"| {DISPLAY_NAMES[i]} | {val['per_class'][c]['precision']:.3f} | {val['per_class'][c]['recall']:.3f} "
        f"| {val['per_class'][c]['f1']:.3f} | {val['per_class'][c]['support']} |"
        for i, c in enumerate(CLASSES)
    )
    a = cfg.get("mixup")
    mixup = f"; each face blended with another of its batch (mixup, weight ~ Beta({a:g}, {a:g}))" if a else ""
    hp = "\n".join(f"| {k} | {v} |" for k, v in cfg.items() if k != "teachers")  # named below the table
    ws = record.get("warm_start_from")
    lineage = (
        f"Warm-started from `{ws['file']}` (sha256 `{ws['sha256'][:16]}…`"
        + (f", {ws['epochs']} epochs, PublicTest {ws['publictest_accuracy']:.2%} one view" if "epochs" in ws
           else ", ImageNet VGG16 weights: its conv kernels, no FER-2013 epochs" if _imagenet(ws) else "")
        + f"); {_epochs_in_all(record)}"
        if ws else "Trained from scratch (no pretrained weights)."
    )
    text = f"""# Model card: `{record['model']}`

A VGG16 that classifies a 48x48 grayscale face into seven expressions
({', '.join(DISPLAY_NAMES)}). It is the float model that `make convert` quantizes for the
feedbackd appliance. This card is written by `training/export.py` from
`{Path(record['model']).stem}.train.json`; do not edit it by hand.

## Result on FER-2013 PublicTest ({val['n']} faces)

| metric | scored the device's way | the network alone, one view of each face |
| --- | --- | --- |
| accuracy | **{val['accuracy']:.2%}** | {single['accuracy']:.2%} |
| macro-F1 | {val['macro_f1']:.4f} | {single['macro_f1']:.4f} |

The float32 model is evaluated at export the way the device classifies a face: {views},
in one batch. Epochs were chosen, and the per-epoch
figures in the curves measured, on one view in {record['precision']} during training (they may
differ from the float32 figure in the second decimal). The per-class table and the confusion
matrix are this float32 model's, scored the device's way; the int8 file the device runs is
measured against it in `CONVERT_REPORT.md` (accuracy, agreement) when `make convert` makes it.

{_verdict(val['accuracy'], val['n'])} {_held_back(record)}

| class | precision | recall | F1 | support |
| --- | --- | --- | --- | --- |
{rows}

![confusion matrix](fer_vgg16_confusion.png)

![training curves](fer_vgg16_curves.png)

## Training

- Architecture: {record['architecture']}, {record['parameters']:,} parameters, batch norm, dropout.
- {lineage}
- This run: {record['epochs']} epochs, {f"best epoch {record['best_epoch']}" if record['best_epoch']
                                        else "no epoch alone beat its start"}, wall time {hours:.2f} h on
  {record['cpu']} ({record['precision']}, {record.get('engine', XLA_ENGINE)}){
      _lineage_wall_time(record)}.{_average_note(record)}
- Data: `{record['data']['source']}`, sha256 `{record['data']['sha256']}`,
  {record['data']['train_faces']} Training faces, {record['data']['publictest_faces']} PublicTest faces{
      _skipped(record['data'])}.
- Code: commit `{record['code_commit']}`{exported_by}; {', '.join(f"{k} {v}" for k, v in record['versions'].items())}.
{_model_file(record, path.parent)}
- Input: {record['input']['size']}x{record['input']['size']} {record['input']['color_mode']},
  `(pixel * {record['input']['scale']:.6g} - {record['input']['mean']}) / {record['input']['std']}`,
  {views}.

| hyperparameter | value |
| --- | --- |
{hp}

SGD with Nesterov momentum, linear warm-up then cosine decay, decoupled weight decay (not on
batch-norm or bias), label smoothing, class weights ~ count^-power against FER-2013's imbalance
({rare}), augmentation by random flip, rotation, scale, shift,
brightness and contrast{f", and random erasing of one rectangle in {cfg['erase']:.0%} of the faces"
                         if cfg.get("erase") else ""}{mixup}.{_distilled(cfg)}{_class_scale(record)}

## Reproduce

{_data_sentence(record)}, one
`make train` per cycle, each exporting to `models/` what the next one starts from:

{_reproduce(record)}

## Status

The target is PublicTest accuracy >= {TARGET:.0%} ({GOAL:.0%} the goal). On this run's
CPU a VGG16 epoch (its PublicTest evaluation included) took {epoch_minutes:.0f} minutes in this run
({record['precision']}), so
training proceeds in warm-restart cycles of a few epochs, each one a finished run whose model
is committed; the next cycle warm-starts from it (`--init models/fer_vgg16.keras`).

## Intended use and limits

For the feedbackd appliance: one customer looking at a checkout camera, the face cropped
square and tight as in FER-2013. FER-2013 faces come from web searches; expressions are
posed or exaggerated more often than at a checkout, labels are noisy (human accuracy on
FER-2013 is about 65 %), and age, skin tone and lighting are not balanced. Treat a reading
as a rough mood signal for aggregate feedback, never as a judgement about one person.
"""
    write_whole(path, lambda tmp: tmp.write_text(text))  # a kill never leaves half a card beside a whole record
    return path

"""The two pictures an engineer looks at: the normalized confusion matrix and training curves."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from device.preprocess import DISPLAY_NAMES
from training.run import write_whole


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Whole or not at all: a kill never leaves a cut-short picture beside a whole record."""
    write_whole(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".")))  # the name no longer says


def confusion_png(cm: np.ndarray, path: Path, title: str) -> Path:
    """Rows normalized to recall, so each cell reads 'share of true class X predicted as Y'."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(DISPLAY_NAMES)), DISPLAY_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(len(DISPLAY_NAMES)), DISPLAY_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(norm)):
        for j in range(len(norm)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def curves_png(history_csv: Path, path: Path) -> Path:
    """Loss, training and PublicTest accuracy and learning rate per epoch from history.csv."""
    plt = _pyplot()
    with open(history_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    epoch = [int(r["epoch"]) for r in rows]
    col = lambda k: [float(r[k]) for r in rows]  # noqa: E731
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100)
    a1.plot(epoch, col("loss"), marker="o")
    a1.set_title("training loss")
    a2.plot(epoch, col("accuracy"), marker="o", label="training (augmented)")
    a2.plot(epoch, col("val_accuracy"), marker="o", label="PublicTest")
    a2.plot(epoch, col("val_macro_f1"), marker="o", label="PublicTest macro-F1")
    a2.set_title("accuracy")
    a2.legend()
    a3.plot(epoch, col("lr"), marker="o")
    a3.set_title("learning rate (end of epoch)")
    for a in (a1, a2, a3):
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path

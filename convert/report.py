"""models/CONVERT_REPORT.md: every variant against the float model, measured on PublicTest."""

from __future__ import annotations

import platform
from pathlib import Path

TARGETS = (
    "int8 file at most 30 % of float32's size; int8 single-thread latency per face at most 40 % of "
    "float32's; int8 PublicTest accuracy within 1.0 point of the float model (0.5 is the goal)."
)


def write_report(path: Path, args, source: dict, float_report: dict, rows: list[dict], n: int,
                 calibration_faces: int) -> Path:
    ref = next(r for r in rows if r["variant"] == "float32")
    lines = [
        "# Conversion report",
        "",
        f"Source: `{source['file']}` (sha256 `{source['sha256'][:16]}…`), float PublicTest accuracy "
        f"**{float_report['accuracy']:.2%}**, macro-F1 {float_report['macro_f1']:.4f} ({n} faces).",
        f"Each variant was evaluated through the device's LiteRT classifier; latency is the median of "
        f"{args.latency_runs} single-face invokes on one thread ({platform.machine()}, this workstation).",
        "",
        "| variant | file | accuracy | Δ vs float (points) | macro-F1 | agreement with float | size (MB) "
        "| size vs float32 | latency (ms/face) | latency vs float32 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['file']} | {r['accuracy']:.2%} | "
            f"{100 * (r['accuracy'] - float_report['accuracy']):+.2f} | {r['macro_f1']:.4f} | {r['agreement']:.2%} | "
            f"{r['size'] / 1e6:.2f} | {r['size'] / ref['size']:.0%} | {r['latency_ms']:.2f} | "
            f"{r['latency_ms'] / ref['latency_ms']:.0%} |"
        )
    lines += [
        "",
        f"Targets: {TARGETS}",
        f"int8 calibration: {calibration_faces} class-stratified FER-2013 Training faces, seed {args.seed}.",
        "",
        "Reproduce: `make convert` (or `python -m convert --data DATA`).",
        "",
    ]
    path.write_text("\n".join(lines))
    return path

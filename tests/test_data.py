"""FER-2013 loaders: every form, every bad-input case, the cache."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from conftest import FER_CSV_CODES, jpeg_bytes, png_bytes, synthetic_faces, write_csv, write_folder, write_zip

from device.preprocess import CLASSES
from training import data as fer
from training.data import DataError, load_split


@pytest.fixture(scope="module")
def faces():
    return synthetic_faces(3, seed=5)


def test_csv_splits(fer_csv):
    train = load_split(fer_csv, "train")
    test = load_split(fer_csv, "test")
    private = load_split(fer_csv, "private")
    assert (len(train), len(test), len(private)) == (84, 28, 7)
    x, y = synthetic_faces(12, seed=1)
    np.testing.assert_array_equal(train.x, x)
    np.testing.assert_array_equal(train.y, y)
    assert train.x.dtype == np.uint8 and train.x.shape[1:] == (48, 48)
    assert fer.eval_split_name(fer_csv) == "test"


def test_the_challenge_csv_codes_name_its_own_class_order(tmp_path, faces):
    """fer2013.csv numbers 4 Sad, 5 Surprise, 6 Neutral: read by index into the alphabetical CLASSES
    they would train sad faces as neutral. The same faces as a CSV and as class folders agree."""
    x, _ = faces
    codes = np.arange(7)
    rows = [f"{c},{' '.join(map(str, face.ravel()))},Training" for c, face in zip(codes, x, strict=False)]
    path = tmp_path / "fer2013.csv"
    path.write_text("\n".join(["emotion,pixels,Usage", *rows]) + "\n")
    read = load_split(path, "train")
    assert [CLASSES[i] for i in read.y] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    # the folders are named from Kaggle's codes, not from what the CSV loader made of them
    truth = np.array([CLASSES.index(FER_CSV_CODES[c]) for c in codes])
    folder = load_split(write_folder(tmp_path / "bare", x[:len(codes)], truth), "all")

    def by_face(split) -> dict[bytes, int]:
        return dict(zip((f.tobytes() for f in split.x), split.y.tolist(), strict=True))

    assert by_face(read) == by_face(folder)


def test_a_csv_saved_again_by_a_spreadsheet_reads_the_same(fer_csv, tmp_path):
    """Excel and pandas' utf-8-sig write a byte-order mark before the header."""
    resaved = tmp_path / "fer2013.csv"
    resaved.write_bytes(b"\xef\xbb\xbf" + fer_csv.read_bytes().replace(b"\n", b"\r\n"))
    np.testing.assert_array_equal(load_split(resaved, "train").x, load_split(fer_csv, "train").x)


def test_a_jpeg_layout_zip_as_the_real_one_is_read(tmp_path, faces):
    """The development zip holds JPEGs, stored: train/<class>/Training_*.jpg, test/<class>/PublicTest_*.jpg."""
    splits = {"train": faces, "test": synthetic_faces(3, seed=6)}  # other faces in test/: each split read is its own
    members = {f"{split}/{CLASSES[label]}/{prefix}_{i:05d}.jpg": jpeg_bytes(face)
               for split, prefix in (("train", "Training"), ("test", "PublicTest"))
               for i, (face, label) in enumerate(zip(*splits[split], strict=True))}
    zipped = write_zip(tmp_path / "fer2013.zip", members)
    for split, other in (("train", "test"), ("test", "train")):
        x, y = splits[split]
        read = load_split(zipped, split)
        assert read.x.shape == (len(y), 48, 48) and read.x.dtype == np.uint8
        np.testing.assert_array_equal(read.y, y)  # read in name order: class folders, then files
        assert np.abs(read.x.astype(int) - x).mean() < 4  # each face its own, up to JPEG's loss
        assert np.abs(read.x.astype(int) - splits[other][0]).mean() > 20  # not the other split's faces
    assert fer.detect_form(zipped) == "layout" and fer.eval_split_name(zipped) == "test"


def test_layout_folder_zip_and_class_folders_agree(tmp_path, faces):
    x, y = faces
    tx, ty = synthetic_faces(3, seed=6)  # other faces in test/: each split read is its own
    layout = tmp_path / "layout"
    write_folder(layout, x, y, "train")
    write_folder(layout, tx, ty, "test")
    members = {f"fer2013/{p.relative_to(layout).as_posix()}": p.read_bytes()
               for p in layout.rglob("*.png")}
    zipped = write_zip(tmp_path / "fer.zip", members)  # with one wrapping top folder
    bare = write_folder(tmp_path / "bare", x, y)

    from_dir = load_split(layout, "train")
    from_zip = load_split(zipped, "train")
    from_bare = load_split(bare, "all")
    for s in (from_zip, from_bare):
        np.testing.assert_array_equal(s.x, from_dir.x)
        np.testing.assert_array_equal(s.y, from_dir.y)
    assert sorted(from_dir.y.tolist()) == sorted(y.tolist())
    assert sorted(f.tobytes() for f in from_dir.x) == sorted(f.tobytes() for f in x)  # the pixels as written
    for source in (layout, zipped):
        test = load_split(source, "test")
        np.testing.assert_array_equal(test.x, tx)  # the test faces, in name order: class folders, then files
        np.testing.assert_array_equal(test.y, ty)
        assert not np.array_equal(test.x, from_dir.x)
    assert fer.eval_split_name(bare) == "all"
    with pytest.raises(DataError, match="only the split 'all'"):
        load_split(bare, "train")


def test_split_folders_spelt_with_capitals_are_a_layout(tmp_path, faces):
    """Unpacked on Windows or re-zipped by hand, the archive may say Train/ and Test/."""
    splits = {"train": faces, "test": synthetic_faces(3, seed=6)}  # other faces in test/: each split read is its own
    lower = write_folder(tmp_path / "lower", *splits["train"], "train")
    write_folder(lower, *splits["test"], "test")
    members = {p.relative_to(lower).as_posix().capitalize(): p.read_bytes() for p in lower.rglob("*.png")}
    for source in (lower, write_zip(tmp_path / "caps.zip", members),
                   write_zip(tmp_path / "wrapped.zip", {f"FER2013/{k}": v for k, v in members.items()})):
        assert fer.detect_form(source) == "layout" and fer.eval_split_name(source) == "test"
        for split, other in (("train", "test"), ("test", "train")):
            read = load_split(source, split)
            np.testing.assert_array_equal(read.x, splits[split][0])  # in name order: class folders, then files
            np.testing.assert_array_equal(read.y, splits[split][1])
            assert not np.array_equal(read.x, splits[other][0])


def test_a_split_in_two_spellings_is_refused_not_half_read(tmp_path, faces):
    """A zip merged by hand may hold train/ and Train/: reading one would drop the other's faces."""
    x, y = faces
    good = png_bytes(x[0])
    both = write_zip(tmp_path / "both.zip", {"train/happy/a.png": good, "Train/sad/b.png": good,
                                             "test/happy/c.png": good})
    with pytest.raises(DataError, match=re.escape(f"{both}: the train split is in both Train/ and train/")):
        load_split(both, "train")
    assert len(load_split(both, "test")) == 1


def test_a_folder_beside_train_and_test_is_refused_not_dropped(tmp_path, faces):
    """A train/ val/ test/ repackaging (val PublicTest, test PrivateTest) read as train/ and test/
    would choose epochs on PrivateTest: the folder the layout has no place for is named."""
    x, _ = faces
    good = png_bytes(x[0])
    members = {f"fer2013/{s}/happy/a.png": good for s in ("train", "test")}
    three = write_zip(tmp_path / "three.zip", {**members, "fer2013/Val/sad/b.png": good})
    for split in ("train", "test"):
        with pytest.raises(DataError, match=re.escape(f"{three}: Val/ beside train/ and test/")):
            load_split(three, split)
    readme = write_zip(tmp_path / "readme.zip", {**members, "fer2013/README.txt": b"notes"})  # a file, not a split
    assert len(load_split(readme, "train")) == len(load_split(readme, "test")) == 1


def test_a_wrapped_layout_with_a_readme_beside_its_folder_is_unwrapped(tmp_path, faces):
    """fer/train/, fer/test/ and a README.txt at the top: not taken for bare class folders."""
    good = png_bytes(faces[0][0])
    members = {"fer/train/happy/a.png": good, "fer/test/sad/b.png": good, "fer/test/sad/c.png": good}
    zipped = write_zip(tmp_path / "fer.zip", {**members, "README.txt": b"notes"})
    assert fer.detect_form(zipped) == "layout"
    assert (len(load_split(zipped, "train")), len(load_split(zipped, "test"))) == (1, 2)
    bare = write_zip(tmp_path / "bare.zip", {"fer/happy/a.png": good, "README.txt": b"notes"})
    assert load_split(bare, "all").y.tolist() == [3]


def test_a_readme_beside_bare_class_folders_is_no_data_but_a_file_too_deep_is_named(tmp_path, faces):
    """angry/, happy/ and a README.txt: the README is left out, as beside train/ and test/ or a wrapping folder."""
    good = png_bytes(faces[0][0])
    members = {"angry/a.png": good, "happy/b.png": good, "README.txt": b"notes"}
    folder = tmp_path / "set"
    for name, data in members.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    for source in (folder, write_zip(tmp_path / "set.zip", members)):
        assert fer.detect_form(source) == "classes"
        for skip_bad in (False, True):
            read = load_split(source, "all", skip_bad=skip_bad, use_cache=False)
            assert read.y.tolist() == [0, 3] and read.skipped == []
    deep = write_zip(tmp_path / "deep.zip", {**members, "happy/more/c.png": good})
    with pytest.raises(DataError, match=re.escape(f"{deep}:happy/more/c.png: expected <class>/<image>")):
        load_split(deep, "all")


def test_kaggle_test_folder_is_split_by_file_name(tmp_path, faces):
    """Kaggle's test/ holds PublicTest_* and PrivateTest_* faces: 'test' is PublicTest only."""
    x, y = faces
    good = png_bytes(x[0])
    members = {"train/happy/Training_1.png": good, "test/happy/PublicTest_1.png": good,
               "test/sad/PublicTest_2.png": good, "test/angry/PrivateTest_3.png": good}
    zipped = write_zip(tmp_path / "kaggle.zip", members)
    assert load_split(zipped, "test").y.tolist() == [3, 5]
    assert load_split(zipped, "private").y.tolist() == [0]
    plain = write_zip(tmp_path / "plain.zip", {"train/happy/a.png": good, "test/sad/b.png": good})
    assert load_split(plain, "test").y.tolist() == [5]
    with pytest.raises(DataError, match="no PrivateTest_"):
        load_split(plain, "private")
    mixed = write_zip(tmp_path / "mixed.zip", {**members, "test/fear/img_4.png": good})  # in no split
    with pytest.raises(DataError, match="mixed.zip:test/fear/img_4.png: neither PublicTest_ nor PrivateTest_"):
        load_split(mixed, "test")
    kept = load_split(mixed, "test", skip_bad=True)
    assert kept.y.tolist() == [3, 5] and "img_4.png" in kept.skipped[0]


def test_a_test_folder_without_name_prefixes_is_read_whole_with_a_warning(tmp_path, faces, capsys):
    """A re-packaging that names its files im0.png may hold PublicTest and PrivateTest together in
    test/: epochs would be chosen on the figure reported, and that is said."""
    good = png_bytes(faces[0][0])
    plain = write_zip(tmp_path / "plain.zip", {"fer/train/happy/im0.png": good, "fer/test/sad/im0.png": good,
                                               "fer/test/happy/im1.png": good})
    assert len(load_split(plain, "test", use_cache=False)) == 2
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and f"{plain}:fer/test/ is read whole as the split 'test' (2 faces)" in err
    assert "PublicTest and PrivateTest together" in err and "no PrivateTest is held back" in err
    load_split(plain, "train", use_cache=False)
    tagged = write_zip(tmp_path / "tagged.zip", {"train/happy/Training_1.png": good, "test/sad/PublicTest_1.png": good})
    load_split(tagged, "test", use_cache=False)
    assert "warning" not in capsys.readouterr().err


def test_a_test_folder_without_name_prefixes_is_flagged_and_warned_of_from_the_cache_too(tmp_path, faces, capsys):
    """A cached load decodes nothing: the warning, and the flag the card reads, must not depend on it."""
    good = png_bytes(faces[0][0])
    plain = write_zip(tmp_path / "untagged.zip", {"train/happy/im0.png": good, "test/sad/im0.png": good,
                                                  "test/angry/im1.png": good, "test/fear/im2.png": good})
    for _ in range(2):  # decoded, then from the cache
        assert load_split(plain, "test").mixed
        assert f"warning: {plain}:test/ is read whole as the split 'test' (3 faces)" in capsys.readouterr().err
    assert not load_split(plain, "train").mixed
    tagged = write_zip(tmp_path / "tagged.zip", {"train/happy/Training_1.png": good, "test/sad/PublicTest_1.png": good})
    for _ in range(2):
        assert not load_split(tagged, "test").mixed
    assert "warning" not in capsys.readouterr().err


def test_corrupt_zip_member_names_the_file_and_can_be_skipped(tmp_path, faces):
    x, _ = faces
    bad = png_bytes(x[1])
    path = write_zip(tmp_path / "set.zip", {"angry/good.png": png_bytes(x[0]), "happy/bad.png": bad})
    data = bytearray(path.read_bytes())
    data[data.find(bad) + len(bad) // 2] ^= 0xFF  # the CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="set.zip:happy/bad.png: cannot read"):
        load_split(path, "all")
    assert len(load_split(path, "all", skip_bad=True).skipped) == 1


@pytest.mark.parametrize("offset, value, why", [(10, 9, "not supported"), (8, 1, "encrypted")])
def test_a_zip_member_zipfile_cannot_read_is_named(tmp_path, faces, offset, value, why):
    """A Deflate64 or encrypted member (the central directory's method or flag bits) names the file."""
    x, _ = faces
    path = write_zip(tmp_path / "set.zip", {"angry/a.png": png_bytes(x[0]), "happy/b.png": png_bytes(x[1])})
    data = bytearray(path.read_bytes())
    entry = data.rfind(b"PK\x01\x02")  # the last member's central-directory entry: happy/b.png
    data[entry + offset] = value
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"set.zip:happy/b.png: cannot read .*{why}"):
        load_split(path, "all")


def test_display_name_folders_are_accepted(tmp_path, faces):
    x, y = faces
    root = tmp_path / "set"
    (root / "Disgusted").mkdir(parents=True)
    (root / "Disgusted" / "a.png").write_bytes(png_bytes(x[0]))
    assert load_split(root, "all").y.tolist() == [1]


def _png16() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.full((48, 48), 40000, np.uint16)).save(out, "PNG")  # convert("L") would clip it to white
    return out.getvalue()


def _huge_png_header(png: bytes) -> bytes:
    """A PNG whose header claims 30000x30000 pixels (a damaged or hostile file)."""
    import struct
    import zlib

    ihdr = png[12:29]  # chunk type and data
    ihdr = ihdr[:4] + struct.pack(">II", 30000, 30000) + ihdr[12:]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("joy/a.png", "ok", "unknown class folder 'joy'"),
        ("happy/a.png", b"not an image", "cannot decode image"),
        ("happy/a.png", "big", "image is 64x64, expected 48x48"),
        ("happy/notes.txt", "ok", "not an image file"),
        ("happy/a.png", "16-bit", "I;16 image; FER faces are 8-bit grayscale"),
        ("happy/a.png", "bomb", "cannot decode image (DecompressionBombError"),
    ],
)
def test_bad_images_name_the_file(tmp_path, faces, name, data, message):
    good = png_bytes(faces[0][0])
    payload = {"ok": good, "big": png_bytes(np.zeros((64, 64), np.uint8)), "16-bit": _png16(),
               "bomb": _huge_png_header(good)}.get(data, data)
    members = {"angry/good.png": good, name: payload}
    zipped = write_zip(tmp_path / "set.zip", members)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        load_split(zipped, "all")
    assert f"set.zip:{name}" in str(err.value)
    skipped = load_split(zipped, "all", skip_bad=True)
    assert len(skipped) == 1 and len(skipped.skipped) == 1 and message.split("'")[0] in skipped.skipped[0]


@pytest.mark.parametrize(
    "row, message",
    [
        ("3,1 2 3,Training", "must be 2304 values"),
        ("3," + " ".join(["99999999999999999999"] * 2304) + ",Training", "must be integers"),
        ("9," + " ".join(["1"] * 2304) + ",Training", "emotion 9 out of range"),
        ("x," + " ".join(["1"] * 2304) + ",Training", "must be integers"),
        ("3," + " ".join(["1"] * 2304) + ",Validation", "unknown Usage 'Validation'"),
        ("3," + " ".join(["300"] * 2304) + ",Training", "in 0..255"),
        ("3", "expected 3 fields"),
    ],
)
def test_malformed_csv_row_names_the_line(tmp_path, row, message):
    x, y = synthetic_faces(1)
    path = write_csv(tmp_path / "fer.csv", {"Training": (x, y)})
    path.write_text(path.read_text() + row + "\n")
    with pytest.raises(DataError, match=message) as err:
        load_split(path, "train")
    assert f"fer.csv:{len(y) + 2}" in str(err.value)
    assert len(load_split(path, "train", skip_bad=True).skipped) == 1


def test_a_csv_row_of_no_split_is_reported_by_every_load_but_counted_once_by_a_run(tmp_path):
    """A row whose Usage names no split (or that has none) is skipped by every load, and evaluate --skip-bad
    (a 'test' or 'private' load alone) reports it; a run's pair of loads counts it once, in 'train': its record
    says one bad row, not one Training and one PublicTest face. Either kind of load may be served from the cache
    the other wrote."""
    x, y = synthetic_faces(1)
    path = write_csv(tmp_path / "fer.csv", {"Training": (x, y), "PublicTest": (x, y), "PrivateTest": (x, y)})
    path.write_text(path.read_text() + "3," + " ".join(["1"] * 2304) + ",Validation\n3\n")
    other = tmp_path / "other.csv"  # another checksum: the run's loads decode it first
    other.write_text(path.read_text() + "3\n")
    for _ in range(2):  # decoded, then from the cache
        read = {split: load_split(path, split, skip_bad=True) for split in ("train", "test", "private")}
        assert {split: (len(s), len(s.skipped)) for split, s in read.items()} == {
            "train": (7, 2), "test": (7, 2), "private": (7, 2)}
        assert "fer.csv:23: unknown Usage 'Validation'" in read["test"].skipped[0]
        assert "fer.csv:24: expected 3 fields, got 1" in read["test"].skipped[1]
        train, test = fer.train_and_test(path, skip_bad=True)
        assert (len(train.skipped), len(test.skipped)) == (2, 0)
        train, test = fer.train_and_test(other, skip_bad=True)
        assert (len(train.skipped), len(test.skipped)) == (3, 0)
        assert len(load_split(other, "test", skip_bad=True).skipped) == 3
    with pytest.raises(DataError, match="fer.csv:23: unknown Usage 'Validation'"):
        load_split(path, "test")  # without --skip-bad every load stops on it


@pytest.mark.parametrize(("bad", "message"), [
    (b'3,"' + b"1 " * 70_000 + b"\n", "fer.csv:4: unreadable CSV"),  # an unclosed quote swallows the rest
    (b"3,1 2 \xff 3,Training\n", "fer.csv:4: unreadable CSV (a byte that is not UTF-8)"),
    (b'3,"1 2 3,Training\n', "fer.csv:4: a quoted field runs on to line"),  # closed by a later row's quote
])
def test_a_csv_that_cannot_be_parsed_names_the_line_even_with_skip_bad(tmp_path, bad, message):
    """Rows of real length (about 9 KB, past the text reader's 8 KB chunks), the bad one third."""
    x, y = synthetic_faces(6)
    path = write_csv(tmp_path / "fer.csv", {"Training": (x, y)})
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(3, bad)
    lines.insert(5, b'3,"' + lines[5])  # a stray quote two rows on: closes the broken one's
    path.write_bytes(b"".join(lines))
    for skip_bad in (False, True):
        with pytest.raises(DataError, match=re.escape(message)):
            load_split(path, "train", skip_bad=skip_bad, use_cache=False)


def test_a_damaged_zip_archive_is_named(tmp_path, faces):
    path = write_zip(tmp_path / "set.zip", {"angry/a.png": png_bytes(faces[0][0])})
    data = bytearray(path.read_bytes())
    central = data.rfind(b"PK\x01\x02")  # the central directory, which the end record still points to
    data[central + 2 : central + 4] = b"\x00\x00"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="set.zip: damaged zip archive"):
        load_split(path, "all", use_cache=False)


def test_a_truncated_zip_archive_is_named_as_one(tmp_path, faces):
    """A download cut short has no end record, so zipfile does not know it for a zip at all."""
    whole = write_zip(tmp_path / "whole.zip", {"angry/a.png": png_bytes(faces[0][0])}).read_bytes()
    cut = whole[: whole.rfind(b"PK\x01\x02")]  # no central directory, no end record
    for name in ("fer2013.zip", "fer2013.part"):  # by its name, or by its first bytes
        (path := tmp_path / name).write_bytes(cut)
        with pytest.raises(DataError, match=re.escape(f"{path}: damaged or truncated zip archive")):
            load_split(path, "all", use_cache=False)
    (other := tmp_path / "notes.txt").write_text("not data")
    with pytest.raises(DataError, match=re.escape(f"{other}: not a CSV file, a folder or a zip archive")):
        load_split(other, "all", use_cache=False)


def test_a_folder_holding_the_zip_or_csv_beside_a_readme_names_the_file_to_give(tmp_path, faces):
    """--data the download folder, not the archive in it: not read as class folders that are not there."""
    x, y = faces
    folder = tmp_path / "download"
    folder.mkdir()
    (folder / "README.md").write_text("FER-2013")
    write_zip(folder / "fer2013.zip", {f"train/{CLASSES[k]}/a.png": png_bytes(x[k]) for k in range(7)})
    with pytest.raises(DataError, match=re.escape(f"{folder}: holds fer2013.zip and no images: give that zip "
                                                  f"itself (--data {folder / 'fer2013.zip'})")):
        load_split(folder, "train")
    (folder / "fer2013.zip").unlink()
    write_csv(folder / "fer2013.csv", {"Training": (x, y)})
    with pytest.raises(DataError, match=re.escape(f"{folder}: holds fer2013.csv and no images: give that CSV")):
        load_split(folder, "train")


def test_wrong_header_and_empty_split(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,image\n")
    with pytest.raises(DataError, match="bad.csv:1: expected the header"):
        load_split(bad, "train")
    x, y = synthetic_faces(1)
    only_train = write_csv(tmp_path / "train_only.csv", {"Training": (x, y)})
    with pytest.raises(DataError, match="split 'test' holds no faces"):
        load_split(only_train, "test")
    with pytest.raises(DataError, match="no such file"):
        load_split(tmp_path / "missing.zip", "train")


def test_a_file_that_cannot_be_read_is_named_even_with_skip_bad(tmp_path, monkeypatch):
    """A failing card's I/O error: not a traceback that names nothing (here a read that always fails).
    Not bad data that --skip-bad counts: skipped, the run would train on another set than the one named."""
    x, y = synthetic_faces(1)
    layout = write_folder(tmp_path / "fer", x, y, "train")
    write_folder(layout, x, y, "test")
    (bad := layout / "train" / "angry" / "bad.png").symlink_to("/proc/self/mem")
    for skip_bad in (False, True):
        with pytest.raises(DataError, match=re.escape(f"{bad}: cannot read")):
            load_split(layout, "train", skip_bad=skip_bad)
    # the checksum reads every file first: without it, the loader's own read must stop on the file too
    monkeypatch.setattr(fer, "source_checksum", lambda path: "0" * 64)
    for skip_bad in (False, True):
        with pytest.raises(DataError, match=re.escape(f"{bad}: cannot read")):
            load_split(layout, "train", skip_bad=skip_bad, use_cache=False)


def test_a_zip_that_wraps_the_challenge_csv_is_named(tmp_path):
    x, y = synthetic_faces(1)
    csv = write_csv(tmp_path / "fer2013.csv", {"Training": (x, y)})
    archive = write_zip(tmp_path / "archive.zip", {"fer2013/fer2013.csv": csv.read_bytes()})
    with pytest.raises(DataError, match=re.escape(f"{archive}: holds fer2013.csv and no images: give that CSV")):
        load_split(archive, "train")
    bare = write_folder(tmp_path / "bare", x, y)
    (bare / "labels.csv").write_text("file,label\n")  # a stray CSV beside faces: a file to skip, as before
    assert len(load_split(bare, "all", skip_bad=True)) == 7


def test_a_zip_holding_a_name_twice_is_refused(tmp_path):
    """An archive appended to: reading by name would take only the last copy, and lose a face."""
    import warnings
    import zipfile

    x, y = synthetic_faces(1)
    archive = write_zip(tmp_path / "fer.zip", {f"train/{CLASSES[k]}/0.png": png_bytes(x[k]) for k in range(7)})
    with warnings.catch_warnings(), zipfile.ZipFile(archive, "a") as z:
        warnings.simplefilter("ignore")  # zipfile's own "Duplicate name" warning
        z.writestr("train/happy/0.png", png_bytes(x[0]))
        for _ in range(2):  # macOS's resource forks, left out anyway: not a reason to refuse
            z.writestr("__MACOSX/train/._0.png", b"")
    with pytest.raises(DataError, match=re.escape(f"{archive}: train/happy/0.png is in the archive more than once")):
        load_split(archive, "train")


def test_a_class_folder_linked_in_from_elsewhere_is_read(tmp_path):
    """A layout assembled with links (train/angry -> a folder elsewhere) is read whole, and a link
    loop is not followed round."""
    x, y = synthetic_faces(2)
    write_folder(tmp_path / "full", x, y, "train")
    write_folder(tmp_path / "full", x, y, "test")
    linked = tmp_path / "linked"
    shutil.copytree(tmp_path / "full", linked)
    shutil.move(linked / "train" / "angry", tmp_path / "angry")
    (linked / "train" / "angry").symlink_to(tmp_path / "angry")
    (linked / "train" / "happy" / "loop").symlink_to(linked / "train")
    split = load_split(linked, "train")
    assert np.bincount(split.y, minlength=7).tolist() == [2] * 7
    np.testing.assert_array_equal(np.sort(split.x, axis=0), np.sort(load_split(tmp_path / "full", "train").x, axis=0))


@pytest.mark.parametrize("what", ["class folder", "face"])
def test_a_broken_link_is_named_not_dropped(tmp_path, what):
    """os.walk lists a link whose class folder or face has gone as a file: dropped, it would lose up
    to a class unsaid. An editor's lock link (.#name, to nothing) is no data."""
    x, y = synthetic_faces(1)
    layout = write_folder(tmp_path / "fer", x, y, "train")
    write_folder(layout, x, y, "test")
    (layout / "train" / "happy" / ".#notes.txt").symlink_to("user@host.1234:1700000000")
    assert len(load_split(layout, "train", use_cache=False)) == 7
    if what == "class folder":
        shutil.rmtree(layout / "train" / "angry")
        (link := layout / "train" / "angry").symlink_to(tmp_path / "moved" / "angry")
    else:
        (link := layout / "train" / "happy" / "extra.png").symlink_to(tmp_path / "moved.png")
    for skip_bad in (False, True):
        with pytest.raises(DataError, match=re.escape(f"{link}: broken link (nothing at {tmp_path / 'moved'}")):
            load_split(layout, "train", skip_bad=skip_bad)


def test_a_hidden_file_beside_the_faces_leaves_a_folder_source_the_same(tmp_path, faces):
    """Finder's .DS_Store is not a face: a run trained on the folder must still resume on it."""
    x, y = faces
    bare = write_folder(tmp_path / "bare", x, y)
    before = fer.source_checksum(bare)
    (bare / CLASSES[0] / ".DS_Store").write_bytes(b"\0\1")
    assert fer.source_checksum(bare) == before
    (bare / CLASSES[0] / "extra.png").write_bytes(png_bytes(x[0]))
    assert fer.source_checksum(bare) != before  # a face added is a change


def test_cache_is_keyed_by_checksum(tmp_path, monkeypatch):
    x, y = synthetic_faces(2)
    path = write_csv(tmp_path / "fer.csv", {"Training": (x, y)})
    first = load_split(path, "train")
    monkeypatch.setattr(fer, "_read_csv", lambda *a: pytest.fail("decoded again despite the cache"))
    np.testing.assert_array_equal(load_split(path, "train").x, first.x)
    monkeypatch.undo()
    write_csv(path, {"Training": (x[:7], y[:7])})  # changed source: new checksum, re-read
    assert len(load_split(path, "train")) == 7
    entries = list((fer.cache_dir() / "data").glob("*.npz"))
    assert entries  # the cache is where it is damaged: else the loop below damages nothing
    for damage in (b"cut short by a power cut", b""):  # or renamed in before its bytes reached the disk
        for entry in entries:
            entry.write_bytes(damage)
        assert len(load_split(path, "train")) == 7  # a damaged cache entry is read again, not an error


def test_a_cache_that_cannot_be_written_costs_speed_not_the_data(tmp_path, monkeypatch, capsys):
    x, y = synthetic_faces(2)
    path = write_csv(tmp_path / "fer.csv", {"Training": (x, y)})
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FEEDBACKD_CACHE", str(tmp_path / "file" / "cache"))  # a full or read-only disk alike
    assert len(load_split(path, "train")) == 14
    assert "warning: cannot cache the decoded faces in " in capsys.readouterr().err

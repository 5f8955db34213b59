"""One TOML file configures the daemon. Every key is optional with a documented default;
an unknown key, a wrong type or an out-of-range value is an error that names the key
and the file. `config.example.toml` lists every key with its default."""

from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.detector import MAX_BOX_AGE_S, install_root

ROOT = install_root()
DEFAULT_PATH = Path("/etc/feedbackd/config.toml")
LCDS = ("st7789", "st7735", "ili9341")  # luma.lcd's SPI colour panels: 240x240, 160x128, 320x240
OLED_SIZES = ("128x64", "128x32")  # what luma's ssd1306 and sh1106 drive at 128 wide
HOLD_MAX_S = 3.0  # a customer out of sight this long has gone: the longest button.face_window_s
DEFAULT_RATINGS = {"Happy": 5, "Surprised": 4, "Neutral": 3, "Sad": 2, "Fearful": 2, "Disgusted": 1, "Angry": 1}


class ConfigError(ValueError):
    """A bad setting; the message names the key and the file."""


@dataclass(frozen=True)
class Key:
    default: Any
    kind: type | tuple[type, ...]
    check: Any = None  # (lo, hi) range, a tuple of choices, or None
    doc: str = ""


def _choices(*names: str) -> tuple[str, ...]:
    return names


SCHEMA: dict[str, dict[str, Key]] = {
    "device": {
        "id": Key("", str, None, "device id stored with each entry (empty: the host name)"),
    },
    "camera": {
        "source": Key("camera", str, _choices("camera", "auto", "picamera2", "v4l2", "video", "images", "demo"),
                      "camera: picamera2, else the first V4L2 webcam (retried until one answers); "
                      "auto: the same, else the demo photos (for a desk)"),
        "device": Key("0", str, None, "V4L2 camera index or path, in quotes: \"0\" or \"/dev/video0\" (source v4l2)"),
        "path": Key("", str, None, "video file, image folder or glob (source video/images)"),
        "rotate": Key(0, int, (0, 3), "each frame turned this many quarter turns clockwise, as display.rotate "
                      "counts them: 2 for a camera mounted upside down, 1 or 3 on its side (the face detector "
                      "finds upright faces only)"),
        "width": Key(640, int, (64, 4096), "capture width (a low-resolution stream is enough)"),
        "height": Key(480, int, (48, 4096), "capture height"),
        "fps": Key(15.0, (int, float), (0.5, 120),
                   "frames per second the loop reads, asked of the camera (a video plays at the file's own "
                   "rate; each image shows 1/fps s); a frame within button.face_window_s"),
        "reconnect_max_s": Key(30.0, (int, float), (0.5, 3600), "longest wait between reconnect tries"),
    },
    "detector": {
        "dir": Key("models/face", str, None, "folder with the res10 files (relative: to the feedbackd folder)"),
        "confidence": Key(0.5, (int, float), (0.05, 0.99), "face detection threshold"),
        "winograd": Key(False, bool, None, "OpenCV's Winograd convolution: detection about 1.6x faster, "
                        "27 MB more memory"),
        "every_n_frames": Key(3, int, (1, 30), "detect on every Nth frame; the frames between reuse the last box "
                              f"(for at most {MAX_BOX_AGE_S} s)"),
        "crop_scale": Key(1.0, (int, float), (0.5, 2.0), "square crop side / largest box side"),
        "crop_shift_y": Key(0.05, (int, float), (-0.5, 0.5), "crop centre moved down by this share of the side"),
    },
    "model": {
        "path": Key("models/fer_vgg16_int8.tflite", str, None, "emotion model (relative: to the feedbackd folder)"),
        "num_threads": Key(2, int, (1, 16), "LiteRT threads"),
    },
    "smoothing": {
        "window_s": Key(1.0, (int, float), (0.0, 10.0), "probabilities are averaged over this long"),
        "reset_after_s": Key(2.0, (int, float), (0.1, 10.0), "forget the reading when no face this long"),
        "min_confidence": Key(0.4, (int, float), (0.0, 1.0), "below this the screen says 'Not sure'"),
    },
    "rating": {
        "max": Key(5, int, (1, 100), "top of the rating scale: drawn as stars where they fit (up to 10; 5 on an "
                   "upright 128x64 OLED), else written as n/max"),
        "map": Key(DEFAULT_RATINGS, dict, None, "emotion display name -> rating"),
    },
    "display": {
        "driver": Key("ssd1306", str, _choices("ssd1306", "sh1106", *LCDS, "terminal", "png", "none"),
                      "screen driver"),
        "size": Key("128x64", str, _choices(*OLED_SIZES),
                    "OLED (and png) size: 128x32 for a 0.91-inch strip; an LCD's is its driver's"),
        "i2c_port": Key(1, int, (0, 10), "OLED I2C bus"),
        "i2c_address": Key(0x3C, int, (0x03, 0x77), "OLED I2C address, as `i2cdetect -y 1` shows it (3c: 0x3C)"),
        "spi_port": Key(0, int, (0, 10), "LCD SPI bus"),
        "spi_device": Key(0, int, (0, 10), "LCD SPI chip select"),
        "gpio_dc": Key(24, int, (0, 27), "LCD data/command pin (BCM)"),
        "gpio_rst": Key(25, int, (-1, 27), "LCD reset pin (BCM); -1: RST not wired to the Pi (tied high)"),
        "gpio_backlight": Key(18, int, (-1, 27), "LCD backlight pin (BCM); -1: BL not wired to the Pi (to 3V3: "
                              "always lit)"),
        "swap_red_blue": Key(False, bool, None, "st7735/ili9341 LCD: swap red and blue (set it if red shows blue)"),
        "rotate": Key(0, int, (0, 3), "screen rotation in quarter turns, to match how the panel is mounted "
                      "(png: the screen as it then reads, 64x128 for 1 or 3)"),
        "png_path": Key("build/screen.png", str, None, "file the png driver writes"),
        "thank_you_s": Key(2.0, (int, float), (0.5, 30.0),
                           "how long the thank-you screen stays (through button.cooldown_s, if that is longer)"),
    },
    "button": {
        "kind": Key("gpio", str, _choices("gpio", "keyboard", "none"), "submit button"),
        "pin": Key(17, int, (0, 27), "button pin (BCM), wired to GND"),
        "pull_up": Key(True, bool, None, "internal pull-up (button to GND)"),
        "bounce_s": Key(0.05, (int, float), (0.0, 0.1),
                         "debounce time: a press shorter than this is not seen (lgpio reports a level only "
                         "once it has held this long)"),
        "cooldown_s": Key(3.0, (int, float), (0.0, 60.0),
                          "one entry per press: presses this soon are ignored, and any while the thank-you shows"),
        "face_window_s": Key(1.5, (int, float), (0.1, HOLD_MAX_S),
                             f"a press counts if a face was seen this recently (at most {HOLD_MAX_S:g} s and "
                             "smoothing.reset_after_s)"),
        "led_pin": Key(0, int, (0, 27), "LED pin (BCM) that blinks on a stored entry; 0: none"),
    },
    "storage": {
        "path": Key("/var/lib/feedbackd/feedback.db", str, None, "SQLite feedback log (an absolute path)"),
        "retry_s": Key(5.0, (int, float), (0.1, 600), "retry a failed write this often"),
    },
    "daemon": {
        "stats_interval_s": Key(60.0, (int, float), (1, 86400), "how often the stats line is logged"),
    },
}


def _check(where: str, key: Key, value: Any) -> Any:
    if key.kind is float or (isinstance(key.kind, tuple) and float in key.kind):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        value = float(value)
    elif not isinstance(value, key.kind) or (key.kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {key.kind.__name__}, got {type(value).__name__} {value!r}")
    if isinstance(key.check, tuple) and len(key.check) == 2 and all(isinstance(c, int | float) for c in key.check):
        lo, hi = key.check
        if where.endswith(".rotate") and value in (90, 180, 270):  # the unit of rpicam's --rotation
            raise ConfigError(f"{where}: {value} reads as degrees, but the key counts quarter turns clockwise: "
                              f"write {value // 90} for {value} degrees")
        if not lo <= value <= hi:
            if where.endswith(".i2c_address"):  # boards print it in hex, some in its 8-bit form
                eight_bit = value <= 0xFF and lo <= value >> 1 <= hi
                raise ConfigError(f"{where}: 0x{value:02X} is out of range [0x{lo:02X}, 0x{hi:02X}]"
                                  + (f" (0x{value:02X} is the 8-bit form of 0x{value >> 1:02X})" if eight_bit else ""))
            raise ConfigError(f"{where}: {value!r} is out of range [{lo}, {hi}]")
    elif isinstance(key.check, tuple) and value not in key.check:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(key.check)}")
    return value


def _owners(key: str) -> list[str]:
    """The sections that have `key`: where a key misplaced in the file belongs."""
    from device.preprocess import DISPLAY_NAMES

    return [s for s, keys in SCHEMA.items() if key in keys] + (["rating.map"] if key in DISPLAY_NAMES else [])


def _under(owners: list[str]) -> str:
    """Every section a misplaced key may belong under: `path` could be the camera's, the model's or the log's."""
    return "[" + "] or [".join(owners) + "]"


def _check_ratings(source: str, ratings: dict, top: int) -> dict[str, float]:
    """The defaults are a 1-5 scale: any other rating.max needs a rating for every emotion."""
    from device.preprocess import DISPLAY_NAMES

    where = f"{source}: rating.map"
    missing = [n for n in DISPLAY_NAMES if n not in ratings]
    if top != SCHEMA["rating"]["max"].default and missing:
        raise ConfigError(f"{where}: rating.max is {top}, so every emotion needs a rating; "
                          f"missing {', '.join(missing)}")
    out = dict(DEFAULT_RATINGS)
    for name, value in ratings.items():
        if name not in DISPLAY_NAMES and (owners := _owners(name)):  # appended below [rating.map]
            raise ConfigError(f"{source}: {name} belongs under {_under(owners)}, not [rating.map]")
        if name not in DISPLAY_NAMES:
            raise ConfigError(f"{where}.{name}: unknown emotion (expected one of {', '.join(DISPLAY_NAMES)})")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= top:
            raise ConfigError(f"{where}.{name}: rating must be a number in [0, {top}], got {value!r}")
        out[name] = value
    return out


class Config(dict):
    """Validated settings as config["section"]["key"]; `source` names the file they came from."""

    source: str = "(defaults)"
    flags: frozenset = frozenset()  # the 'section.key's given on the command line

    def where(self, *keys: str) -> str:
        """Where a setting made of `keys` came from: a check across keys names the file only for
        values the file gave (`feedbackd run --source images` with no --camera-path is the flags')."""
        return "command line" if self.flags & set(keys) else self.source

    @property
    def device_id(self) -> str:
        return self["device"]["id"] or socket.gethostname()


def read_toml(path: str | Path) -> dict:
    """The parsed file; -sig because Windows Notepad starts a UTF-8 file with a byte-order mark, which TOML refuses."""
    return tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None, state: str | None = None) -> Config:
    """Defaults, then the TOML file (if given and present), then 'section.key' overrides; read as the
    unit reads it where `state` (else systemd's $STATE_DIRECTORY) names the unit's folder."""
    cfg = Config({s: {k: key.default for k, key in keys.items()} for s, keys in SCHEMA.items()})
    data: dict = {}
    if path is not None:
        cfg.source = str(path)
        try:
            data = read_toml(path)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except UnicodeDecodeError as e:  # UTF-16 ("Unicode") or a code page ("ANSI"): TOML is UTF-8 only
            raise ConfigError(f"{path}: cannot read config: not UTF-8 text (byte 0x{e.object[e.start]:02X} at "
                              f"offset {e.start}); save it as UTF-8") from None
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from None
    cfg.flags = frozenset(overrides or {})
    merged: dict[str, dict] = {}
    for section, values in data.items():
        owners = _owners(section)
        if not isinstance(values, dict) and (owners or section not in SCHEMA):  # above the first [header]
            home = f"it belongs under {_under(owners)}" if owners else f"sections: {', '.join(SCHEMA)}"
            raise ConfigError(f"{cfg.source}: {section} is a key outside any [section]; {home}")
        if section not in SCHEMA:
            raise ConfigError(f"{cfg.source}: unknown section [{section}] (known: {', '.join(SCHEMA)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{cfg.source}: {section} must be a [section] table")
        merged[section] = dict(values)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        merged.setdefault(section, {})[key] = value
    for section, values in merged.items():
        for key, value in values.items():
            where = f"{cfg.where(f'{section}.{key}')}: {section}.{key}"  # a flag wins over the file
            if key not in SCHEMA[section]:
                if owners := _owners(key):  # a key appended at the end lands in the last section
                    raise ConfigError(f"{cfg.source}: {key} belongs under {_under(owners)}, not [{section}]")
                raise ConfigError(f"{cfg.source}: unknown key {section}.{key} "
                                  f"(known: {', '.join(SCHEMA[section])})")
            cfg[section][key] = _check(where, SCHEMA[section][key], value)
    if "camera.source" in cfg.flags and "camera.path" not in cfg.flags and cfg["camera"]["source"] not in (
            "video", "images"):  # the file's clip or photos went with the file's source, which the flag replaced
        cfg["camera"]["path"] = ""
    if not Path(merged.get("storage", {}).get("path", "/")).is_absolute() and "storage.path" not in (overrides or {}):
        raise ConfigError(f"{cfg.source}: storage.path: must be an absolute path, or the daemon, "
                          "check and export would each find the log in a different folder")
    for section, key in (("detector", "dir"), ("model", "path")):  # shipped files live beside the code
        cfg[section][key] = str(ROOT / cfg[section][key])
    # The folder they were given in, or the unit's (its WorkingDirectory, also when make install checks
    # the config from /): lgpio moves the whole process into $LG_WD when the button opens (make run and
    # the feedbackd command set a folder of the user's own), before the log, the images or the PNG are
    # opened. A URL stays one.
    state = state or os.environ.get("STATE_DIRECTORY")  # set by systemd: under feedbackd.service and its sandbox
    base = state.split(":")[0] if state else None  # None: the current folder, asked only for a relative path
    png = cfg["display"]["png_path"]
    if cfg["display"]["driver"] == "png" and (not Path(png).name or png.endswith(("/", "/.", "/.."))):
        raise ConfigError(f"{cfg.where('display.png_path', 'display.driver')}: display.png_path: {png!r} is not "
                          "a file name; name the PNG to write, such as screen.png")
    for section, key in (("camera", "path"), ("display", "png_path")):  # before they are made absolute below
        if cfg[section][key].startswith("~"):  # a shell's shorthand: the service, another user, has no such folder
            raise ConfigError(f"{cfg.where(f'{section}.{key}')}: {section}.{key}: {cfg[section][key]!r}: ~ is not "
                              "expanded here (the service runs as its own user); write the full path")
    for section, key in (("storage", "path"), ("camera", "path"), ("display", "png_path")):
        value = cfg[section][key]
        if not value or "://" in value or (key == "png_path" and cfg["display"]["driver"] != "png"):
            continue  # the default png_path is relative, and used by the png driver only
        if not os.path.isabs(value):
            base = base or current_folder(f"{cfg.where(f'{section}.{key}')}: {section}.{key}: {value!r}")
            value = os.path.join(base, value)
        cfg[section][key] = os.path.normpath(value)
    png = cfg["display"]["png_path"]
    if cfg["display"]["driver"] == "png" and os.path.isdir(png):  # else every frame fails "Is a directory"
        raise ConfigError(f"{cfg.where('display.png_path', 'display.driver')}: display.png_path: {png} is a folder; "
                          f"name the PNG to write, such as {os.path.join(png, 'screen.png')}")
    source = cfg["camera"]["source"]
    if source in ("video", "images") and not cfg["camera"]["path"]:
        raise ConfigError(f"{cfg.where('camera.path', 'camera.source')}: camera.path: required when camera.source "
                          f"is {source!r} (a video file, image folder or glob)")
    if source not in ("video", "images") and cfg["camera"]["path"]:  # the kiosk would use a camera instead
        raise ConfigError(f"{cfg.where('camera.path', 'camera.source')}: camera.path is used only with camera.source "
                          f"\"video\" or \"images\", not {source!r}; set the source, or remove the path")
    # OpenCV takes anything but an index for a file name: " 2" or "video2" (relative) would never open
    device = cfg["camera"]["device"] = cfg["camera"]["device"].strip()
    absolute = device.startswith("/") and not device.endswith("/")  # /dev/video2, a udev link
    if source == "v4l2" and not (re.fullmatch(r"[0-9]+", device) or absolute):
        n = m[0] if (m := re.search(r"[0-9]+$", device)) else "0"
        raise ConfigError(f"{cfg.where('camera.device')}: camera.device: {device!r} is not a V4L2 camera index or "
                          f"/dev path; write its index, \"{n}\", or its path, \"/dev/video{n}\"")
    # another camera than the default, with a source that picks its own: the kiosk would use the wrong one
    if source in ("camera", "auto", "picamera2") and cfg["camera"]["device"] not in ("0", "/dev/video0"):
        raise ConfigError(f"{cfg.where('camera.device', 'camera.source')}: camera.device: "
                          f"{cfg['camera']['device']!r} is used only with camera.source "
                          f"\"v4l2\", not {source!r} (which finds a camera itself); set source = \"v4l2\"")
    window, reset = cfg["button"]["face_window_s"], cfg["smoothing"]["reset_after_s"]
    if window > reset:  # the reading is forgotten after reset_after_s, so a longer window cannot count
        raise ConfigError(f"{cfg.where('button.face_window_s', 'smoothing.reset_after_s')}: button.face_window_s: "
                          f"{window} is longer than "
                          f"smoothing.reset_after_s ({reset}); raise that too or shorten the window")
    fps = cfg["camera"]["fps"]
    if 1 / fps >= window:  # a press between two frames would find no face seen recently enough
        raise ConfigError(f"{cfg.where('camera.fps', 'button.face_window_s')}: camera.fps: {fps} gives a frame "
                          f"every {1 / fps:g} s, not within "
                          f"button.face_window_s ({window}); raise the frame rate or lengthen the window")
    if cfg["device"]["id"][:1] in ("=", "+", "-", "@", "\t", "\r"):  # the export's CSV field would be a formula
        raise ConfigError(f"{cfg.source}: device.id: {cfg['device']['id']!r}: a spreadsheet would read it as a "
                          "formula; start it with a letter or digit")
    _check_display(cfg)
    _check_lcd_pins(cfg)
    _check_pins(cfg)
    given = merged.get("rating", {}).get("map", {})  # only what the file set: the defaults are not a choice
    cfg["rating"]["map"] = _check_ratings(cfg.source, given, cfg["rating"]["max"])
    if state:
        _check_sandbox(cfg, Path(base))
    return cfg


def current_folder(what: str) -> str:
    """The folder a relative path was given in: one deleted under the shell (a checkout removed) has none."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        raise ConfigError(f"{what}: cannot resolve relative paths: the current folder no longer exists; "
                          "cd elsewhere") from None


def _check_sandbox(cfg: Config, state: Path) -> None:
    """Paths the hardened unit cannot reach: ProtectHome=yes hides /home, /root and /run/user, and
    ProtectSystem=strict leaves only the StateDirectory (also the WorkingDirectory: a relative path lands
    there) and a private /tmp writable. Checked at every start, make install's check included, since a
    config edited later would otherwise fail with a misleading "Read-only file system" or "not found"."""
    read = [("model.path", cfg["model"]["path"]), ("detector.dir", cfg["detector"]["dir"])]
    url = cfg["camera"]["path"]
    if cfg["camera"]["source"] == "video" and "://" in url and not url.lower().startswith("file://"):
        # the unit has no network and only AF_UNIX sockets: the stream would fail, blamed on the camera
        raise ConfigError(f"{cfg.source}: camera.path: {url}: the service cannot reach a network stream "
                          f"(PrivateNetwork=yes): use a camera on the Pi, or a video file under {state}")
    if cfg["camera"]["source"] in ("video", "images") and "://" not in url:
        read.append(("camera.path", cfg["camera"]["path"]))  # a folder there would look empty to the service
    for key, path in read:
        home = state if key == "camera.path" else ROOT / "models"  # a clip or photos: the service's folder
        real = Path(os.path.realpath(path))  # a link into /home is as hidden as the file
        if any(real.is_relative_to(hidden) for hidden in ("/home", "/root", "/run/user")):
            raise ConfigError(f"{cfg.source}: {key}: {path} is hidden from the service (ProtectHome=yes): "
                              f"put it under {home}")
        # the code's own folder aside: a checkout under /tmp (a test, CI) is not where the unit runs from
        if any(real.is_relative_to(t) for t in ("/tmp", "/var/tmp")) and not real.is_relative_to(ROOT.resolve()):
            raise ConfigError(f"{cfg.source}: {key}: {path} is in a /tmp the service sees empty (PrivateTmp=yes): "
                              f"put it under {home}")
    written = [("storage.path", cfg["storage"]["path"])]
    if cfg["display"]["driver"] == "png":
        written.append(("display.png_path", cfg["display"]["png_path"]))
    for key, path in written:  # a PNG screen may go to the private /tmp; the log would be emptied at each stop
        dirs = (state,) if key == "storage.path" else (state, Path("/tmp"), Path("/var/tmp"))
        if not any(Path(path).is_relative_to(d) for d in dirs):  # made absolute, against the state folder
            raise ConfigError(f"{cfg.source}: {key}: {path}: the service can write only under {state} "
                              "(ProtectSystem=strict; its private /tmp is emptied at each stop): put it there")


I2C_PINS = {0: {0: "SDA", 1: "SCL"}, 1: {2: "SDA", 3: "SCL"}}  # BCM numbers of each I2C bus
# MISO left out: no LCD reads, and HATs such as Pimoroni's wire DC to it (RPi.GPIO takes it back)
SPI_PINS = {0: {10: "MOSI", 11: "SCLK"}, 1: {20: "MOSI", 21: "SCLK"}}
SPI_CE = {0: (8, 7), 1: (18, 17, 16)}
# make install turns SPI on (for the LCDs) whatever the display, and the kernel's spi0 then holds both
# chip selects: a button there would fail "GPIO busy" at start-up.
SPI0_HELD = {pin: f"SPI0's CE{i} pin" for i, pin in enumerate(SPI_CE[0])}


def _spi1_held(display: dict) -> dict[int, str]:
    """SPI1's chip selects the kernel holds for an LCD there: spi_device d needs dtoverlay=spi1-Ncs with
    N = d + 1 (as the README and the driver's error say), which claims CE0 to CEd, not the panel's alone."""
    if display["driver"] not in LCDS or display["spi_port"] != 1:
        return {}
    overlay = f"spi1-{display['spi_device'] + 1}cs"
    return {pin: f"SPI1's CE{i} pin, which the kernel holds under dtoverlay={overlay}"
            for i, pin in enumerate(SPI_CE[1][:display["spi_device"] + 1])}


def _display_pins(display: dict) -> dict[int, str]:
    """The BCM pins the display driver holds, each with what it is."""
    driver = display["driver"]
    if driver in ("ssd1306", "sh1106"):
        return {pin: f"{driver}'s I2C {name} pin" for pin, name in I2C_PINS.get(display["i2c_port"], {}).items()}
    if driver not in LCDS:
        return {}
    pins = _spi_pins(display)
    for key in LCD_PINS:
        if display[key] != UNWIRED:
            pins[display[key]] = f"display.{key}"
    return pins


LCD_PINS = ("gpio_dc", "gpio_rst", "gpio_backlight")
UNWIRED = -1  # an LCD pin wired to 3V3 or the board's own circuit: the Pi holds no pin for it


def wired(pin: int) -> int | None:
    """An LCD pin setting as luma takes it: None where it is not wired to the Pi."""
    return None if pin == UNWIRED else pin


def _spi_pins(display: dict) -> dict[int, str]:
    """The BCM pins of an LCD's SPI bus and chip select."""
    driver, port = display["driver"], display["spi_port"]
    pins = {pin: f"{driver}'s SPI {name} pin" for pin, name in SPI_PINS.get(port, {}).items()}
    ce = SPI_CE.get(port, ())
    if display["spi_device"] < len(ce):
        pins[ce[display["spi_device"]]] = f"{driver}'s SPI chip-select pin"
    return pins


def _check_lcd_pins(cfg: Config) -> None:
    """An LCD's own pins clear of its SPI bus, of the chip selects the kernel holds and of each other: RPi.GPIO
    takes a pin from the SPI controller without a word (a blank panel), lgpio fails "GPIO busy"."""
    display = cfg["display"]
    if display["driver"] not in LCDS:
        return
    ce = SPI_CE.get(display["spi_port"], ())  # spi2 and up (a CM4's): their chip selects vary by overlay
    if ce and display["spi_device"] >= len(ce):  # else luma's "SPI device not found", blamed on the wiring
        raise ConfigError(f"{cfg.where('display.spi_device', 'display.spi_port')}: display.spi_device: "
                          f"{display['spi_device']} is not a chip select of SPI{display['spi_port']}, "
                          f"which has {len(ce)} (0 to {len(ce) - 1})")
    taken = {**SPI0_HELD, **_spi1_held(display), **_spi_pins(display)}
    for i, key in enumerate(LCD_PINS):
        pin = display[key]
        if pin == UNWIRED:
            continue
        if pin in taken:
            where = cfg.where(f"display.{key}", "display.driver", "display.spi_port", "display.spi_device")
            raise ConfigError(f"{where}: display.{key}: BCM {pin} is {taken[pin]}; choose another pin")
        if twin := next((k for k in LCD_PINS[:i] if display[k] == pin), None):
            raise ConfigError(f"{cfg.where(f'display.{key}', f'display.{twin}')}: display.{key}: BCM {pin} is "
                              f"display.{twin} too")


def _check_display(cfg: Config) -> None:
    """A size the panel cannot take is refused here, not as a garbled screen on the Pi."""
    display = cfg["display"]
    if display["swap_red_blue"] and display["driver"] == "st7789":  # luma's st7789 has one colour order
        raise ConfigError(f"{cfg.where('display.swap_red_blue', 'display.driver')}: display.swap_red_blue: the "
                          "st7789 driver has a fixed colour order and would ignore it; remove the key")
    if display["size"] == SCHEMA["display"]["size"].default:
        return
    if display["driver"] in LCDS:
        raise ConfigError(f"{cfg.where('display.size', 'display.driver')}: display.size: {display['size']!r} is "
                          "for an OLED or the png driver; "
                          f"a {display['driver']} LCD's size is its driver's: remove the key")
    if display["rotate"] % 2:  # a 32-pixel-wide screen: no word of the layout fits across it
        raise ConfigError(f"{cfg.where('display.rotate', 'display.size')}: display.rotate: {display['rotate']} "
                          f"turns a {display['size']} panel "
                          "on its side, too narrow for the words; use 0 or 2")


def _check_pins(cfg: Config) -> None:
    """A button or LED on a pin the display uses would take it from the display (the Pi switches a
    claimed pin to plain GPIO): every frame would fail to draw, long after start-up."""
    button = cfg["button"]
    if button["kind"] != "gpio":
        return
    taken, held = _display_pins(cfg["display"]), _spi1_held(cfg["display"])
    for key in ("pin", "led_pin"):
        pin = button[key]
        if key == "led_pin" and pin == 0:
            continue
        if pin in taken:
            raise ConfigError(f"{cfg.where(f'button.{key}', 'button.kind', 'display.driver')}: button.{key}: "
                              f"BCM {pin} is {taken[pin]} "
                              f"(display.driver = {cfg['display']['driver']!r}); choose another pin")
        if pin in SPI0_HELD:
            raise ConfigError(f"{cfg.where(f'button.{key}')}: button.{key}: BCM {pin} is {SPI0_HELD[pin]}, "
                              "which the kernel "
                              "holds while SPI is on (sudo make install turns it on); choose another pin")
        if pin in held:  # the LCD's spi1 overlay claims chip selects below its own too
            where = cfg.where(f"button.{key}", "button.kind", "display.driver", "display.spi_port",
                              "display.spi_device")
            raise ConfigError(f"{where}: button.{key}: BCM {pin} is {held[pin]} (display.spi_device = "
                              f"{cfg['display']['spi_device']}); choose another pin")
    if button["led_pin"] and button["pin"] == button["led_pin"]:
        raise ConfigError(f"{cfg.where('button.led_pin', 'button.pin')}: button.led_pin: BCM {button['pin']} is "
                          "button.pin too")


def example_toml() -> str:
    """Every key with its default and what it does: the shipped config.example.toml."""
    lines = ["# feedbackd configuration: every key is optional; the values shown are the defaults.", ""]
    for section, keys in SCHEMA.items():
        lines.append(f"[{section}]")
        for name, key in keys.items():
            if name == "map":
                continue
            value = key.default
            shown = ("true" if value else "false") if isinstance(value, bool) else (
                f'"{value}"' if isinstance(value, str) else f"0x{value:02X}" if name == "i2c_address" else repr(value))
            lines.append(f"# {key.doc}")
            lines.append(f"# {name} = {shown}")
        lines.append("")
    lines.append("[rating.map]")
    lines.append("# 1 to 5 stars by default. The paper's 0-10 scale: set max to 10 in [rating] and map")
    lines.append("# Happy 10, Surprised 8, Neutral 5, Sad 3, Fearful 3, Disgusted 1, Angry 0 (see README).")
    lines += [f"# {k} = {v}" for k, v in DEFAULT_RATINGS.items()]
    return "\n".join(lines) + "\n"

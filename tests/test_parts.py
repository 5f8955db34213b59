"""The daemon's smaller parts, each against its real library: the steady reading, the sd_notify
protocol on a real socket, the newest-frame grabber, every screen on both display sizes, the
PNG and terminal drivers, the LED on a gpiozero mock pin and the keyboard button."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, moved_clock
from PIL import Image

from device.button import ButtonError, GpioButton, KeyboardButton, open_button
from device.config import DEFAULT_RATINGS, ConfigError, load_config
from device.detector import Box, choose_face
from device.display import Display, PngDisplay, Screen, TerminalDisplay, open_display, render
from device.notify import Notifier
from device.preprocess import DISPLAY_NAMES
from device.reading import Smoother
from device.sources import LatestFrame, SourceError

HAPPY = np.eye(7)[DISPLAY_NAMES.index("Happy")]
SAD = np.eye(7)[DISPLAY_NAMES.index("Sad")]


def test_reading_is_averaged_over_the_window():
    s = Smoother(DISPLAY_NAMES, DEFAULT_RATINGS, window_s=1.0, reset_after_s=2.0, min_confidence=0.4)
    assert s.reading(0.0) is None
    for t in (0.0, 0.2, 0.4):
        s.add(t, HAPPY)
    s.add(0.6, SAD)  # one odd frame does not flip the label
    r = s.reading(0.6)
    assert r.emotion == "Happy" and r.confidence == pytest.approx(0.75) and r.rating == 5 and r.sure
    for t in (1.0, 1.2, 1.4, 1.6):  # a second later the old frames have left the window
        s.add(t, SAD)
    r = s.reading(1.6)
    assert r.emotion == "Sad" and r.rating == 2 and r.probabilities["Happy"] == 0


def test_reading_is_forgotten_when_the_face_leaves():
    s = Smoother(DISPLAY_NAMES, DEFAULT_RATINGS, window_s=5.0, reset_after_s=2.0)
    s.add(0.0, SAD)
    assert s.reading(1.9) is not None and s.face_seen_within(1.9, 1.95)
    assert s.reading(2.1) is None and not s.face_seen_within(2.1, 1.5)
    s.add(3.0, HAPPY)  # a new customer starts a fresh average even inside the 5 s window
    assert s.reading(3.0).confidence == 1.0


def test_a_reading_at_a_moment_uses_only_faces_seen_before_it():
    s = Smoother(DISPLAY_NAMES, DEFAULT_RATINGS, window_s=1.0, reset_after_s=2.0)
    s.add(0.0, SAD)  # the customer who pressed at 0.5
    s.add(0.8, HAPPY)  # a frame after the press
    assert s.reading(0.5).confidence == 1.0 and s.reading(0.5).emotion == "Sad" and s.face_seen_within(0.5, 0.6)
    assert not s.face_seen_within(-0.1, 1.5) and s.reading(-0.1) is None
    s.add(4.9, HAPPY)  # the next customer, seen just before a press at 4.0 was handled
    assert not s.face_seen_within(4.0, 1.5) and s.reading(4.0) is None  # nobody was in view at the press
    assert s.reading(4.9).emotion == "Happy"


def test_a_new_face_starts_the_average_afresh_and_a_press_before_it_keeps_the_old_one():
    s = Smoother(DISPLAY_NAMES, DEFAULT_RATINGS, window_s=1.0, reset_after_s=2.0)
    for t in (0.0, 0.2, 0.4, 0.6):
        s.add(t, SAD)  # the customer leaving
    s.add(0.7, HAPPY, new_face=True)  # the next one, stepped in at once
    s.add(0.8, HAPPY)
    assert s.reading(0.8).emotion == "Happy" and s.reading(0.8).confidence == 1.0  # no part of the Sad average
    assert s.reading(0.65).emotion == "Sad" and s.reading(0.65).confidence == 1.0  # a press at 0.65 was theirs


def test_same_face_is_told_by_the_boxes_overlap():
    from device.detector import Box, same_face

    face = Box(100, 100, 200, 200, 0.9)
    assert same_face(face, Box(110, 95, 215, 205, 0.9))  # the customer moved a little between frames
    assert same_face(face, Box(80, 80, 230, 230, 0.9))  # or leaned in: IoU 0.44
    assert not same_face(face, Box(220, 100, 320, 200, 0.9))  # someone beside them
    assert not same_face(face, Box(170, 100, 270, 200, 0.9))  # IoU 0.18: another face


@pytest.mark.parametrize(("top", "sure"), [(1 / 7, False), (0.39, False), (0.4, True), (0.41, True)])
def test_a_reading_is_sure_from_min_confidence(top, sure):
    s = Smoother(DISPLAY_NAMES, DEFAULT_RATINGS, min_confidence=0.4)
    probs = np.full(7, (1 - top) / 6)
    probs[3] = top
    s.add(0.0, probs)
    assert s.reading(0.0).sure is sure


@pytest.mark.parametrize(("overrides", "message"), [
    ({"button.pin": 3}, "button.pin: BCM 3 is ssd1306's I2C SCL pin (display.driver = 'ssd1306')"),
    ({"button.led_pin": 2}, "button.led_pin: BCM 2 is ssd1306's I2C SDA pin"),
    ({"display.driver": "st7789", "button.pin": 24}, "button.pin: BCM 24 is display.gpio_dc"),
    ({"display.driver": "st7789", "button.led_pin": 8}, "button.led_pin: BCM 8 is st7789's SPI chip-select pin"),
    ({"display.driver": "ili9341", "button.pin": 11}, "button.pin: BCM 11 is ili9341's SPI SCLK pin"),
    ({"button.led_pin": 17}, "button.led_pin: BCM 17 is button.pin too"),
    # make install turns SPI on for any display, and the kernel's spi0 then holds both chip selects
    ({"button.pin": 8}, "button.pin: BCM 8 is SPI0's CE0 pin, which the kernel holds while SPI is on"),
    ({"button.led_pin": 7}, "button.led_pin: BCM 7 is SPI0's CE1 pin, which the kernel holds while SPI is on"),
    ({"display.driver": "st7789", "button.pin": 7}, "button.pin: BCM 7 is SPI0's CE1 pin"),
    # an LCD on spi1's CE2 needs dtoverlay=spi1-3cs, which holds CE0 (18) and CE1 (17, the default button) too
    ({"display.driver": "st7789", "display.spi_port": 1, "display.spi_device": 2, "display.gpio_backlight": 13},
     "button.pin: BCM 17 is SPI1's CE1 pin, which the kernel holds under dtoverlay=spi1-3cs (display.spi_device = 2)"),
    ({"display.driver": "ili9341", "display.spi_port": 1, "display.spi_device": 1, "display.gpio_backlight": 13,
      "button.pin": 5, "button.led_pin": 18}, "button.led_pin: BCM 18 is SPI1's CE0 pin, which the kernel holds "
     "under dtoverlay=spi1-2cs"),
])
def test_a_button_on_a_pin_the_display_uses_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)
    load_config(None, {**overrides, "button.kind": "keyboard"})  # no GPIO claimed: nothing to clash
    load_config(None, {"display.driver": "st7789", "button.pin": 3, "button.led_pin": 27})  # I2C is free then
    load_config(None, {"display.driver": "st7789", "button.pin": 9})  # MISO: no LCD reads it
    load_config(None, {"display.driver": "ili9341", "display.spi_port": 1, "display.gpio_backlight": 13,
                       "button.pin": 19, "button.led_pin": 5})  # spi1's MISO
    load_config(None, {"display.driver": "ili9341", "display.spi_port": 1, "display.gpio_backlight": 13,
                       "button.led_pin": 16})  # spi1-1cs holds CE0 alone: CE1 (17) and CE2 (16) stay free


def test_custom_rating_scale(tmp_path):
    path = tmp_path / "config.toml"
    paper = {"Happy": 10, "Surprised": 8, "Neutral": 5, "Sad": 3, "Fearful": 3, "Disgusted": 1, "Angry": 0}
    path.write_text("[rating]\nmax = 10\n[rating.map]\n" + "".join(f"{k} = {v}\n" for k, v in paper.items()))
    assert load_config(path)["rating"]["map"] == paper
    path.write_text("[rating.map]\nSad = 1\n")  # on the default 1-5 scale the rest keep their defaults
    assert load_config(path)["rating"]["map"] == dict(DEFAULT_RATINGS, Sad=1)
    assert Screen("thanks", "Happy", 10, 10).text() == "Thank you! Happy **********"
    halves = [Screen("thanks", "Sad", r, 5).text().rsplit(" ", 1)[1] for r in (0.5, 2.5, 3.5)]
    assert halves == ["*....", "***..", "****."]  # as many stars as the logged rating rounds to, halves up


def test_the_readme_rating_scale_edits_the_installed_config(tmp_path):
    """The README's 0-10 scale, done as it says to the config make install writes (config.example.toml,
    whose [rating] and [rating.map] are declared already: TOML refuses a second declaration)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"\*\*Ratings\.\*\*.*?\n\n((?:    [^\n]*\n)+)", readme, re.S).group(1).replace("    ", "")
    assert "replace the file's last section" in readme
    config = (ROOT / "systemd/config.example.toml").read_text()
    config = config.replace("# max = 5", "max = 10")  # "uncomment max in [rating] and set it to 10"
    (tmp_path / "config.toml").write_text(config[:config.index("[rating.map]")] + block)
    cfg = load_config(tmp_path / "config.toml")
    assert cfg["rating"]["max"] == 10 and cfg["rating"]["map"]["Happy"] == 10 and cfg["rating"]["map"]["Angry"] == 0


@pytest.mark.parametrize(("text", "overrides", "message"), [
    ('[display]\ndriver = "png"\npng_path = ""\n', {}, "CONFIG: display.png_path: '' is not a file name"),
    ('[display]\ndriver = "png"\npng_path = "shots/"\n', {}, "CONFIG: display.png_path: 'shots/' is not a file name"),
    ('[camera]\npath = "/srv/clip.mp4"\n', {}, 'CONFIG: camera.path is used only with camera.source "video" or '
     "\"images\", not 'camera'"),  # else the kiosk silently uses the camera
    ("", {"camera.source": "images"}, "command line: camera.path: required when camera.source is 'images'"),
    ('[display]\ni2c_address = 0x78\n', {}, "CONFIG: display.i2c_address: 0x78 is out of range [0x03, 0x77] "
     "(0x78 is the 8-bit form of 0x3C)"),
    ('[display]\ndriver = "st7735"\n', {"display.spi_port": 1}, "command line: display.gpio_backlight: BCM 18"),
    # luma's st7789 has one colour order: the key would be silently ignored
    ('[display]\ndriver = "st7789"\nswap_red_blue = true\n', {}, "CONFIG: display.swap_red_blue: the st7789 "
     "driver has a fixed colour order"),
    # no /dev/spidev0.2: luma's "SPI device not found" at start, blamed on the wiring
    ('[display]\ndriver = "st7735"\nspi_device = 2\n', {}, "CONFIG: display.spi_device: 2 is not a chip select "
     "of SPI0, which has 2 (0 to 1)"),
    ('[display]\ndriver = "ili9341"\n', {"display.spi_port": 1, "display.spi_device": 3},
     "command line: display.spi_device: 3 is not a chip select of SPI1, which has 3 (0 to 2)"),
    # spi1's CE2 needs dtoverlay=spi1-3cs, which holds CE0 too: the default backlight pin, "GPIO busy" at start
    ('[display]\ndriver = "st7789"\nspi_port = 1\nspi_device = 2\n', {}, "CONFIG: display.gpio_backlight: BCM 18 "
     "is SPI1's CE0 pin, which the kernel holds under dtoverlay=spi1-3cs; choose another pin"),
])
def test_a_setting_that_would_fail_later_is_refused_where_it_was_given(tmp_path, text, overrides, message):
    """Each of these loaded before and failed on the kiosk: a traceback at the first frame, a video
    never played, a board's 8-bit address in decimal, a flag's value blamed on the file."""
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match="^" + re.escape(message.replace("CONFIG", str(config)))):
        load_config(config, overrides)


def test_a_setting_refused_above_goes_where_it_fits():
    load_config(None, {"display.driver": "st7735", "display.swap_red_blue": True})
    # CE2 (GPIO16), with the backlight and button off CE0 (18) and CE1 (17), which its spi1-3cs overlay holds
    load_config(None, {"display.driver": "st7735", "display.spi_port": 1, "display.spi_device": 2,
                       "display.gpio_backlight": 13, "button.pin": 27})
    load_config(None, {"display.spi_device": 5})  # an OLED does not use it


def test_a_config_saved_on_windows_loads_or_says_to_save_it_as_utf8(tmp_path):
    """Notepad's UTF-8 starts with a byte-order mark TOML refuses ("Invalid statement"); its
    "Unicode" is UTF-16 and its "ANSI" a code page, which TOML does not read at all."""
    config = tmp_path / "config.toml"
    text = '[device]\nid = "café"\r\n[button]\nled_pin = 27\r\n'
    config.write_bytes(text.encode("utf-8-sig"))
    cfg = load_config(config)
    assert cfg["device"]["id"] == "café" and cfg["button"]["led_pin"] == 27
    for encoding in ("utf-16", "cp1252"):
        config.write_bytes(text.encode(encoding))
        with pytest.raises(ConfigError, match=f"^{re.escape(str(config))}: cannot read config: not UTF-8 text "
                           r"\(byte 0x.. at offset \d+\); save it as UTF-8$"):
            load_config(config)


@pytest.mark.parametrize(("text", "message"), [
    # above the first header: TOML puts it in no section
    ('driver = "st7789"\n', "driver is a key outside any [section]; it belongs under [display]"),
    ('path = "/srv/clip.mp4"\n', "path is a key outside any [section]; it belongs under [camera] or [model] or "
     "[storage]"),
    ('device = "/dev/video2"\n', "device is a key outside any [section]; it belongs under [camera]"),
    ("speed = 3\n", "speed is a key outside any [section]; sections: device, camera,"),
    ("[camera]\nled_pin = 27\n", "led_pin belongs under [button], not [camera]"),
    ("[rating]\nmax = 5\nHappy = 5\n", "Happy belongs under [rating.map], not [rating]"),
    # a key of several sections is named with each of them, as above the first header
    ("[camera]\npath = 'x'\n[display]\npath = 'y'\n", "path belongs under [camera] or [model] or [storage], not "
     "[display]"),
    ("[button]\nrotate = 2\n", "rotate belongs under [camera] or [display], not [button]"),
    ("[rating.map]\nHappy = 5\nrotate = 2\n", "rotate belongs under [camera] or [display], not [rating.map]"),
    # what was before, where no other section has the key
    ("[gpio]\npin = 4\n", "unknown section [gpio] (known: device, camera,"),
    ("display = 3\n", "display must be a [section] table"),
    ("[camera]\nsorce = 'demo'\n", "unknown key camera.sorce (known: source,"),
    ("[rating.map]\nJoyful = 5\n", "rating.map.Joyful: unknown emotion (expected one of Angry,"),
])
def test_a_key_in_the_wrong_place_is_said_to_be_there(tmp_path, text, message):
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match="^" + re.escape(f"{config}: {message}")):
        load_config(config)


def test_a_key_appended_to_the_shipped_config_is_said_to_be_in_its_last_section(tmp_path):
    """The shipped file ends in [rating.map]: a key added at its end lands there, not an emotion."""
    config = tmp_path / "config.toml"
    config.write_text((ROOT / "systemd/config.example.toml").read_text() + "led_pin = 27\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{config}: led_pin belongs under [button], not "
                                                          "[rating.map]") + "$"):
        load_config(config)
    config.write_text('driver = "st7789"\n' + (ROOT / "systemd/config.example.toml").read_text())
    with pytest.raises(ConfigError, match=re.escape("driver is a key outside any [section]; it belongs under "
                                                    "[display]")):
        load_config(config)


def test_an_lcd_with_spi_off_says_so_not_the_wiring(monkeypatch):
    """luma's "SPI device not found" is a missing /dev/spidevP.D: SPI is off, however the panel is wired."""
    import luma.core.interface.serial
    from luma.core.error import DeviceNotFoundError

    from device.display import DisplayError

    def spi(**kw):
        raise DeviceNotFoundError("SPI device not found")

    monkeypatch.setattr(luma.core.interface.serial, "spi", spi)
    for overrides, fix in [({"display.spi_device": 1}, "/dev/spidev0.1 is missing: enable SPI "
                            "(sudo raspi-config nonint do_spi 0)"),
                           ({"display.spi_port": 1, "display.gpio_backlight": 13},
                            "/dev/spidev1.0 is missing: enable SPI (dtoverlay=spi1-1cs in /boot/firmware/config.txt")]:
        with pytest.raises(DisplayError, match=re.escape("display.driver = 'st7789': cannot open the display: "
                                                         "SPI device not found: " + fix)) as err:
            open_display(load_config(None, {"display.driver": "st7789", **overrides})["display"])
        assert "wiring" not in str(err.value)


def test_the_unit_refuses_paths_its_sandbox_cannot_reach(tmp_path, monkeypatch):
    """Under the unit (systemd sets STATE_DIRECTORY) a config edited since make install is held to what
    ProtectHome and ProtectSystem=strict leave it: else a "Read-only file system" error would point at
    the SD card."""
    import device.config

    monkeypatch.setattr(device.config, "ROOT", Path("/opt/feedbackd"))  # as installed: not a checkout under /home
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = tmp_path / "config.toml"
    (tmp_path / "face").symlink_to("/root/face")
    cases = [
        ('[storage]\npath = "/mnt/usb/feedback.db"\n', "storage.path: /mnt/usb/feedback.db: the service can write "
         "only under /var/lib/feedbackd (ProtectSystem=strict; its private /tmp is emptied at each stop)"),
        ('[storage]\npath = "/tmp/feedback.db"\n', "storage.path: /tmp/feedback.db: the service can write only"),
        ('[model]\npath = "/home/pi/fer.tflite"\n', "model.path: /home/pi/fer.tflite is hidden from the service "
         "(ProtectHome=yes): put it under "),
        ('[detector]\ndir = "/root/face"\n', "detector.dir: /root/face is hidden from the service (ProtectHome=yes)"),
        ('[storage]\npath = "/var/lib/feedbackd/../feedback.db"\n', "storage.path: /var/lib/feedback.db: "
         "the service can write only under /var/lib/feedbackd"),
        ('[model]\npath = "/tmp/fer.tflite"\n', "model.path: /tmp/fer.tflite is in a /tmp the service sees empty "
         "(PrivateTmp=yes): put it under /opt/feedbackd/models"),
        (f'[detector]\ndir = "{tmp_path / "face"}"\n', f"detector.dir: {tmp_path / 'face'} is hidden from the service "
         "(ProtectHome=yes)"),  # a link to /root/face
        ('[display]\ndriver = "png"\npng_path = "/srv/screen.png"\n', "display.png_path: /srv/screen.png: the "
         "service can write only under /var/lib/feedbackd"),
        ('[camera]\nsource = "images"\npath = "/home/pi/photos"\n', "camera.path: /home/pi/photos is hidden from "
         "the service (ProtectHome=yes)"),  # the folder would look empty: no camera, restarts every 10 s
    ]
    for text, message in cases:
        config.write_text(text)
        load_config(config)  # run by hand (make run, a desk): no sandbox
        monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/feedbackd")
        with pytest.raises(ConfigError, match=re.escape(f"{config}: {message}")):
            load_config(config)
        monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/feedbackd")
    config.write_text('[display]\ndriver = "png"\n')  # relative: in the unit's folder, also checked from / (install)
    monkeypatch.chdir("/")
    assert load_config(config)["display"]["png_path"].startswith("/var/lib/feedbackd/")
    config.write_text('[display]\ndriver = "png"\npng_path = "/tmp/screen.png"\n')  # the private /tmp will do
    assert load_config(config)["storage"]["path"] == "/var/lib/feedbackd/feedback.db"


def test_the_unit_refuses_a_network_stream_it_has_no_network_for(tmp_path, monkeypatch):
    """The unit runs with PrivateNetwork=yes and only AF_UNIX sockets: an RTSP camera would never
    open there, and "Camera error" would send the technician to the camera's drivers instead."""
    import device.config

    monkeypatch.setattr(device.config, "ROOT", Path("/opt/feedbackd"))  # as installed: not a checkout under /home
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = tmp_path / "config.toml"
    config.write_text('[camera]\nsource = "video"\npath = "rtsp://till-3.local/stream"\n')
    assert load_config(config)["camera"]["path"] == "rtsp://till-3.local/stream"  # run by hand: the network is there
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/feedbackd")
    with pytest.raises(ConfigError, match=re.escape(f"{config}: camera.path: rtsp://till-3.local/stream: the service "
                                                     "cannot reach a network stream (PrivateNetwork=yes)")):
        load_config(config)
    config.write_text('[camera]\nsource = "video"\npath = "file:///var/lib/feedbackd/clip.mp4"\n')  # no network
    assert load_config(config)["camera"]["path"] == "file:///var/lib/feedbackd/clip.mp4"


def test_relative_paths_mean_the_folder_they_were_given_in(tmp_path, monkeypatch):
    """lgpio changes the process's folder to $LG_WD (the user's runtime folder under make run) when the
    GPIO button opens, before the log is opened: var/feedback.db must not become /tmp/var/feedback.db."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)  # run by hand, not by the unit
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, {"storage.path": "var/feedback.db", "camera.source": "images", "camera.path": "photos/",
                             "display.driver": "png", "display.png_path": "build/../screen.png"})
    monkeypatch.chdir("/")
    assert (cfg["storage"]["path"], cfg["camera"]["path"], cfg["display"]["png_path"]) == (
        str(tmp_path / "var/feedback.db"), str(tmp_path / "photos"), str(tmp_path / "screen.png"))
    stream = load_config(None, {"camera.source": "video", "camera.path": "rtsp://till-3.local/stream"})
    assert stream["camera"]["path"] == "rtsp://till-3.local/stream"  # a URL OpenCV opens, not a file


@pytest.mark.parametrize(("kiosk", "fix"), [(False, "run 'make models'"),
                                            (True, "run 'sudo make install' from the checkout")])
def test_missing_model_files_name_the_key_and_the_fix_that_fits(tmp_path, monkeypatch, kiosk, fix):
    """A kiosk (FEEDBACKD_HOME set by the unit and the feedbackd command) has no make targets in its
    folder; and neither target writes into a detector.dir of the owner's, so that advice would loop."""
    from device import detector
    from device.detector import PROTOTXT, DetectorError, check_face_files
    from device.model import EmotionClassifier, ModelError

    home = tmp_path / ("opt" if kiosk else "checkout")
    if kiosk:
        monkeypatch.setenv("FEEDBACKD_HOME", str(home))
    else:
        monkeypatch.delenv("FEEDBACKD_HOME", raising=False)
        monkeypatch.setattr(detector, "CHECKOUT", home)
    fetched = home / "models/face"
    copy = f"copy the pinned files from {fetched} into it, or set detector.dir to {fetched}"
    for folder, advice in ((fetched, fix), (tmp_path / "mine", copy)):
        folder.mkdir(parents=True)
        with pytest.raises(DetectorError, match=re.escape(f"{folder / PROTOTXT}: face-detector file missing from "
                                                          f"detector.dir: {advice}")):
            check_face_files(folder)
        (folder / PROTOTXT).write_text("not the res10 file")
        with pytest.raises(DetectorError, match=r"\(corrupt or wrong file in detector\.dir: .*" + re.escape(advice)):
            check_face_files(folder)
    with pytest.raises(ModelError, match=re.escape("emotion model not found: check model.path, or restore the model "
                                                   "('sudo make install' from the checkout on a kiosk")):
        EmotionClassifier(tmp_path / "none.tflite")


def test_sd_notify_on_a_real_socket(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
        assert n.enabled and n.watchdog_s == 15
        n.ready()
        n.watchdog()
        n.status("running")
        assert [server.recv(256) for _ in range(3)] == [b"READY=1", b"WATCHDOG=1", b"STATUS=running"]
    off = Notifier({})
    assert not off.enabled and off.watchdog_s is None
    off.ready()  # no socket: a no-op, never an error


def test_latest_frame_skips_the_backlog_and_releases_after_the_last_grab():
    counter = iter(range(10**6))
    latest, driver_free, held = [-1], threading.Event(), threading.Event()
    driver_free.set()
    released = []

    def grab():
        if not driver_free.is_set():
            held.set()  # inside the driver's read, which has not returned yet
        driver_free.wait()
        time.sleep(0.001)
        latest[0] = next(counter)
        return np.full((2, 2), latest[0])

    src = LatestFrame(grab, "fast camera", release=lambda: released.append(latest[0]))
    first = int(src.read()[0, 0])
    deadline = time.monotonic() + 10
    while latest[0] <= first + 20 and time.monotonic() < deadline:  # a slow pipeline: frames pile up meanwhile
        time.sleep(0.01)
    seen = latest[0]
    # the newest frame (or the one before: `latest` is set just before the frame is kept), not a backlog's next
    assert seen > first + 20 and int(src.read()[0, 0]) >= seen - 1
    driver_free.clear()
    assert held.wait(5)
    closing = threading.Thread(target=src.close)
    closing.start()
    time.sleep(0.1)
    assert released == []  # never while a grab is running
    driver_free.set()
    closing.join(5)
    assert not closing.is_alive() and released == [latest[0]]  # once, after the last grab


def test_camera_source_never_falls_back_to_the_demo(monkeypatch):
    from device import sources
    from device.config import SCHEMA

    monkeypatch.setattr(sources.glob, "glob", lambda pattern: [])  # no webcam on this machine
    monkeypatch.setitem(sys.modules, "picamera2", None)  # and no picamera2
    cfg = {k: key.default for k, key in SCHEMA["camera"].items()}
    assert cfg["source"] == "camera"  # the kiosk default: a missing camera is an error the daemon retries
    with pytest.raises(SourceError, match=r"no camera: picamera2 is not installed.*; no /dev/video\* webcam"):
        sources.open_source(cfg)
    assert isinstance(sources.open_source({**cfg, "source": "auto"}), sources.DemoSource)  # the desk default
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # a Pi's venv: no demo photos either
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(SourceError, match=r"no camera: picamera2 is not installed.*; no demo either \("):
        sources.open_source({**cfg, "source": "auto"})


def test_auto_shows_the_demo_only_until_a_camera_has_opened(monkeypatch, caplog):
    """A webcam busy in a video call at the start: the demo stands in, and the log says why. A webcam
    that later drops out is waited for: its customer's feedback must never turn into the photos'."""
    from device import sources
    from device.config import SCHEMA

    monkeypatch.setitem(sys.modules, "picamera2", None)
    webcam = []

    def first_webcam(cfg):
        if not webcam:
            raise SourceError("webcam busy")
        return webcam[0]

    monkeypatch.setattr(sources, "_first_webcam", first_webcam)
    cfg = {**{k: key.default for k, key in SCHEMA["camera"].items()}, "source": "auto"}
    open_camera = sources.opener(cfg)
    assert isinstance(open_camera(), sources.DemoSource)
    assert "no camera (picamera2 is not installed" in caplog.text and "webcam busy): showing the demo" in caplog.text
    webcam.append(object())  # the call ended: the next reconnect finds the webcam
    assert open_camera() is webcam[0]
    webcam.clear()  # unplugged
    with pytest.raises(SourceError, match="no camera: .*webcam busy"):
        open_camera()


def test_a_broken_picamera2_is_named_as_broken_not_missing(monkeypatch):
    """apt's picamera2 under a numpy it was not built for fails to import: "not installed, apt install
    it" would send the technician to a command that changes nothing, and a ValueError must not end the
    daemon before the webcams are tried."""
    from device import sources

    class Broken:
        def __getattr__(self, name):
            raise ValueError("numpy.dtype size changed, may indicate binary incompatibility")

    monkeypatch.setattr(sources.glob, "glob", lambda pattern: [])
    monkeypatch.setitem(sys.modules, "picamera2", Broken())
    cfg = {"source": "camera", "width": 640, "height": 480, "fps": 15}
    with pytest.raises(SourceError, match=r"picamera2 is installed but cannot be imported \(ValueError: numpy.dtype"):
        sources.open_source(cfg)


def test_the_camera_source_takes_the_first_webcam_that_gives_a_frame(monkeypatch):
    from device import sources

    tried = []

    def webcam(device, *args):
        tried.append(device)
        if device == "/dev/video1":  # a webcam's metadata node
            raise SourceError(f"camera {device}: cannot open V4L2 device")
        return LatestFrame(lambda: np.zeros((480, 640, 3), np.uint8), f"camera {device}")

    monkeypatch.setitem(sys.modules, "picamera2", None)
    monkeypatch.setattr(sources.glob, "glob", lambda pattern: ["/dev/video10", "/dev/video2", "/dev/video1"])
    monkeypatch.setattr(sources, "V4L2Source", webcam)
    src = sources.open_source({"source": "camera", "width": 640, "height": 480, "fps": 15})
    assert src.name == "camera /dev/video2" and tried == ["/dev/video1", "/dev/video2"]  # number order
    assert src.read() is not None  # the probe kept its frame for the first read (`feedbackd check` reads once)
    src.close()


def test_the_camera_source_passes_over_the_pis_codec_and_isp_nodes(monkeypatch, tmp_path):
    """On a Pi, /dev/video10 and up are the SoC's codec and ISP: sysfs links them to a platform
    device, a webcam to a USB one. Opening a codec node costs a 7 s timeout on the Pi."""
    from device import sources

    def node(name, target):
        (tmp_path / "devices" / target).mkdir(parents=True)
        (tmp_path / "class" / name).mkdir(parents=True)
        (tmp_path / "class" / name / "device").symlink_to(tmp_path / "devices" / target)

    node("video10", "platform/soc/fe00b840.mailbox/bcm2835-codec")
    node("video13", "platform/soc/fe00b840.mailbox/bcm2835-isp")
    node("video0", "platform/scb/fd500000.pcie/pci0000:00/0000:01:00.0/usb1/1-1/1-1.2/1-1.2:1.0")
    tried = []

    def webcam(device, *args):  # every node gives a frame here; on the Pi the codec would time out
        tried.append(device)
        return LatestFrame(lambda: np.zeros((480, 640, 3), np.uint8), f"camera {device}")

    monkeypatch.setitem(sys.modules, "picamera2", None)
    monkeypatch.setattr(sources, "SYSFS_VIDEO", tmp_path / "class")
    monkeypatch.setattr(sources, "V4L2Source", webcam)
    monkeypatch.setattr(sources.glob, "glob", lambda pattern: ["/dev/video10", "/dev/video13", "/dev/video0"])
    src = sources.open_source({"source": "camera", "width": 640, "height": 480, "fps": 15})
    assert src.name == "camera /dev/video0" and tried == ["/dev/video0"]
    src.close()

    monkeypatch.setattr(sources.glob, "glob", lambda pattern: ["/dev/video10", "/dev/video13"])  # no webcam
    with pytest.raises(SourceError, match=r"no /dev/video\* webcam"):
        sources.open_source({"source": "camera", "width": 640, "height": 480, "fps": 15})
    assert tried == ["/dev/video0"]  # the codec and ISP were never opened


PI_CAMERA = {"Model": "imx708", "Id": "/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a"}  # a Pi 5 camera
USB_CAMERA = {"Model": "HD Webcam", "Id": "/base/axi/pcie@120000/rp1/usb@200000-1:1.0-046d:0825"}


def fake_picamera2(calls: list, capture, stop=None, cameras=(PI_CAMERA,)):
    """A picamera2 module of the calls the adapter makes, nothing more; `capture(self, stream)` is
    each test's camera, and its start, stop and close are noted in `calls`."""

    class Picamera2:
        global_camera_info = staticmethod(lambda: list(cameras))
        capture_array = capture

        def __init__(self, num):
            assert num == 0

        def create_video_configuration(self, main, controls, buffer_count):
            assert main["format"] == "RGB888"  # libcamera's name for B, G, R bytes: OpenCV's order
            return main

        def configure(self, config):
            self.size = config["size"]

        def start(self):
            calls.append("start")

        def stop(self):
            if stop:
                stop()
            calls.append("stop")

        def close(self):
            calls.append("close")

    return types.SimpleNamespace(Picamera2=Picamera2)


def test_the_pi_camera_is_the_first_libcamera_lists_that_is_not_a_webcam(monkeypatch):
    """libcamera lists USB webcams too, last: those are V4L2's to open. With none but a webcam,
    Picamera2() is never made: a failed one leaks a pipe, once a reconnect on a webcam-only kiosk."""
    from device.sources import Picamera2Source

    made = []

    class FakePicamera2:
        cameras: list = []
        global_camera_info = staticmethod(lambda: FakePicamera2.cameras)

        def __init__(self, num):
            made.append(num)
            raise RuntimeError("stop here")  # what follows is the other tests'

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    FakePicamera2.cameras = [USB_CAMERA]
    with pytest.raises(SourceError, match="Pi camera: no Pi camera connected"):
        Picamera2Source(640, 480, 15)
    FakePicamera2.cameras = [USB_CAMERA, PI_CAMERA]  # an order no libcamera gives, so the index is checked
    with pytest.raises(SourceError, match="stop here"):
        Picamera2Source(640, 480, 15)
    assert made == [1]


def test_a_webcam_slow_to_send_a_frame_or_sending_a_damaged_one_is_waited_for_and_an_unplugged_one_is_not(monkeypatch):
    """OpenCV gives up a read after its 1 s select(): a webcam's slow first frame, or a dark room's
    long exposure, is read again; so is a damaged frame, but reads that keep failing at once (the cable
    pulled) end the source."""
    import cv2

    from device.sources import QUICK_FAILS, V4L2Source

    class Capture:  # what the adapter asks of cv2.VideoCapture
        def __init__(self, reads):
            self.reads, self.calls = iter(reads), 0

        def isOpened(self):
            return True

        def set(self, prop, value):
            pass

        def read(self):
            self.calls += 1
            wait, ok = next(self.reads, (0.0, False))
            time.sleep(wait)
            return ok, np.zeros((480, 640, 3), np.uint8) if ok else None

        def release(self):
            pass

    slow = Capture([(0.6, False), (0.6, False), (0.0, True)])  # two select() timeouts, then a frame
    monkeypatch.setattr(cv2, "VideoCapture", lambda dev, api: slow)
    src = V4L2Source("0", 640, 480, 15, timeout_s=3.0)
    src.probe()
    assert src.read().shape == (480, 640, 3)
    src.close()
    damaged = Capture([(0.0, False), (0.0, False), (0.0, True)])  # two damaged MJPEG frames, then a good one
    monkeypatch.setattr(cv2, "VideoCapture", lambda dev, api: damaged)
    src = V4L2Source("0", 640, 480, 15, timeout_s=3.0)
    src.probe()
    assert src.read().shape == (480, 640, 3)
    src.close()
    gone = Capture([(0.0, True)])  # a frame, then unplugged: every read fails at once
    monkeypatch.setattr(cv2, "VideoCapture", lambda dev, api: gone)
    began = time.monotonic()
    src = V4L2Source("0", 640, 480, 15, timeout_s=3.0)
    with pytest.raises(SourceError, match="camera 0: camera returned no frame"):
        while time.monotonic() - began < 2:
            src.read()
            time.sleep(0.01)
    assert gone.calls == 1 + QUICK_FAILS  # told within a moment, not after timeout_s of retries
    src.close()


def test_a_stalled_webcam_read_returns_before_close_gives_up_on_it():
    """OpenCV waits 10 s in select() for a stalled V4L2 frame unless told: longer than close() waits
    for the grab thread, so a webcam hiccup would restart the service instead of reconnecting. The
    setting is made before OpenCV's first wait reads it, and a technician's own is kept."""
    code = "import os, device.sources as s; print(os.environ['OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT'], s.JOIN_S)"
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT"}
    said = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    timeout, join = map(float, said.stdout.split())
    assert timeout < join
    env["OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT"] = "3"
    said = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert said.stdout.split()[0] == "3"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"display.spi_port": 1}, "display.gpio_backlight: BCM 18 is st7735's SPI chip-select pin"),  # spi1's CE0
    ({"display.gpio_rst": 10}, "display.gpio_rst: BCM 10 is st7735's SPI MOSI pin"),
    ({"display.gpio_backlight": 7}, "display.gpio_backlight: BCM 7 is SPI0's CE1 pin"),
    ({"display.gpio_rst": 24}, "display.gpio_rst: BCM 24 is display.gpio_dc too"),
    ({"display.spi_port": 1, "display.spi_device": 1, "display.gpio_backlight": 13, "display.gpio_rst": 18},
     "display.gpio_rst: BCM 18 is SPI1's CE0 pin, which the kernel holds under dtoverlay=spi1-2cs"),
])
def test_an_lcd_pin_on_its_own_bus_or_on_another_of_its_pins_is_refused(overrides, message):
    """RPi.GPIO would take the pin from the SPI controller without a word (a blank panel)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, {"display.driver": "st7735", **overrides, "button.pin": 5, "button.led_pin": 6})
    load_config(None, {**overrides, "display.driver": "ssd1306"})  # an OLED drives none of those pins
    load_config(None, {"display.driver": "st7789", "display.gpio_dc": 9, "display.gpio_backlight": 13})  # Pirate Audio


def test_an_lcd_pin_not_wired_to_the_pi_holds_no_pin():
    """An LCD whose RST and BL go to 3V3 (a backlight fed straight from its pin needs more current
    than a GPIO gives) frees those pins for the button; -1 twice is no clash, -1 for DC an error."""
    unwired = {"display.driver": "st7789", "display.gpio_rst": -1, "display.gpio_backlight": -1}
    cfg = load_config(None, {**unwired, "button.pin": 18, "button.led_pin": 25})
    assert (cfg["display"]["gpio_rst"], cfg["display"]["gpio_backlight"]) == (-1, -1)
    with pytest.raises(ConfigError, match=re.escape("button.pin: BCM 18 is display.gpio_backlight")):
        load_config(None, {**unwired, "display.gpio_backlight": 18, "button.pin": 18})
    with pytest.raises(ConfigError, match=re.escape("display.gpio_dc: -1 is out of range")):
        load_config(None, {**unwired, "display.gpio_dc": -1})


def test_an_i2c_address_out_of_range_is_said_in_hex():
    with pytest.raises(ConfigError, match=re.escape("0xFF is out of range [0x03, 0x77]") + "$"):
        load_config(None, {"display.i2c_address": 0xFF})  # not an 8-bit form of a 7-bit address


def test_a_hung_pi_camera_is_a_camera_error_not_a_frozen_loop(monkeypatch):
    """picamera2's capture_array can block for good; the loop must still get an error."""

    from device.sources import Picamera2Source

    hang, calls = threading.Event(), []

    def capture(self, stream):
        if len(calls) > 3:
            hang.wait()  # the camera stops answering
        calls.append(stream)
        return np.zeros((self.size[1], self.size[0], 3), np.uint8)

    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2(calls, capture))
    src = Picamera2Source(640, 480, 15, timeout_s=0.3)
    assert src.read().shape == (480, 640, 3)
    time.sleep(0.5)
    with pytest.raises(SourceError, match="Pi camera: no frame for"):
        src.read()
    hang.set()  # the stuck capture returns at last; only then is the camera released
    src.close()
    assert calls[-2:] == ["stop", "close"]


def test_a_pi_camera_at_a_low_frame_rate_is_closed_not_given_up_on(monkeypatch):
    """A capture under way returns only with the next frame: at 0.5 fps close() gave up after 2 s
    and restarted the service (SourceStuck) at every reconnect, and `check` failed a working camera."""
    from device.sources import Picamera2Source

    calls = []

    def capture(self, stream):
        time.sleep(2.0)  # a frame every 2 s
        calls.append(stream)
        return np.zeros((self.size[1], self.size[0], 3), np.uint8)

    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2(calls, capture, stop=lambda: time.sleep(0.3)))
    src = Picamera2Source(640, 480, 0.5, timeout_s=5.0)
    src.probe()  # the next capture is under way at once
    src.close()
    assert calls[-2:] == ["stop", "close"]


def test_a_pi_camera_whose_stop_fails_is_still_closed(monkeypatch, caplog):
    """Else the camera stays held and every reconnect finds it busy."""

    from device.sources import Picamera2Source

    calls = []

    def unplugged():
        raise RuntimeError("camera unplugged")

    # the camera is gone: the grab thread ends and releases it
    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2(calls, lambda self, stream: None, stop=unplugged))
    src = Picamera2Source(640, 480, 15, timeout_s=0.3)
    with pytest.raises(SourceError, match="Pi camera: camera returned no frame"):
        src.read()
    src.close()
    assert calls == ["start", "close"]
    assert "Pi camera: releasing the camera failed (RuntimeError: camera unplugged)" in caplog.text


@pytest.mark.parametrize("kind", ["camera", "auto"])
def test_a_pi_camera_that_lists_but_never_streams_does_not_hide_the_webcam(monkeypatch, kind):
    """libcamera lists a Pi camera whose ribbon is loose and starts it, but no frame comes: it is
    probed like a webcam, and closed, and the USB webcam is taken instead of a "Camera error"."""
    from device import sources
    from device.sources import Picamera2Source

    calls, streams = [], [False]

    def capture(self, stream):
        if not streams[0]:
            raise RuntimeError("Camera frontend has timed out!")
        return np.zeros((480, 640, 3), np.uint8)

    webcam = LatestFrame(lambda: np.ones((480, 640, 3), np.uint8), "camera /dev/video0")
    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2(calls, capture, cameras=(PI_CAMERA, USB_CAMERA)))
    monkeypatch.setattr(sources, "_first_webcam", lambda cfg: webcam)
    cfg = {"source": kind, "width": 640, "height": 480, "fps": 15}
    assert sources.open_source(cfg) is webcam
    assert calls == ["start", "stop", "close"]  # released, else every reconnect finds it held
    streams[0] = True  # the ribbon pushed back in: the Pi camera comes first again
    src = sources.open_source(cfg)
    assert isinstance(src, Picamera2Source) and src.read().shape == (480, 640, 3)  # the probed frame kept
    src.close()
    webcam.close()


def test_latest_frame_hands_out_each_frame_once():
    """A camera that stalls: its last image is not a face still standing there."""
    stalled, in_stall = threading.Event(), threading.Event()
    frames = iter([np.zeros((2, 2)), np.ones((2, 2))])

    def grab():
        frame = next(frames, None)
        if frame is None:
            in_stall.set()  # both frames were taken: the newest is the one kept
            stalled.wait()
        return frame

    src = LatestFrame(grab, "camera 0", timeout_s=0.3)
    assert in_stall.wait(5)
    assert src.read()[0, 0] == 1  # the newest
    assert src.read() is None  # nothing new since
    time.sleep(0.4)
    with pytest.raises(SourceError, match="camera 0: no frame for"):
        src.read()
    stalled.set()
    src.close()


def test_latest_frame_reports_a_dead_camera():
    src = LatestFrame(lambda: None, "camera 0", timeout_s=1)
    with pytest.raises(SourceError, match="camera 0: camera returned no frame"):
        src.read()
    src.close()


SCREENS = [Screen("idle"), Screen("live", "Surprised", 4, 5, True), Screen("live", None, None, 5, True),
           Screen("thanks", "Happy", 5, 5), Screen("no_face"),
           Screen("error", title="Camera error", detail="retrying...")]


@pytest.mark.parametrize("size,mode", [((128, 64), "1"), ((128, 32), "1"), ((64, 128), "1"), ((240, 240), "RGB")])
def test_every_screen_draws_inside_the_panel(size, mode):
    images = [render(s, size, mode) for s in SCREENS]
    for screen, image in zip(SCREENS, images, strict=True):
        assert image.size == size and image.mode == mode
        bbox = image.convert("L").getbbox()
        assert bbox is not None, f"{screen.kind} is blank"
        x0, y0, x1, y1 = bbox
        assert x0 > 0 and y0 > 0 and x1 < size[0] and y1 < size[1], f"{screen.kind} touches the edge: {bbox}"
    assert len({im.tobytes() for im in images}) == len(images), "two screens look the same"


@pytest.mark.parametrize("size", [(128, 64), (64, 128), (240, 240)])
def test_an_error_screen_shows_the_file_name_and_what_is_wrong(size):
    """A start-up error names a full path: on a 128-pixel panel the path alone would fill both lines."""
    from PIL import ImageDraw

    from device.display import detail_lines, font

    detail = "/opt/feedbackd/models/fer_vgg16_int8.tflite: emotion model not found (run 'make convert')"
    d, size_px = ImageDraw.Draw(Image.new("1", size)), max(8, int(9 * size[0] / 128))
    lines = detail_lines(d, detail, size_px, size[0], 10)
    assert lines[0].startswith("fer_vgg16") and "".join(lines).replace(" ", "") == (
        "fer_vgg16_int8.tflite:emotionmodelnotfound(run'makeconvert')"), lines  # all of it, without the folders
    assert all(d.textlength(line, font=font(size_px)) <= size[0] - 4 for line in lines)
    short = detail_lines(d, detail, size_px, size[0], 2)
    assert short[-1].endswith(" ...") and d.textlength(short[-1], font=font(size_px)) <= size[0] - 4  # said so
    image = render(Screen("error", title="Model error", detail=detail), size, "1")
    x0, y0, x1, y1 = image.getbbox()
    assert x0 > 0 and y0 > 0 and x1 < size[0] and y1 < size[1], (x0, y0, x1, y1)
    # a hash broken across lines, the last of them cut short: still inside the panel
    hashed = ("/opt/feedbackd/models/fer_vgg16_int8.tflite: sha256 0123456789abcdef… does not match its "
              "manifest /opt/feedbackd/models/fer_vgg16_int8.json (fedcba9876543210…); refusing to use it")
    x0, y0, x1, y1 = render(Screen("error", title="Model error", detail=hashed), size, "1").getbbox()
    assert x0 > 0 and y0 > 0 and x1 < size[0] and y1 < size[1], (x0, y0, x1, y1)


@pytest.mark.parametrize("size", [(128, 64), (128, 32), (64, 128), (160, 128), (240, 240), (320, 240)])
def test_the_face_dot_never_touches_the_emotion(size):
    """The dot in the top right corner says a face is in view: the longest emotion stays clear of it."""
    w, h = size
    u = min(w, h) / 64 if h >= 48 else 1  # a 128x32 strip draws the 128x64 dot
    for emotion in (*DISPLAY_NAMES, None):  # None: "Not sure"
        image = render(Screen("live", emotion, 1 if emotion else None, 5), size, "1")  # the dot shows only there
        assert image.crop((int(w - 8 * u), 0, w, int(8 * u) + 1)).getbbox() is None, emotion
        with_dot = render(Screen("live", emotion, 1 if emotion else None, 5, face=True), size, "1")
        assert with_dot.crop((int(w - 8 * u), 0, w, int(8 * u) + 1)).getbbox() is not None  # the dot is there


def test_stars_too_small_to_tell_apart_are_written_as_a_number(monkeypatch):
    """A 128x64 OLED turned upright is 64 pixels wide: ten stars there would be 2.8 pixels across and
    run into one line. Where a star would be under MIN_STAR_R, the rating is written out instead."""
    from device import display

    drawn, said = [], []
    monkeypatch.setattr(display, "_star", lambda d, x, y, r, full, fill: drawn.append((r, full)))
    real = display._centered

    def centered(d, y, text, *args, **kwargs):
        said.append(text)
        real(d, y, text, *args, **kwargs)

    monkeypatch.setattr(display, "_centered", centered)
    for size, top, stars in [((128, 64), 10, 10), ((64, 128), 5, 5), ((64, 128), 6, 0), ((64, 128), 10, 0),
                             ((240, 240), 10, 10), ((128, 64), 100, 0)]:
        drawn.clear(), said.clear()
        display.render(Screen("live", "Happy", 3, top), size, "1")
        assert len(drawn) == stars and all(r >= display.MIN_STAR_R for r, _ in drawn), (size, top, drawn)
        assert [full for _, full in drawn] == ([True] * 3 + [False] * (stars - 3) if stars else [])
        assert (f"3/{top}" in said) is (stars == 0), (size, top, said)


def _ink_rows(image: Image.Image) -> list[tuple[int, int]]:
    """The bands of rows with ink in them, as (first, last): one per line of text or stars."""
    rows = [image.crop((0, y, image.width, y + 1)).getbbox() is not None for y in range(image.height)]
    bands = []
    for y, ink in enumerate(rows):
        if ink and (not bands or bands[-1][1] != y - 1):
            bands.append((y, y))
        elif ink:
            bands[-1] = (bands[-1][0], y)
    return bands


def test_a_128x32_strip_shows_words_as_tall_as_a_128x64_panel():
    """The 0.91-inch OLED: the 128x64 layout scaled down would draw 6-pixel words under 4-pixel stars."""
    tall = _ink_rows(render(Screen("idle"), (128, 64), "1"))[0]  # "Look at the", without descenders
    for emotion in DISPLAY_NAMES:
        bands = _ink_rows(render(Screen("live", emotion, 4, 5, face=True), (128, 32), "1").crop((0, 0, 118, 32)))
        assert len(bands) == 2, (emotion, bands)  # the word above, the stars below, apart
        assert bands[0][1] - bands[0][0] >= tall[1] - tall[0], (emotion, bands, tall)
        assert bands[1][1] - bands[1][0] >= 9, (emotion, bands)  # stars a customer can count
    idle = _ink_rows(render(Screen("idle"), (128, 32), "1"))
    assert len(idle) == 1 and idle[0][1] - idle[0][0] >= 9, idle  # "Look at the camera" on one line
    lines = _ink_rows(render(Screen("error", title="Storage error", detail="disk full; entries are kept in "
                                    "memory and retried every 5 s until the card has room"), (128, 32), "1"))
    assert len(lines) == 3, lines  # the title and two lines of what is wrong


def test_the_longest_emotions_get_the_whole_width_where_no_face_dot_stands_beside_them():
    """Kept 16 units clear of a face dot beside them on every screen, the thanks too (which has none),
    "Disgusted" and "Surprised" shrank to the smallest type on a 128x64 OLED turned upright (64 wide),
    whose dot now stands above the label; there the camera error broke "reconnectin" / "g..."."""
    cases = [(size, Screen(kind, emotion, 1, 5, face=kind == "live")) for emotion in ("Disgusted", "Surprised")
             for size, kind in (((64, 128), "live"), ((64, 128), "thanks"), ((240, 240), "thanks"))]
    for (w, h), screen in cases:
        image = render(screen, (w, h), "1")
        x0, y0, x1, y1 = image.getbbox()
        assert x0 > 0 and y0 > 0 and x1 < w and y1 < h, (screen, image.getbbox())
        bands = _ink_rows(image)
        assert len(bands) == 3, (screen, bands)  # the dot (or the thanks) above the label, the stars below
        label = image.crop((0, bands[1][0], w, bands[1][1] + 1)).getbbox()
        assert label[2] - label[0] > w - 16 * min(w, h) / 64, (screen, (w, h), label)
    error = render(Screen("error", title="Camera error", detail="retrying..."), (64, 128), "1")
    assert len(_ink_rows(error)) == 3, _ink_rows(error)  # the title a word a line, and the detail on one
    # no type under 9 pixels, whose t and f a 1-bit panel draws without their bars ("Slorage", "nol saved")
    error = render(Screen("error", title="Storage error", detail="feedback not saved yet, retrying"), (64, 128), "1")
    bands = _ink_rows(error)  # "Storage", "error", then three lines of detail, "not saved" the second
    assert len(bands) == 5 and bands[3][1] - bands[3][0] >= 6, bands  # 7 rows of ink at 9 pixels, 5 at 8


@pytest.mark.parametrize(("overrides", "message"), [
    ({"display.size": "128x48"}, "display.size: '128x48' is not one of 128x64, 128x32"),
    ({"display.driver": "st7789", "display.size": "128x32"}, "display.size: '128x32' is for an OLED or the png"),
    ({"display.size": "128x32", "display.rotate": 1}, "display.rotate: 1 turns a 128x32 panel on its side"),
])
def test_a_display_size_the_panel_cannot_take_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)
    load_config(None, {**overrides, "display.size": "128x64"})  # the default size goes with any driver


def test_png_driver_writes_the_screen(tmp_path):
    png = PngDisplay(tmp_path / "screens" / "now.png")
    display = Display(png)
    assert display.show(Screen("idle")) and not display.show(Screen("idle"))  # unchanged: not redrawn
    with Image.open(tmp_path / "screens" / "now.png") as im:
        assert im.convert("1").tobytes() == render(Screen("idle"), (128, 64), "1").tobytes()
    assert os.listdir(tmp_path / "screens") == ["now.png"]
    strip = open_display(load_config(None, {"display.driver": "png", "display.size": "128x32",
                                            "display.png_path": str(tmp_path / "strip.png")})["display"])
    assert strip.show(Screen("idle"))
    with Image.open(tmp_path / "strip.png") as im:
        assert im.size == (128, 32) and im.convert("1").tobytes() == render(Screen("idle"), (128, 32), "1").tobytes()
    for rotate, size in ((1, (64, 128)), (2, (128, 64)), (3, (64, 128))):  # a preview of the panel so mounted
        turned = open_display(load_config(None, {"display.driver": "png", "display.rotate": rotate,
                                                 "display.png_path": str(tmp_path / "turned.png")})["display"])
        assert turned.show(Screen("idle"))
        with Image.open(tmp_path / "turned.png") as im:
            assert im.size == size and im.convert("1").tobytes() == render(Screen("idle"), size, "1").tobytes()


def test_a_png_path_naming_a_folder_is_refused(tmp_path, monkeypatch):
    """Every frame would fail "Is a directory" and leave a stray <folder>.tmp beside it."""
    (tmp_path / "shots").mkdir()
    config = tmp_path / "config.toml"
    config.write_text('[display]\ndriver = "png"\npng_path = "shots"\n')
    monkeypatch.chdir(tmp_path)  # relative: refused as the folder it resolves to
    with pytest.raises(ConfigError, match="^" + re.escape(f"{config}: display.png_path: {tmp_path / 'shots'} is a "
                                                          f"folder; name the PNG to write, such as "
                                                          f"{tmp_path / 'shots' / 'screen.png'}") + "$"):
        load_config(config)
    with pytest.raises(ConfigError, match="^" + re.escape(f"command line: display.png_path: {tmp_path} is a folder")):
        load_config(None, {"display.driver": "png", "display.png_path": str(tmp_path)})
    load_config(config, {"display.driver": "terminal"})  # unused without the png driver
    assert load_config(config, {"display.png_path": "shots/now.png"})["display"]["png_path"] == str(
        tmp_path / "shots" / "now.png")


def test_terminal_driver_prints_one_line_per_change():
    out = io.StringIO()
    display = Display(TerminalDisplay(out))
    # the face dot coming and going changes the panel, not the line: a desk sees each reading once
    for s in (Screen("idle"), Screen("idle"), Screen("live", "Happy", 5, 5, face=True),
              Screen("live", "Happy", 5, 5, face=False), Screen("live", "Happy", 5, 5, face=True), Screen("no_face")):
        display.show(s)
    assert out.getvalue().splitlines() == ["[screen] Look at the camera", "[screen] Happy *****",
                                           "[screen] No face - try again"]


def test_acknowledge_blinks_the_led_twice():
    from gpiozero.pins.mock import MockFactory

    factory = MockFactory()
    button = GpioButton(17, led_pin=27, bounce_s=0, pin_factory=factory)
    led = factory.pin(27)
    assert led.state == 0
    button.acknowledge()
    deadline = time.monotonic() + 5  # two blinks take 0.5 s; a loaded machine may take longer
    while not ([s for _, s in led.states].count(1) == 2 and led.state == 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # and no third
    states = [s for _, s in led.states]
    assert states.count(1) == 2 and states[-1] == 0  # two blinks, then off
    button.close()


def test_a_gpio_press_counts_when_the_button_goes_down_not_when_it_is_let_go():
    """The press is the contact closing: a customer holding the button down has pressed it. With
    the pull-up the pin goes low; wired to 3V3 with pull_up = false, it goes high."""
    from gpiozero.pins.mock import MockFactory

    factory = MockFactory()
    button = GpioButton(17, pull_up=True, bounce_s=0, pin_factory=factory)
    pin = factory.pin(17)
    assert pin.state == 1 and button.presses() == []  # pulled up, at rest
    before = time.monotonic()
    pin.drive_low()
    [pressed] = button.presses()
    assert before <= pressed <= time.monotonic()
    pin.drive_high()  # let go
    assert button.presses() == []
    button.close()
    button = GpioButton(17, pull_up=False, bounce_s=0, pin_factory=factory)
    assert pin.state == 0 and button.presses() == []  # pulled down, at rest
    pin.drive_high()
    assert len(button.presses()) == 1
    pin.drive_low()
    assert button.presses() == []
    button.close()
    # Debouncing is the pin driver's (lgpio's on a Pi); MockPin ignores it, so only that the
    # setting reaches the pin can be checked here.
    button = GpioButton(17, bounce_s=0.05, pin_factory=factory)
    assert pin.bounce == pytest.approx(0.05)
    button.close()
    button = GpioButton(17, bounce_s=0, pin_factory=factory)
    assert pin.bounce is None
    button.close()


def test_keyboard_button_counts_each_enter():
    read, write = os.pipe()
    with os.fdopen(read) as r, os.fdopen(write, "w") as w:
        button = KeyboardButton(r)
        w.write("\n\n")
        w.flush()
        deadline = time.monotonic() + 2
        presses: list[float] = []
        while len(presses) < 2 and time.monotonic() < deadline:
            presses += button.presses()
            time.sleep(0.01)
        assert len(presses) == 2
        button.close()


def test_a_keyboard_button_with_no_keyboard_is_refused(monkeypatch):
    """Under systemd standard input is /dev/null: the daemon would run and never store a press."""
    with open(os.devnull) as null:
        monkeypatch.setattr(sys, "stdin", null)
        with pytest.raises(ButtonError, match='button.kind = "keyboard": standard input is /dev/null'):
            open_button({"kind": "keyboard"})
    read, write = os.pipe()
    with os.fdopen(read) as r, os.fdopen(write, "w"):
        monkeypatch.setattr(sys, "stdin", r)
        assert isinstance(open_button({"kind": "keyboard"}), KeyboardButton)


def test_face_finder_detects_on_every_nth_frame():
    import cv2
    from conftest import FACE_DIR, photo

    from device.detector import FaceDetector, FaceFinder

    class Counting(FaceDetector):
        calls = 0

        def detect(self, bgr):
            self.calls += 1
            return super().detect(bgr)

    face = cv2.imread(str(photo()))
    blank = np.full_like(face, 90)
    detector = Counting(FACE_DIR)
    finder = FaceFinder(detector, every=3)
    boxes = [finder.find(face) for _ in range(7)]
    assert detector.calls == 3 and boxes[0] is not None and len(set(boxes)) == 1  # frames 0, 3 and 6
    detector.calls = 0
    finder = FaceFinder(detector, every=3)
    assert finder.find(blank) is None and finder.find(face) is not None
    assert detector.calls == 2  # no face: the next frame detects at once
    detector.calls = 0
    finder = FaceFinder(detector, every=3, max_age_s=0.05)
    finder.find(face)
    time.sleep(0.06)  # a slow loop: two frames apart is already longer than a box may live
    assert finder.find(face) is not None and detector.calls == 2


def test_a_released_face_gives_way_to_the_next_customer_without_outscoring_it_by_far():
    """After a press the logged customer may linger off to the side, packing; the next customer,
    stepping up at the centre, takes over on a better score alone. Until then the face followed
    keeps its place against one about as good."""
    from device.detector import FaceFinder

    frame = np.zeros((480, 640, 3), np.uint8)
    last = Box(200, 180, 310, 300, 0.9)  # the logged customer, moving off
    nxt = Box(265, 180, 375, 300, 0.9)  # the next one, central: a little better, not 1.3 times
    packing = Box(190, 180, 300, 300, 0.9)  # moving off: still the same face
    seen = iter([[last], [last, nxt], [], [packing], [packing, nxt], [nxt, packing], [packing]])
    finder = FaceFinder(types.SimpleNamespace(detect=lambda _: next(seen)))
    assert finder.find(frame) == last and finder.find(frame) == last  # followed: kept against about as good
    finder.release(last)  # the press was logged
    assert finder.find(frame) is None and finder.find(frame) == packing  # a missed detection undoes nothing
    assert finder.find(frame) == nxt  # the better face at once
    assert finder.find(frame) == nxt  # followed in turn
    assert finder.find(frame) is None  # and missed a moment: the last customer is not read as them


def test_the_customer_missed_for_a_moment_is_not_replaced_by_a_bystander(monkeypatch):
    """Looking down at the button, the customer is missed by a detection or two; a bystander behind
    them is then no one to read, or their press would log the bystander's face. Once the customer
    has been gone both the hold (MAX_BOX_AGE_S unless told) and two detections (a slow Pi's
    detections are far apart), the bystander is the next customer."""
    from device import detector
    from device.detector import FaceFinder

    frame = np.zeros((480, 640, 3), np.uint8)
    customer, bystander = Box(265, 180, 375, 300, 0.9), Box(40, 40, 100, 100, 0.9)
    clock = moved_clock(monkeypatch, detector, start=0.0)

    def finder_seeing(*detections):
        script = iter(detections)
        return FaceFinder(types.SimpleNamespace(detect=lambda _: next(script)))

    def found(finder, at):
        clock[0] = at
        return finder.find(frame)

    fast = finder_seeing([customer, bystander], [bystander], [], [customer, bystander], [bystander], [bystander])
    assert [found(fast, t) for t in (0.0, 0.1, 0.2, 0.3, 0.4, 0.9)] == [customer, None, None, customer, None,
                                                                          bystander]
    slow = finder_seeing([customer, bystander], [bystander], [customer, bystander], [bystander], [bystander])
    assert [found(slow, t) for t in (0.0, 0.8, 1.6, 2.4, 3.2)] == [customer, None, customer, None, bystander]
    held = finder_seeing([customer, bystander], *[[bystander]] * 3)  # the daemon's hold: button.face_window_s
    held.hold_s = 1.5
    assert [found(held, t) for t in (0.0, 0.7, 1.4, 1.6)] == [customer, None, None, bystander]
    nxt = Box(420, 150, 540, 290, 0.9)  # stepping up beside: a little better, not 1.3 times
    released = finder_seeing([customer], [], [Box(255, 180, 365, 300, 0.9), nxt])
    assert found(released, 0.0) == customer and found(released, 0.1) is None  # missed just before the press
    released.release(customer)  # the daemon's last classified face, logged
    assert found(released, 0.2) == nxt  # at once


def test_video_source_loops_and_skips_to_the_newest_frame(tmp_path, monkeypatch):
    import cv2

    from device import sources
    from device.sources import VideoSource

    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (64, 48))
    for i in range(10):  # frame i is a flat grey of 20 * i
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    clock = moved_clock(monkeypatch, sources)  # a loaded machine cannot blur the frame periods
    src = VideoSource(path)

    def frame_at(t: float) -> int:
        clock[0] = t
        return round(src.read().mean() / 20)

    assert frame_at(100.0) == 0
    assert frame_at(100.26) == 5  # 5 frame periods (20 fps) later: frame 5, not the next one, 1
    assert frame_at(100.51) == 0  # past frame 9 it starts over
    src.close()
    with pytest.raises(SourceError, match="missing.avi: cannot open video"):
        VideoSource(str(tmp_path / "missing.avi"))


class SlowClip:
    """What VideoSource asks of cv2.VideoCapture: a clip reporting `fps` whose every decode takes
    `decode_s` of the moved clock; `decoded` counts them."""

    def __init__(self, clock: list[float], fps: float, decode_s: float):
        self.clock, self.fps, self.decode_s, self.decoded = clock, fps, decode_s, 0

    def isOpened(self):
        return True

    def get(self, prop):
        return self.fps

    def set(self, prop, value):
        pass

    def read(self):
        self.clock[0] += self.decode_s
        self.decoded += 1
        return True, np.full((48, 64, 3), self.decoded % 256, np.uint8)

    def release(self):
        pass


def test_a_video_slower_to_decode_than_its_frame_rate_never_falls_further_behind(monkeypatch):
    """A 1080p clip on a Pi takes longer to decode than a frame lasts: were the decoding time counted
    into the next read's backlog, each read would decode more frames than the last, until the
    watchdog restarts the service, over and over."""
    import cv2

    from device import sources

    clock = moved_clock(monkeypatch, sources)
    clip = SlowClip(clock, fps=20.0, decode_s=0.12)  # over twice the 50 ms frame period
    monkeypatch.setattr(cv2, "VideoCapture", lambda path: clip)
    src = sources.VideoSource("clip.mp4")
    per_read = []
    for _ in range(12):
        before = clip.decoded
        src.read()
        clock[0] += 0.03  # the pipeline's own work between two reads
        per_read.append(clip.decoded - before)
    assert max(per_read) <= 2, per_read  # the newest frame, bounded by the pipeline, never a growing backlog
    src.close()
    # one decoded in time keeps the clip's pace, however slow the pipeline between two reads
    clip = SlowClip(clock, fps=20.0, decode_s=0.02)
    src, start = sources.VideoSource("clip.mp4"), clock[0]
    for _ in range(20):
        src.read()
        clock[0] += 0.1
    assert clip.decoded == pytest.approx((clock[0] - start) / 0.05, abs=3)  # not a slowed-down clip
    src.close()


@pytest.mark.parametrize("fps", [1000.0, 0.0, 0.1, float("nan")])
def test_a_video_reporting_a_silly_frame_rate_is_paced_at_the_default(monkeypatch, fps):
    """A container that says 1000 fps (or none) would have every read decode dozens of frames."""
    import cv2

    from device import sources

    clock = moved_clock(monkeypatch, sources)
    clip = SlowClip(clock, fps=fps, decode_s=0.0)
    monkeypatch.setattr(cv2, "VideoCapture", lambda path: clip)
    src = sources.VideoSource("clip.mp4")
    src.read()
    clock[0] += 0.5  # 7.5 frames at the default 15 fps
    src.read()
    assert clip.decoded == 1 + 7  # the first, then the 7 frames due in 0.5 s at 15 fps (at 1000 fps: 500)
    src.close()


def test_winograd_setting_finds_the_same_face(monkeypatch):
    import cv2
    from conftest import FACE_DIR, photo

    from device.detector import FaceDetector

    asked, read_net = [], cv2.dnn.readNetFromCaffe

    class Net:  # OpenCV's own net, with the setting the detector gives it recorded
        def __init__(self, *files):
            self.net = read_net(*files)

        def enableWinograd(self, on):
            asked.append(on)
            self.net.enableWinograd(on)

        def __getattr__(self, name):
            return getattr(self.net, name)

    monkeypatch.setattr(cv2.dnn, "readNetFromCaffe", Net)
    face = cv2.imread(str(photo()))
    cfg = load_config(overrides={"detector.dir": str(FACE_DIR)})
    plain = FaceDetector.from_config(cfg["detector"])
    fast = FaceDetector.from_config(load_config(overrides={"detector.dir": str(FACE_DIR),
                                                           "detector.winograd": True})["detector"])
    assert asked == [False, True]  # off by default (OpenCV's default is on): 27 MB less memory
    (a,), (b,) = plain.detect(face), fast.detect(face)
    assert np.abs(np.array(a.as_list()) - b.as_list()).max() <= 3 and abs(a.confidence - b.confidence) < 0.02


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps is Linux's")
@pytest.mark.parametrize("locked", [False, True])  # the daemon under its unit locks all its memory
def test_released_model_pages_read_back_the_same(tmp_path, locked):
    import ctypes
    import mmap

    from conftest import resident_kb

    from device.model import release_mapped_pages

    data = np.random.default_rng(0).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert m[:] == data and resident_kb(path) >= 4000  # every page touched: resident
        if locked:  # 4 MB: within the 8 MB a user may lock by default
            [line] = [ln for ln in Path("/proc/self/maps").read_text().splitlines() if ln.endswith(str(path))]
            start, end = (int(a, 16) for a in line.split()[0].split("-"))
            if ctypes.CDLL(None).mlock(ctypes.c_void_p(start), ctypes.c_size_t(end - start)) != 0:
                pytest.skip("this user may not lock 4 MB (RLIMIT_MEMLOCK)")
        assert release_mapped_pages(path) >= len(data)
        assert resident_kb(path) < 100
        assert m[:] == data  # faulted back in from the file, unchanged


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps is Linux's")
def test_classifier_lets_go_of_the_mapped_model_file():
    from conftest import ROOT, resident_kb

    from device.model import EmotionClassifier

    path = (ROOT / "models" / "fer_vgg16_int8.tflite").resolve()  # the shipped model: 16 MB
    clf = EmotionClassifier(path)
    clf.predict(np.full((2, 48, 48), 128, np.uint8))  # a resize re-packs the weights
    assert str(path) in Path("/proc/self/maps").read_text()  # mapped, not read into a heap copy,
    assert resident_kb(path) * 1024 < 0.05 * path.stat().st_size  # and let go of: XNNPACK's copy is what runs


def test_one_daemon_a_spare_file_its_name_made_durable_and_a_line_found_twice_read_once(tmp_path, monkeypatch):
    """A second daemon on the same log would clear, at its start, lines the first has just kept;
    a new spare file's name must outlive a power cut as its bytes do."""
    from device import spare as sp

    synced = []
    monkeypatch.setattr(sp, "fsync_folder", synced.append)
    path = tmp_path / "feedback.db.spare"
    first = sp.SpareFile(path, size=256)
    assert synced == [tmp_path]  # made: its folder synced
    assert first.append('{"utc": "a"}')
    with pytest.raises(OSError, match="another feedbackd is using this log and its spare file"):
        sp.SpareFile(path, size=256)
    assert sp.waiting(path) == [{"utc": "a"}]  # untouched
    first.close()
    peek = os.open(path, os.O_RDONLY)  # `check` looking at the lock (in_use) as the daemon starts
    fcntl.flock(peek, fcntl.LOCK_SH)
    threading.Timer(0.2, os.close, [peek]).start()
    again = sp.SpareFile(path, size=256)  # waits out the look, and starts with its spare file
    assert synced == [tmp_path] and again.entries() == [{"utc": "a"}]  # there already: nothing to sync
    again.close()
    path.write_bytes(b'{"utc": "a"}\n{"utc": "b"}\n{"utc": "a"}\n'.ljust(256, b"\0"))  # a line pasted back twice
    assert [e["utc"] for e in sp.waiting(path)] == ["a", "b"]


def test_the_spare_file_keeps_whole_lines_in_the_room_it_took(tmp_path, caplog, monkeypatch):
    import errno

    from device.spare import SpareFile

    path = tmp_path / "feedback.db.spare"
    spare = SpareFile(path, size=256)
    assert path.read_bytes() == bytes(256) and os.stat(path).st_blocks * 512 >= 256  # the room is the file's
    assert spare.append('{"utc": "a"}') and spare.append('{"utc": "b"}')
    assert not spare.append("x" * 250)  # does not fit: refused, the lines before it kept
    spare.close()
    data = bytearray(path.read_bytes())
    data[26:30] = b'{"ut'  # a third line cut short by a power cut
    data[200:204] = b"junk"  # and bytes past a zero: an earlier clearing cut short
    path.write_bytes(bytes(data))
    again = SpareFile(path, size=256)
    assert again.entries() == [{"utc": "a"}, {"utc": "b"}] and "cut short" in caplog.text
    assert again.append('{"utc": "d"}')  # after the cut line, not onto it
    again.close()
    after = SpareFile(path, size=256)
    assert after.entries() == [{"utc": "a"}, {"utc": "b"}, {"utc": "d"}] and b"junk" not in path.read_bytes()
    after.clear()
    after.close()
    assert path.read_bytes() == bytes(256) and (cleared := SpareFile(path, size=256)).entries() == []
    cleared.close()
    path.write_bytes(b'{"utc": "c"}\n')  # cut short on the disk (made by hand, or an older size)
    kept = SpareFile(path, size=256)
    assert kept.entries() == [{"utc": "c"}] and len(path.read_bytes()) == 256  # read, and the room taken again
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: len(data) - 1)  # a full disk writes short
    assert not kept.append('{"utc": "e"}') and "No space left" in caplog.text
    kept.close()
    monkeypatch.undo()
    real_open = os.open

    def read_only(p, flags, *mode):  # the card remounted read-only after errors
        if flags & os.O_RDWR:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(p, flags, *mode)

    monkeypatch.setattr(os, "open", read_only)
    ro = SpareFile(path, size=256)
    assert ro.entries() == [{"utc": "c"}] and not ro.append('{"utc": "f"}')  # restored, nothing written
    ro.clear()
    ro.close()
    monkeypatch.undo()
    assert (writable := SpareFile(path, size=256)).entries() == [{"utc": "c"}]
    writable.close()
    path.write_bytes(b'{"utc": "c"}\n')
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: 0)  # a failing card: no room can be taken
    failing = SpareFile(path, size=256)
    assert failing.entries() == [{"utc": "c"}] and "it keeps 13" in caplog.text  # still restored, no room taken
    assert not failing.append('{"utc": "x"}') and os.stat(path).st_size == 13
    failing.close()
    monkeypatch.undo()


def test_the_spare_file_writes_again_what_a_failing_card_did_not_take(tmp_path, monkeypatch, caplog):
    """A sync that fails leaves the entry's bytes unsure: they are written again, with the next
    entry, over the same place; a clearing that fails leaves the next entry at the start, where
    the zeros already on the disk cannot hide it. A clearing is synced, its zeros not left in the page cache."""
    import errno

    from device.spare import SpareFile, waiting

    def fails(times: int, real):
        errors = iter([OSError(errno.EIO, "Input/output error")] * times)

        def call(fd):
            if error := next(errors, None):
                raise error
            return real(fd)
        return call

    path = tmp_path / "feedback.db.spare"
    spare = SpareFile(path, size=256)
    monkeypatch.setattr(os, "fdatasync", fails(1, os.fdatasync))
    assert not spare.append('{"utc": "a"}') and spare.append('{"utc": "b"}')
    monkeypatch.undo()
    assert waiting(path) == [{"utc": "a"}, {"utc": "b"}]  # on the disk
    monkeypatch.setattr(os, "fsync", fails(1, os.fsync))
    spare.clear()  # the log took them; the zeros are written but not synced
    monkeypatch.undo()
    assert spare.unsure and "cannot clear it (" in caplog.text  # the failed sync was seen, not taken for done
    assert spare.append('{"utc": "c"}')
    assert waiting(path) == [{"utc": "c"}]
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: 0)
    spare.clear()  # not a byte cleared
    monkeypatch.undo()
    synced, fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), fsync(fd))[1])
    spare.clear()  # tried again, though nothing is written past the start any more
    monkeypatch.undo()
    assert path.read_bytes() == bytes(256) and synced == [spare.fd] and not spare.unsure  # its zeros on the disk
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: 0)
    assert not spare.append('{"utc": "%s"}' % ("d" * 100))
    monkeypatch.undo()
    assert not spare.append('{"utc": "%s"}' % ("e" * 140))  # too long to go with it: refused, and d written again
    spare.close()
    assert (last := SpareFile(path, size=256)).entries() == [{"utc": "d" * 100}]
    last.close()


def test_a_smaller_spare_file_on_a_full_card_keeps_its_room(tmp_path, monkeypatch, caplog):
    """An upgrade to a larger spare file on a card already full: the file cannot grow, so it keeps the
    room it has rather than taking no entry at all."""
    from device.spare import SpareFile, waiting

    path = tmp_path / "feedback.db.spare"
    old = SpareFile(path, size=128)
    assert old.append('{"utc": "a"}')
    old.close()
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: 0 if at + len(data) > 128 else real(fd, data, at))
    grown = SpareFile(path, size=256)
    assert grown.entries() == [{"utc": "a"}] and not grown.refused
    assert "no room to grow it to 256 bytes" in caplog.text and "it keeps 128" in caplog.text
    assert grown.append('{"utc": "b"}') and not grown.append('{"utc": "%s"}' % ("c" * 100))  # past its 128
    grown.close()
    monkeypatch.undo()
    assert waiting(path) == [{"utc": "a"}, {"utc": "b"}] and path.stat().st_size == 128
    SpareFile(path, size=256).close()  # room again: it grows
    assert path.stat().st_size == 256 and waiting(path) == [{"utc": "a"}, {"utc": "b"}]


def test_image_source_takes_a_glob_of_images(tmp_path):
    import cv2

    from device.sources import ImageSource

    for name, value in (("a.png", 10), ("b.jpg", 200)):
        cv2.imwrite(str(tmp_path / name), np.full((24, 32, 3), value, np.uint8))
    (tmp_path / "notes.txt").write_text("not a frame")
    frame = ImageSource(str(tmp_path / "*.png")).read()
    assert frame.shape == (24, 32, 3) and int(frame.mean()) == 10  # a.png only
    with pytest.raises(SourceError, match=r"\*\.gif: no images found"):
        ImageSource(str(tmp_path / "*.gif"))


def test_an_image_folder_decodes_only_the_photo_shown(tmp_path, monkeypatch):
    """The daemon locks its memory under MemoryMax=400M: a folder of 12 MP photos kept decoded got
    it killed at every start. A file that is no photo, or a damaged one, is still found when it opens."""
    import cv2

    from device import sources
    from device.sources import ImageSource

    for name, value in (("a.png", 10), ("b.png", 100), ("c.png", 200)):
        cv2.imwrite(str(tmp_path / name), np.full((24, 32, 3), value, np.uint8))
    decoded = []
    imread = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda path, flags=cv2.IMREAD_COLOR: decoded.append(Path(path).name)
                        or imread(path, flags))
    clock = moved_clock(monkeypatch, sources)
    src = ImageSource(str(tmp_path), fps=1.0)
    assert decoded == ["a.png", "b.png", "c.png"]  # each tried, the first kept
    means = []
    for t in (100.2, 100.7, 101.2, 101.9, 102.5, 103.1):
        clock[0] = t
        means.append(int(src.read().mean()))
    assert means == [10, 10, 100, 100, 200, 10]  # looped, each shown for a second
    assert decoded == ["a.png", "b.png", "c.png", "b.png", "c.png", "a.png"]  # then each when its turn comes
    (tmp_path / "b.png").unlink()  # gone since the start: named when its turn comes, a camera error retried
    clock[0] = 104.1
    with pytest.raises(SourceError, match=re.escape(f"{tmp_path / 'b.png'}: cannot decode image")):
        src.read()
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))  # a PNG's header, nothing after it
    assert ImageSource(str(tmp_path))._files == [str(tmp_path / "a.png"), str(tmp_path / "c.png")]  # left out


def test_an_image_folder_passes_over_hidden_and_undecodable_files(tmp_path, caplog):
    """A folder copied from a Mac holds ._IMG_0001.jpg beside each photo (metadata, no image): one file
    that did not decode ended the source, and the daemon restarted on it forever."""
    import cv2

    from device.sources import ImageSource

    cv2.imwrite(str(tmp_path / "IMG_0001.jpg"), np.full((24, 32, 3), 100, np.uint8))
    (tmp_path / "._IMG_0001.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble's header
    (tmp_path / "IMG_0002.jpg").write_bytes(b"\xff\xd8\xff" + bytes(20))  # copied in part
    cv2.imwrite(str(tmp_path / "IMG_0003.png"), np.full((24, 32, 3), 200, np.uint8))
    caplog.set_level("WARNING", "feedbackd")
    src = ImageSource(str(tmp_path))
    assert src._files == [str(tmp_path / "IMG_0001.jpg"), str(tmp_path / "IMG_0003.png")]
    assert int(src.read().mean()) == 100
    assert [r.getMessage() for r in caplog.records] == [f"{tmp_path / 'IMG_0002.jpg'}: cannot decode image; skipped"]
    ImageSource(str(tmp_path))  # reopened after a camera error: said once is enough
    assert len(caplog.records) == 1
    for name in ("IMG_0001.jpg", "IMG_0003.png"):  # nothing that decodes: the folder is named, as before
        (tmp_path / name).unlink()
    with pytest.raises(SourceError, match="^" + re.escape(f"{tmp_path}: cannot decode any of its 1 images") + "$"):
        ImageSource(str(tmp_path))
    (tmp_path / "IMG_0002.jpg").unlink()
    with pytest.raises(SourceError, match="^" + re.escape(f"{tmp_path}: no images found") + "$"):
        ImageSource(str(tmp_path))  # the dot-file is no image


@pytest.mark.parametrize("kind", ["images", "v4l2", "demo"])
def test_camera_rotate_turns_every_frame_of_every_source_upright(tmp_path, monkeypatch, kind):
    """A Camera Module mounted upside down or on its side in an enclosure: the res10 detector finds
    upright faces only. camera.rotate turns each frame back, whatever the source, before the daemon
    (through opener) or check (open_source) sees it."""
    import cv2
    from conftest import photo

    from device import sources

    upright = cv2.imread(str(photo()))
    for turns, by_hand in ((2, np.rot90(upright, 2)), (1, np.rot90(upright, 1))):  # rot90: counterclockwise
        by_hand = np.ascontiguousarray(by_hand)  # as a camera gives it
        folder = tmp_path / str(turns)
        folder.mkdir()
        cv2.imwrite(str(folder / "mounted.png"), by_hand)  # lossless: compared exactly
        monkeypatch.setattr(sources, "V4L2Source", lambda *args, frame=by_hand: LatestFrame(
            lambda: (time.sleep(0.01), frame)[1], "camera 0"))
        monkeypatch.setattr(sources.DemoSource, "read", lambda self, frame=by_hand: frame)
        path = {"camera.path": str(folder)} if kind == "images" else {}
        cfg = load_config(None, {"camera.source": kind, "camera.rotate": turns, **path})["camera"]
        for src in (sources.opener(cfg)(), sources.open_source(cfg)):
            np.testing.assert_array_equal(src.read(), upright)
            src.close()
    cfg = load_config(None, {"camera.source": "images", "camera.path": str(tmp_path / "2")})["camera"]
    src = sources.open_source(cfg)
    assert isinstance(src, sources.ImageSource) and src.read() is src.read()  # unturned: not copied


def test_a_turned_demo_is_the_demo_still_until_a_camera_opens(monkeypatch):
    """Under auto, the demo stands in only until a camera has opened: turned, it is still the demo."""
    from device import sources

    def fail(why):
        def open_nothing(*args):
            raise SourceError(why)
        return open_nothing

    monkeypatch.setattr(sources, "Picamera2Source", fail("Pi camera: none"))
    monkeypatch.setattr(sources, "_first_webcam", fail("no /dev/video* webcam"))
    auto = sources.opener(load_config(None, {"camera.source": "auto", "camera.rotate": 2})["camera"])
    for _ in range(2):
        assert isinstance(auto().source, sources.DemoSource)


@pytest.mark.parametrize(("value", "message"), [
    (180, "camera.rotate: 180 reads as degrees, but the key counts quarter turns clockwise: write 2 for 180 degrees"),
    (4, "camera.rotate: 4 is out of range [0, 3]"),
    (-1, "camera.rotate: -1 is out of range [0, 3]"),
    (1.5, "camera.rotate: expected int, got float 1.5"),
    ("2", "camera.rotate: expected int, got str '2'"),
])
def test_camera_rotate_takes_quarter_turns_only(tmp_path, value, message):
    config = tmp_path / "config.toml"
    config.write_text(f"[camera]\nrotate = {json.dumps(value)}\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{config}: {message}") + "$"):
        load_config(config)
    assert [load_config(config, {"camera.rotate": n})["camera"]["rotate"] for n in range(4)] == [0, 1, 2, 3]


@pytest.mark.parametrize(("device", "message"), [
    ("video2", 'camera.device: \'video2\' is not a V4L2 camera index or /dev path; write its index, "2", or its '
     'path, "/dev/video2"'),
    ("dev/video1", "camera.device: 'dev/video1' is not a V4L2 camera index"),
    ("/dev/", "camera.device: '/dev/' is not a V4L2 camera index"),
    ("2a", "camera.device: '2a' is not a V4L2 camera index"),
    ("\u00b2", "camera.device: '\u00b2' is not a V4L2 camera index"),  # a superscript 2: isdigit(), yet no int
    ("", 'camera.device: \'\' is not a V4L2 camera index or /dev path; write its index, "0", or its path'),
])
def test_a_v4l2_device_that_could_never_open_is_refused(tmp_path, device, message):
    """OpenCV takes anything but a number for a file name: "video2" or " 2" passed and never opened."""
    config = tmp_path / "config.toml"
    config.write_text(f'[camera]\nsource = "v4l2"\ndevice = {json.dumps(device)}\n')
    with pytest.raises(ConfigError, match="^" + re.escape(f"{config}: {message}")):
        load_config(config)
    with pytest.raises(ConfigError, match="^" + re.escape(f"command line: {message}")):
        load_config(None, {"camera.source": "v4l2", "camera.device": device})
    for given, kept in ((" 2", "2"), ("2 ", "2"), ("12", "12"), (" /dev/video2", "/dev/video2"),
                        ("/dev/v4l/by-id/usb-046d_0825-video-index0", "/dev/v4l/by-id/usb-046d_0825-video-index0")):
        assert load_config(None, {"camera.source": "v4l2", "camera.device": given})["camera"]["device"] == kept
    assert load_config(None, {"camera.device": " 0"})["camera"]["device"] == "0"  # the default, as "camera" takes it


@pytest.mark.parametrize(("key", "overrides"), [
    ("camera.path", {"camera.source": "images"}),
    ("display.png_path", {"display.driver": "png"}),
])
def test_a_path_starting_with_a_tilde_is_refused_not_taken_literally(tmp_path, monkeypatch, key, overrides):
    """The service runs as its own user: "~/photos" would be a folder named ~ in its own folder."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.toml"
    section, name = key.split(".")
    config.write_text(f'[{section}]\n{name} = "~/shots/a.png"\n')
    message = f"{key}: '~/shots/a.png': ~ is not expanded here (the service runs as its own user); write the full path"
    with pytest.raises(ConfigError, match="^" + re.escape(f"{config}: {message}") + "$"):
        load_config(config, overrides)
    with pytest.raises(ConfigError, match="^" + re.escape(f"command line: {key}: '~user/a.png': ~ is not expanded")):
        load_config(None, {**overrides, key: "~user/a.png"})
    assert load_config(None, {**overrides, key: "a~/b.png"})[section][name] == str(tmp_path / "a~" / "b.png")


def test_the_rating_max_help_says_where_stars_are_drawn(monkeypatch):
    """The help (and so the example config) promised stars up to 10; an upright 128x64 OLED, 64 wide,
    writes 6 and up as 3/6. Its numbers are the display's own."""
    from device import display
    from device.config import SCHEMA

    doc = SCHEMA["rating"]["max"].doc
    found = re.search(r"stars where they fit \(up to (\d+); (\d+) on an upright 128x64 OLED\), else written as n/max",
                      doc)
    assert found, doc
    drawn = []
    monkeypatch.setattr(display, "_star", lambda *args: drawn.append(args))
    for size, most in (((128, 64), int(found[1])), ((64, 128), int(found[2])), ((128, 32), int(found[1]))):
        for top, stars in ((most, most), (most + 1, 0)):
            drawn.clear()
            display.render(Screen("live", "Happy", 3, top), size, "1")
            assert len(drawn) == stars, (size, top)


def test_the_demo_without_its_photo_is_a_source_error_not_a_crash_later(monkeypatch):
    """np.full_like(None, 40) is an object array: the detector would fail on it, not the source."""
    import cv2

    from device.sources import DemoSource

    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setattr(cv2, "imread", lambda path, flags=cv2.IMREAD_COLOR: None)  # a damaged matplotlib install
    with pytest.raises(SourceError, match=r"demo source: .*grace_hopper\.jpg: cannot decode image"):
        DemoSource()


def test_the_face_crop_is_the_configured_square_clamped_to_the_frame():
    from device.detector import CropGeometry, crop_face
    from device.preprocess import resize_square, to_gray

    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    geometry = CropGeometry(scale=1.0, shift_y=0.05)  # the defaults: side = the box's larger side, 5 % lower
    face = crop_face(frame, Box(100, 100, 148, 140, 0.9), geometry, 48)  # side 48, centre y 120 + 2.4
    np.testing.assert_array_equal(face, to_gray(frame[98:146, 100:148]))
    corner = crop_face(frame, Box(600, 450, 640, 480, 0.9), geometry, 48)  # a 40-px square pushed inside
    np.testing.assert_array_equal(corner, resize_square(to_gray(frame[440:480, 600:640]), 48))
    wide = crop_face(frame, Box(100, 100, 148, 140, 0.9), CropGeometry(scale=1.5, shift_y=0.0), 48)
    np.testing.assert_array_equal(wide, resize_square(to_gray(frame[84:156, 88:160]), 48))


def test_the_defaults_are_the_ones_the_readme_promises():
    from conftest import ROOT

    cfg, readme = load_config(None), " ".join((ROOT / "README.md").read_text().split())
    promises = {
        "a face was seen in the 1.5 s before it": cfg["button"]["face_window_s"] == 1.5,
        "Presses within 3 s of an accepted one are ignored": cfg["button"]["cooldown_s"] == 3.0,
        "averaged over 1 s, forgotten 2 s after the face left": (cfg["smoothing"]["window_s"],
                                                                 cfg["smoothing"]["reset_after_s"]) == (1.0, 2.0),
        '"Not sure" below 40 %': cfg["smoothing"]["min_confidence"] == 0.4,
        "confidence 0.5": cfg["detector"]["confidence"] == 0.5,
        '"Thank you!" for 2 s': cfg["display"]["thank_you_s"] == 2.0,
        "Default 1 to 5 stars: " + ", ".join(f"{e} {r}" for e, r in cfg["rating"]["map"].items()):
            cfg["rating"]["max"] == 5,
    }
    for sentence, holds in promises.items():
        assert sentence in readme and holds, sentence


def test_the_customer_is_the_largest_most_central_face():
    frame = (480, 640, 3)
    central = Box(230, 150, 410, 330, 0.9)  # 180 px, in the middle
    at_the_edge = Box(440, 0, 640, 200, 0.99)  # 200 px, by the frame's corner
    small_central = Box(300, 220, 340, 260, 0.9)
    large_off_centre = Box(100, 100, 300, 300, 0.9)
    assert choose_face([at_the_edge, central], frame) == central
    assert choose_face([small_central, large_off_centre], frame) == large_off_centre
    assert choose_face([], frame) is None


def test_the_face_followed_keeps_its_place_against_a_companion_of_about_its_score():
    """Two faces of about the same score would swap with the detector's jitter, each swap restarting
    the reading (and a press logging whichever won last); only a clearly better one takes over."""
    frame = (480, 640, 3)
    customer = Box(265, 180, 375, 300, 0.9)  # central, 110 x 120
    companion = Box(60, 60, 200, 200, 0.9)  # off-centre, 140 x 140: scores a little higher
    assert choose_face([customer, companion], frame) == companion  # nobody followed yet: the better score
    jittered = Box(261, 184, 371, 304, 0.9)
    assert choose_face([jittered, companion], frame, follow=customer) == jittered
    close = Box(150, 60, 450, 360, 0.9)  # someone leaning in, far larger
    assert choose_face([customer, close], frame, follow=customer) == close
    assert choose_face([companion], frame, follow=customer) == companion  # the customer left


MEMLOCK_CHILD = """
import resource, sys
import numpy as np
from device.memlock import lock_memory
if sys.argv[1] == "unlimited":  # what the unit's LimitMEMLOCK=infinity gives; root may raise it itself
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE (a container's root)
        caps = int(next(x for x in open("/proc/self/status") if x.startswith("CapEff")).split()[1], 16)
        if not caps >> 14 & 1:
            sys.exit(77)  # nor CAP_IPC_LOCK: no lock could be taken
        # CAP_IPC_LOCK: the kernel lets this process lock past any RLIMIT_MEMLOCK, so no allocation
        # can fail for the lock, as under an unlimited one: lock_memory's check is shown that one
        real = resource.getrlimit
        resource.getrlimit = lambda which: (
            (resource.RLIM_INFINITY,) * 2 if which == resource.RLIMIT_MEMLOCK else real(which))
else:
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (min(64 << 10, hard), hard))
def locked_kb():
    return int(next(x for x in open("/proc/self/status") if x.startswith("VmLck")).split()[1])
why = lock_memory()
before = locked_kb()
frame = np.ones((64, 1024, 1024), np.uint8)  # 64 MB, touched: a burst of camera frames
print(why, before, locked_kb())
"""


def test_run_and_check_make_themselves_undumpable_before_a_frame(tmp_path, monkeypatch):
    """A crash of `make run` or `sudo feedbackd check` (outside the unit's LimitCORE=0) must leave
    no core file holding camera frames, whatever `ulimit -c` says: the kernel's own flag is read back."""
    from device import cli, sources

    code = ("import ctypes, sys, device.memlock as m; get = lambda: ctypes.CDLL(None).prctl(3, 0, 0, 0, 0); "
            "before = get(); why = m.no_core_dumps(); print(before, get(), why)")  # 3: PR_GET_DUMPABLE
    said = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert said.stdout.split() == ["1", "0", "None"]
    events, open_source = [], sources.open_source
    monkeypatch.setattr(cli, "no_core_dumps", lambda: events.append("undumpable"))
    monkeypatch.setattr(sources, "open_source", lambda cfg: (events.append("camera"), open_source(cfg))[1])
    png = ["--display", "png", "--png-path", str(tmp_path / "s.png")]
    assert cli.main(["run", "--source", "demo", *png, "--button", "none", "--model", str(tmp_path / "none.tflite"),
                     "--db", str(tmp_path / "f.db")]) == 2  # it stops at the missing model: the call came first
    assert events == ["undumpable"]
    skip = [f"--skip={p}" for p in cli.CHECK_PARTS if p != "camera"]
    assert cli.main(["check", "--source", "demo", *png, *skip]) == 0
    assert events == ["undumpable", "undumpable", "camera"]  # before the camera is opened, not after the parts


@pytest.mark.parametrize("limit", ["unlimited", "finite"])
def test_the_daemon_memory_is_kept_out_of_swap(limit):
    """Pages are locked as they are touched: a frame allocated later is locked too."""
    r = subprocess.run([sys.executable, "-c", MEMLOCK_CHILD, limit], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).parent.parent)
    if r.returncode == 77:
        pytest.skip("this user may neither raise RLIMIT_MEMLOCK (the unit's LimitMEMLOCK=infinity does) "
                    "nor lock memory past it (CAP_IPC_LOCK)")
    assert r.returncode == 0, r.stderr
    why, before, after = r.stdout.rsplit(maxsplit=2)
    if limit == "unlimited":
        assert why == "None" and int(after) - int(before) >= 64 * 1024
    else:  # a finite limit: nothing locked, so allocations past it still succeed
        assert "RLIMIT_MEMLOCK is" in why and "not unlimited" in why and int(after) == 0


def test_every_gray_level_keeps_its_own_int8_input_value():
    """The shipped int8 model's input grid sits half a step off the pixels' (scale 4/255, zero point
    -1): each gray level is a tie, and rounding float32 noise merged 17 of them with a neighbour."""
    from device.model import quantize
    from device.preprocess import DEFAULT_SPEC, preprocess

    manifest = json.loads((ROOT / "models" / "fer_vgg16_int8.json").read_text())
    q = manifest["input"]["quantization"]
    faces = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    x = preprocess(faces, dataclasses.replace(DEFAULT_SPEC, size=16)).ravel()
    assert np.allclose((x / q["scale"] + q["zero_point"]) % 1, 0.5, atol=1e-4)  # every one a tie
    levels = quantize(x, q["scale"], q["zero_point"], np.int8)
    assert levels.dtype == np.int8 and (levels.astype(int) == np.arange(256) - 128).all()

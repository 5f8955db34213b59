"""What the customer sees: one renderer that draws every screen on a PIL canvas (luma's API),
and thin drivers that show the canvas on an OLED, an LCD, a terminal or a PNG file."""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from device.config import LCDS, wired

log = logging.getLogger("feedbackd")


class DisplayError(RuntimeError):
    """The configured display cannot be opened; names the setting."""


@dataclass(frozen=True)
class Screen:
    """kind: idle, live, thanks, no_face or error. For live/thanks: emotion (None = not
    sure), rating and the scale's top; for error: title and detail."""

    kind: str
    emotion: str | None = None
    rating: float | None = None
    rating_max: int = 5
    face: bool = False
    title: str = ""
    detail: str = ""

    def text(self) -> str:
        """One line for a terminal and for logs."""
        if self.kind == "idle":
            return "Look at the camera"
        if self.kind == "no_face":
            return "No face - try again"
        if self.kind == "error":
            return f"{self.title}: {self.detail}"
        stars = "" if self.rating is None else f" {stars_text(self.rating, self.rating_max)}"
        if self.kind == "thanks":
            return "Thank you!" + (f" {self.emotion}{stars}" if self.emotion else "")
        return (self.emotion or "Not sure") + stars


def full_stars(rating: float) -> int:
    """Halves round up: round() would draw 2 stars for a logged 2.5 and 4 for 3.5."""
    return math.floor(rating + 0.5)


def stars_text(rating: float, top: int) -> str:
    if top > 10:
        return f"{rating:g}/{top}"
    full = full_stars(rating)
    return "*" * full + "." * (top - full)


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _centered(draw: ImageDraw.ImageDraw, y: int, text: str, size: int, width: int, fill,
              room: float | None = None) -> None:
    """`text` centred on a line `width` wide, shrunk to fit within `room` of it (default: all)."""
    f = font(size)
    while size > 8 and draw.textlength(text, font=f) > (room or width) - 4:  # shrink long words to fit
        size -= 1
        f = font(size)
    x = (width - draw.textlength(text, font=f)) / 2
    draw.text((x, y), text, font=f, fill=fill)


MIN_DETAIL_SIZE = 9  # the smallest type whose letters stay whole on a 1-bit OLED (at 8, t and f lose their bars)


def _detail_words(detail: str) -> list[str]:
    """An error's detail in words, a path as its file name only (the journal has the rest)."""
    return re.sub(r"(?<!\S)/(?:[^\s/]+/)+", "", detail).split()


def _fits(draw: ImageDraw.ImageDraw, text: str, size: int, width: int) -> bool:
    return draw.textlength(text, font=font(size)) <= width - 2  # a pixel clear of each edge


def detail_size(draw: ImageDraw.ImageDraw, detail: str, size: int, width: int) -> int:
    """The largest type up to `size` in which each word of an error's detail fits a line: "feedback"
    on an upright 64-pixel panel shrinks rather than breaking mid-word. A word too long even in
    MIN_DETAIL_SIZE (a file name, a hash) is broken, in `size`."""
    words = _detail_words(detail)
    return next((s for s in range(size, MIN_DETAIL_SIZE - 1, -1) if all(_fits(draw, w, s, width) for w in words)),
                size)


def detail_lines(draw: ImageDraw.ImageDraw, detail: str, size: int, width: int, most: int) -> list[str]:
    """An error's detail in lines that fit: a path shows only its file name (the journal has the
    rest), and a detail too long for `most` lines ends in '...' rather than being cut mid-screen."""
    def fits(text: str) -> bool:
        return _fits(draw, text, size, width)

    words = []
    for word in _detail_words(detail):
        while not fits(word):  # a file name wider than a portrait panel: broken, not clipped
            cut = next(n for n in range(len(word) - 1, 0, -1) if fits(word[:n]))
            words.append(word[:cut])
            word = word[cut:]
        words.append(word)
    lines, line = [], ""
    for word in words:
        test = f"{line} {word}".strip()
        if line and not fits(test):
            lines.append(line)
            line = word
        else:
            line = test
    lines.append(line)
    if len(lines) > most:
        lines, cut = lines[:most], lines[most - 1].split()
        while len(cut) > 1 and not fits(" ".join(cut) + " ..."):
            cut.pop()
        while len(cut[0]) > 1 and not fits(cut[0] + " ..."):  # one piece of a broken word: shortened
            cut[0] = cut[0][:-1]
        lines[-1] = " ".join(cut) + " ..."
    return lines


def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, filled: bool, fill) -> None:
    pts = []
    for i in range(10):
        rr = r if i % 2 == 0 else r * 0.45
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    draw.polygon(pts, fill=fill if filled else None, outline=fill)


MIN_STAR_R = 5.0  # smaller stars run into one line, a full one hardly told from an empty one


def _rating(d: ImageDraw.ImageDraw, screen: Screen, w: int, bottom: float, r: float, size: int, fill) -> None:
    """The rating above `bottom`: a star each, of radius `r` at most, up to 10; "73/100" beyond, and
    "7/10" where the stars would be too small to read (a 128x64 OLED turned upright, 64 wide)."""
    n = screen.rating_max
    if n > 10 or w / (2.3 * n) < MIN_STAR_R:
        _centered(d, int(bottom) - int(1.1 * size), f"{screen.rating:g}/{n}", size, w, fill)
        return
    r = min(w / (2.3 * n), r)
    for i in range(n):
        _star(d, w / 2 + (i - (n - 1) / 2) * 2.2 * r, bottom - r, r, i < full_stars(screen.rating), fill)


def render(screen: Screen, size: tuple[int, int], mode: str) -> Image.Image:
    """Draw one screen; sizes scale from the 128x64 layout so text stays legible there."""
    w, h = size
    img = Image.new(mode, size, "black")
    d = ImageDraw.Draw(img)
    white = "white"
    accent = {"error": "red", "thanks": "lime"}.get(screen.kind, white) if mode == "RGB" else white
    if h < 48:  # a 128x32 strip: the layout below would shrink every word to 8 pixels
        _strip(screen, d, w, h, accent)
        return img
    u = min(w, h) / 64  # layout unit: a portrait 64x128 OLED keeps the 128x64 sizes
    if screen.kind == "idle":
        _centered(d, int(12 * u), "Look at the", int(15 * u), w, white)
        _centered(d, int(32 * u), "camera", int(15 * u), w, white)
    elif screen.kind == "no_face":
        _centered(d, int(10 * u), "No face", int(18 * u), w, white)
        _centered(d, int(36 * u), "try again", int(14 * u), w, white)
    elif screen.kind == "error":
        # the title a word a line where the panel is too narrow for it (an upright OLED): shrunk to fit
        # on one, "Storage error" fell to 8 pixels, which a 1-bit panel draws as "Slorage"
        size = detail_size(d, screen.title, int(16 * u), w)
        title = detail_lines(d, screen.title, size, w, 2)
        for i, text in enumerate(title):
            _centered(d, int(6 * u) + i * int(1.1 * size), text, size, w, accent, room=w + 2)
        top = max(int(28 * u), int(6 * u) + len(title) * int(1.1 * size) + int(4 * u))
        size = max(MIN_DETAIL_SIZE, int(9 * w / 128))  # sized by width: as many words a line on any panel
        size = detail_size(d, screen.detail, size, w)
        pitch = int(1.25 * size)
        for i, text in enumerate(detail_lines(d, screen.detail, size, w, (h - 2 - top - size) // pitch + 1)):
            _centered(d, top + i * pitch, text, size, w, white, room=w + 2)  # fitted already, to _fits' margin
    else:  # live or thanks
        top = 0
        if screen.kind == "thanks" and not screen.emotion:  # a reading not sure: the thanks alone, centred
            _centered(d, (h - int(18 * u)) // 2, "Thank you!", int(18 * u), w, accent)
            return img
        if screen.kind == "thanks":
            _centered(d, 0, "Thank you!", int(13 * u), w, accent)
            top = int(15 * u)
        elif h > w:  # upright (a 128x64 OLED is 64 wide): the face dot above the label, not beside it
            top = int(7 * u)
        # beside the face dot, clear of it ("Disgusted" on an LCD); elsewhere the panel's whole width
        room = w - 16 * u if screen.kind == "live" and h <= w else w
        _centered(d, top + int(2 * u), screen.emotion or "Not sure", int(18 * u), w, white, room=room)
        if screen.rating is not None and screen.emotion:
            _rating(d, screen, w, h - 3 * u, 9 * u, int(14 * u), white)
        if screen.face and screen.kind == "live":
            d.ellipse((w - 7 * u, 2 * u, w - 2 * u, 7 * u), fill=white)
    return img


def _strip(screen: Screen, d: ImageDraw.ImageDraw, w: int, h: int, accent) -> None:
    """Each screen in at most two lines of large type (an error: its title above two smaller lines of
    detail), its text nearly as large as on the 128x64 layout."""
    white = "white"
    if screen.kind == "idle":
        _centered(d, h // 2 - 9, "Look at the camera", 14, w, white)
    elif screen.kind == "no_face":
        _centered(d, 0, "No face", 14, w, white)
        _centered(d, 16, "try again", 12, w, white)
    elif screen.kind == "error":
        _centered(d, -2, screen.title, 11, w, accent)  # its descenders clear of the detail below
        for i, text in enumerate(detail_lines(d, screen.detail, 9, w, 2)):
            _centered(d, 11 + 10 * i, text, 9, w, white, room=w + 2)
    elif screen.kind == "thanks" and not (screen.emotion and screen.rating is not None):
        _centered(d, h // 2 - 10, "Thank you!", 16, w, accent)
    else:  # live, or thanks with its rating: the emotion (the thanks) above, the rating below
        top = "Thank you!" if screen.kind == "thanks" else screen.emotion or "Not sure"
        _centered(d, 0, top, 14, w, accent if screen.kind == "thanks" else white, room=w - 18)
        if screen.rating is not None and screen.emotion:
            _rating(d, screen, w, h - 1, 6, 12, white)
        if screen.face and screen.kind == "live":
            d.ellipse((w - 7, 2, w - 2, 7), fill=white)


class PngDisplay:
    """Writes the current screen to a PNG (atomically): for docs, tests and a desk. `size` is the
    panel's, as luma takes it, and `rotate` its mounting: the screen is drawn at the size a luma device
    so turned has (64x128 for 1 or 3) and written upright, as a customer reads the mounted panel."""

    def __init__(self, path: str | Path, size: tuple[int, int] = (128, 64), mode: str = "1", rotate: int = 0):
        width, height = size
        self.path, self.size, self.mode = Path(path), (height, width) if rotate % 2 else size, mode
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def display(self, image: Image.Image) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        image.save(tmp, format="PNG")
        os.replace(tmp, self.path)


class TerminalDisplay:
    """Prints each new screen as one line on stdout (for a desk); a change its line does not show
    (the face dot) prints nothing."""

    size, mode = (128, 64), "1"

    def __init__(self, stream=None):
        self.stream, self.last = stream or sys.stdout, ""

    def show(self, screen: Screen) -> None:
        if screen.text() != self.last:
            self.last = screen.text()
            print(f"[screen] {self.last}", file=self.stream, flush=True)


class Display:
    """Shows screens on a driver; draws only when the screen changed. A failed write (a loose
    I2C/SPI cable) is logged and retried on the next frame: the kiosk keeps logging feedback.
    With `set_up`, a panel that answers again after a failure has its set-up commands sent again
    (at most every `set_up_s`): one that lost power came back blank, its set-up forgotten, though
    writes to it succeed. A power dip that no write saw fails nothing, so an idle or error screen,
    which may stay up for hours, also sets the panel up afresh every `refresh_s` (a brief blink)."""

    def __init__(self, device, set_up: Callable[[], None] | None = None, set_up_s: float = 2.0,
                 refresh_s: float = 60.0):
        self.device = device
        self.current: Screen | None = None
        self.error: str | None = None
        self._set_up, self._set_up_s, self._set_up_at = set_up, set_up_s, 0.0
        self._refresh_s, self._refresh_at = refresh_s, time.monotonic() + refresh_s

    def show(self, screen: Screen) -> bool:
        now = time.monotonic()
        refresh = self._set_up is not None and screen.kind in ("idle", "error") and now >= self._refresh_at
        if screen == self.current and not refresh:
            return False
        try:
            if refresh:
                self._refresh_at = now + self._refresh_s
                self._set_up()
            self._draw(screen)
            if self.error is not None and self._set_up is not None:  # it answers again
                self._set_up_again()
                self._draw(screen)
        except (OSError, _luma_error(), DisplayError) as e:
            if self.error is None:
                log.error("display: cannot draw (%s); retrying every frame", e)
            self.error, self.current = str(e), None
            return False
        if self.error is not None:
            log.info("display: drawing again")
        self.current, self.error = screen, None
        return True

    def _draw(self, screen: Screen) -> None:
        if isinstance(self.device, TerminalDisplay):
            self.device.show(screen)
        elif self.device is not None:
            self.device.display(render(screen, self.device.size, self.device.mode))

    def _set_up_again(self) -> None:
        now = time.monotonic()
        if now < self._set_up_at:  # a flapping cable: not a set-up every frame
            raise DisplayError(self.error)
        self._set_up_at = now + self._set_up_s
        self._set_up()

    def halt(self, screen: Screen) -> None:
        """Show `screen` as the process's last. luma's exit hook would switch the panel off and clear
        it, and even told to persist, an LCD's would release its backlight, DC and reset pins (left
        floating, the light goes out): the error a technician must read while systemd waits to
        restart the service. The process ends soon, and its end frees the bus and pins."""
        self.show(screen)
        if hasattr(self.device, "cleanup"):
            self.device.cleanup = lambda: None


class _Recording:
    """A luma serial interface that notes the set-up sent through it until `set_up()`, to send it
    again without re-running luma's __init__. `pauses` are the waits after some commands: luma's
    init runs on a panel just powered on, a replay may hit one that is running."""

    FRAME_BYTES = 64  # a longer data write is a picture, not a setting: the next draw sends its own

    def __init__(self, serial, pauses: dict[int, float] | None = None):
        self.serial, self.sent, self.pauses = serial, [], pauses or {}

    def command(self, *cmd: int) -> None:
        self._send(self.serial.command, cmd, self.pauses.get(cmd[0], 0.0))

    def data(self, data) -> None:
        self._send(self.serial.data, (data,), None if len(data) > self.FRAME_BYTES else 0.0)

    def _send(self, write: Callable, args: tuple, pause: float | None) -> None:
        write(*args)
        if self.sent is not None and pause is not None:
            self.sent.append((write, args, pause))
            if pause:  # luma's own set-up sends reset and sleep-out back to back (luma.lcd issue #82)
                time.sleep(pause)

    def cleanup(self) -> None:
        self.serial.cleanup()

    def set_up(self) -> Callable[[], None]:
        """Stop noting and return what sends the noted set-up again."""
        sent, self.sent = self.sent, None

        def set_up() -> None:
            for write, args, pause in sent:
                write(*args)
                if pause:
                    time.sleep(pause)
        return set_up


LCD_PAUSES = {0x01: 0.15, 0x11: 0.12}  # after software reset and sleep out: the datasheets' waits (luma's 120 ms too)


def _luma_error() -> type[Exception]:
    """luma turns I2C/SPI OSErrors into its own exceptions (a loose cable is DeviceNotFoundError)."""
    try:
        from luma.core.error import Error
    except ImportError:  # no luma: only the terminal and PNG drivers, which raise OSError
        return OSError
    return Error


def panel_size(cfg: dict) -> tuple[int, int]:
    """display.size ("128x32") as luma's width and height."""
    width, height = cfg["size"].split("x")
    return int(width), int(height)


def _always_lit(on: bool) -> None:
    """The backlight of an LCD whose BL pin is wired to 3V3: there is nothing to switch."""


def open_display(cfg: dict) -> Display:
    """The configured driver; a hardware driver that cannot start is a DisplayError."""
    try:
        return _open_display(cfg)
    except DisplayError as e:  # it says what to do
        raise DisplayError(f"display.driver = {cfg['driver']!r}: cannot open the display: {e}") from None
    except Exception as e:  # luma and smbus/spidev raise their own kinds; all mean the same here
        raise DisplayError(f"display.driver = {cfg['driver']!r}: cannot open the display "
                           f"({type(e).__name__}: {e}); check the wiring and [display]") from None


def _open_display(cfg: dict) -> Display:
    """The luma hardware drivers are imported only here."""
    driver = cfg["driver"]
    if driver == "none":
        return Display(None)
    if driver == "terminal":
        return Display(TerminalDisplay())
    if driver == "png":
        return Display(PngDisplay(cfg["png_path"], panel_size(cfg), rotate=cfg["rotate"]))
    if driver in ("ssd1306", "sh1106"):
        from luma.core.interface.serial import i2c
        from luma.oled import device as oled

        serial = _Recording(i2c(port=cfg["i2c_port"], address=cfg["i2c_address"]))
        width, height = panel_size(cfg)
        panel = getattr(oled, driver)(serial, width=width, height=height, rotate=cfg["rotate"])
        # luma sends the set-up in __init__ only, and each __init__ adds an exit hook: what it sent
        # is replayed instead (it writes the whole frame each time, so the next draw fills the
        # panel's memory again)
        return Display(panel, set_up=serial.set_up())
    if driver in LCDS:  # SPI has no acknowledgement: a panel that lost power is found only by the refresh
        from luma.core.error import DeviceNotFoundError
        from luma.core.framebuffer import full_frame
        from luma.core.interface.serial import spi
        from luma.lcd import device as lcd

        port, chip = cfg["spi_port"], cfg["spi_device"]
        # the reset pin held and then waited on as the datasheets ask (ILI9341: 10 us, then 5 ms, or
        # 120 ms for a panel that was running): luma's default is no wait, and the first commands are lost
        try:
            bus = spi(port=port, device=chip, gpio_DC=cfg["gpio_dc"], gpio_RST=wired(cfg["gpio_rst"]),
                      reset_hold_time=0.01, reset_release_time=0.15)
        except DeviceNotFoundError as e:  # luma's word for no /dev/spidevP.D: SPI is off, whatever the wiring
            turn_on = ("sudo raspi-config nonint do_spi 0" if port == 0 else
                       f"dtoverlay=spi{port}-{chip + 1}cs in /boot/firmware/config.txt, then reboot")
            raise DisplayError(f"{e}: /dev/spidev{port}.{chip} is missing: enable SPI ({turn_on})") from None
        serial = _Recording(bus, pauses=LCD_PAUSES)
        # a whole frame each draw, as luma's st7789 does, so a panel set up afresh is filled again;
        # luma's bgr flips its own default order, which differs between the two
        extra = {} if driver == "st7789" else {"bgr": cfg["swap_red_blue"], "framebuffer": full_frame()}
        if wired(cfg["gpio_backlight"]) is None:  # lit from 3V3: luma would drive its default pin instead
            extra["backlight"] = _always_lit
        else:
            extra["gpio_LIGHT"] = cfg["gpio_backlight"]
        panel = getattr(lcd, driver)(serial, rotate=cfg["rotate"], **extra)
        return Display(panel, set_up=serial.set_up())
    raise ValueError(f"unknown display driver {driver!r}")

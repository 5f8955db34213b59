"""The submit button: a gpiozero Button on a BCM pin (pull-up, debounced), an optional LED
that blinks when an entry is stored, and a keyboard stand-in (Enter) for a desk.

Every button only records presses; the daemon loop collects them with `presses()`, so the
cooldown and the 'was there a face' rule live in one place, above the hardware."""

from __future__ import annotations

import os
import sys
import threading
import time


class PressQueue:
    """Thread-safe press timestamps (monotonic seconds), filled from callbacks."""

    def __init__(self):
        self._lock = threading.Lock()
        self._presses: list[float] = []

    def press(self) -> None:
        with self._lock:
            self._presses.append(time.monotonic())

    def presses(self) -> list[float]:
        with self._lock:
            out, self._presses = self._presses, []
        return out


class GpioButton(PressQueue):
    """gpiozero Button; tests pass a MockFactory as pin_factory and drive the pin."""

    def __init__(self, pin: int, pull_up: bool = True, bounce_s: float = 0.05, led_pin: int = 0,
                 pin_factory=None):
        super().__init__()
        from gpiozero import LED, Button

        self.button = Button(pin, pull_up=pull_up, bounce_time=bounce_s or None, pin_factory=pin_factory)
        self.button.when_pressed = self.press
        self.led = LED(led_pin, pin_factory=pin_factory) if led_pin else None

    def acknowledge(self) -> None:
        """Blink the LED (if any) in the background: an entry was stored."""
        if self.led is not None:
            self.led.blink(on_time=0.15, off_time=0.1, n=2, background=True)

    def close(self) -> None:
        self.button.close()
        if self.led is not None:
            self.led.close()


class KeyboardButton(PressQueue):
    """Enter on stdin is a press (for a desk without GPIO)."""

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream or sys.stdin
        threading.Thread(target=self._read, name="keyboard-button", daemon=True).start()

    def _read(self) -> None:
        for _ in self.stream:
            self.press()

    def acknowledge(self) -> None:
        pass

    def close(self) -> None:
        pass


class NoButton(PressQueue):
    def acknowledge(self) -> None:
        pass

    def close(self) -> None:
        pass


def _reads_nothing(stream) -> bool:
    """Whether `stream` is /dev/null (or none): a service's standard input."""
    if stream is None:
        return True
    try:
        return os.path.samestat(os.fstat(stream.fileno()), os.stat(os.devnull))
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's captured stdin): not /dev/null
        return False


class ButtonError(RuntimeError):
    """The configured button cannot be opened; names the setting."""


def open_button(cfg: dict, pin_factory=None) -> PressQueue:
    kind = cfg["kind"]
    if kind == "gpio":
        try:
            return GpioButton(cfg["pin"], cfg["pull_up"], cfg["bounce_s"], cfg["led_pin"], pin_factory)
        except Exception as e:  # gpiozero's BadPinFactory, PinInvalidPin, GPIOPinInUse, lgpio errors...
            where = f"button.pin = {cfg['pin']}" + (f", button.led_pin = {cfg['led_pin']}" if cfg["led_pin"] else "")
            raise ButtonError(f"{where}: cannot open the GPIO ({type(e).__name__}: {e})") from None
    if kind == "keyboard":
        if _reads_nothing(sys.stdin):
            raise ButtonError('button.kind = "keyboard": standard input is /dev/null (as under systemd), so no '
                              'press could ever arrive; use "gpio" there, or on a desk run it from a terminal '
                              '(or with --button none)')
        return KeyboardButton()
    return NoButton()

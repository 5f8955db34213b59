"""Whether the system clock can be trusted: a Pi has no clock battery (a Pi 5 may have one), so
after a power cut it runs on fake-hwclock's last saved time until network time arrives, and
entries stored meanwhile carry a wrong date. Each entry records what was known."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

TIMESYNCD = Path("/run/systemd/timesync")  # systemd-timesyncd, Raspberry Pi OS's time client
RTC = Path("/sys/class/rtc/rtc0")  # the Pi 5's clock, kept by its battery through a power cut
# Before this version was written: an RTC that lost its battery's power starts again at 1970 or
# 2000, and fake-hwclock then sets a plausible but wrong time, so the RTC's own time is judged.
PLAUSIBLE_FROM = datetime(2026, 1, 1, tzinfo=UTC)


def set_from_rtc(rtc: Path = RTC) -> bool:
    """Whether the kernel set the clock at boot from an RTC (`hctosys`) that keeps a plausible time."""
    try:
        return ((rtc / "hctosys").read_text().strip() == "1"
                and int((rtc / "since_epoch").read_text()) >= PLAUSIBLE_FROM.timestamp())
    except (OSError, ValueError):  # no RTC, or one that cannot be read
        return False


def clock_source(timesyncd: Path = TIMESYNCD, rtc: Path = RTC) -> str | None:
    """What set the clock since boot: "network" (systemd-timesyncd touches `synchronized` under its
    runtime folder), "rtc" (the kernel at boot, from a battery-kept RTC), "" (neither: this Pi's
    own guess), None (another client keeps time, chrony: unknown)."""
    if (timesyncd / "synchronized").exists():
        return "network"
    if set_from_rtc(rtc):
        return "rtc"
    return "" if timesyncd.is_dir() else None


def clock_synced(timesyncd: Path = TIMESYNCD, rtc: Path = RTC) -> bool | None:
    """Whether an entry stored now carries a date to trust (None: unknown)."""
    source = clock_source(timesyncd, rtc)
    return None if source is None else bool(source)


def local_zone() -> str:
    """The zone entries are dated in (the Pi's, set by raspi-config): a kiosk left on the image's
    default would put a store's evening entries on the next day."""
    now = datetime.now().astimezone()
    return f"local time {now:%Y-%m-%d %H:%M} {now:%Z} (UTC{now:%z}), the zone entries are dated in"


def describe(source: str | None) -> str:
    if source is None:
        return "not managed by systemd-timesyncd: its synchronization is unknown here"
    if source == "network":
        return "synchronized with network time since boot"
    if source == "rtc":
        return "set from the RTC at boot (kept by its battery; no network time since)"
    return ("NOT synchronized since boot: entries carry this Pi's own guess of the time "
            "(connect it to a network, or fit an RTC battery and set the time once)")

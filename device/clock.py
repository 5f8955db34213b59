"""Whether the system clock can be trusted: a Pi has no clock battery (a Pi 5 may have one), so
after a power cut it runs on fake-hwclock's last saved time until network time arrives, and
entries stored meanwhile carry a wrong date. Each entry records what was known."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

TIMESYNCD = Path("/run/systemd/timesync")  # systemd-timesyncd, Raspberry Pi OS's time client


def clock_synced(timesyncd: Path = TIMESYNCD) -> bool | None:
    """True once systemd-timesyncd has synchronized the clock since boot (it touches
    `synchronized` under its runtime folder), False while it has not, None where another
    client keeps time (chrony, an RTC alone): unknown."""
    if (timesyncd / "synchronized").exists():
        return True
    return False if timesyncd.is_dir() else None


def local_zone() -> str:
    """The zone entries are dated in (the Pi's, set by raspi-config): a kiosk left on the image's
    default would put a store's evening entries on the next day."""
    now = datetime.now().astimezone()
    return f"local time {now:%Y-%m-%d %H:%M} {now:%Z} (UTC{now:%z}), the zone entries are dated in"


def describe(synced: bool | None) -> str:
    if synced is None:
        return "not managed by systemd-timesyncd: its synchronization is unknown here"
    if synced:
        return "synchronized with network time since boot"
    return ("NOT synchronized since boot: entries carry this Pi's own guess of the time "
            "(connect it to a network, or fit an RTC battery)")

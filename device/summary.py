"""What the store owner reads first: per day (or week, month, hour of the day), how many customers
left feedback, their mean rating and how the emotions were shared, from the log's rows
(`feedbackd summary`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, time

from device.preprocess import DISPLAY_NAMES
from device.storage import number


@dataclass
class Tally:
    label: str  # a period's label (`period`), or "all"
    entries: int = 0
    scales: Counter = field(default_factory=Counter)  # entries per scale top (None: unknown)
    rating_sums: Counter = field(default_factory=Counter)  # ratings summed per scale top
    emotions: Counter = field(default_factory=Counter)
    unsynced: int = 0  # stamped before the clock had network time, with no RTC to set it: the date may be wrong
    unlogged: int = 0  # stored before the log kept each entry's scale (v3): its scale is assumed
    unlogged_rerated: int = 0  # of those, counted at their emotion's rating in today's map
    unsure: int = 0  # under today's min_confidence ("Not sure"): counted under the most likely emotion
    rerated: int = 0  # rated on another scale or by an earlier map, counted at their emotion's rating now

    def add(self, row: dict, top: float | None, sure_from: float = 0.0,
            rerate: tuple[float, dict] | None = None) -> None:
        """`rerate`: the newest scale and today's map on it (`todays_map`), for an entry rated on
        another scale or by an earlier map; ratings follow from emotions (the shipped maps are not in
        proportion: Neutral is 3 of 5, 5 of 10), and one emotion counting differently by the month
        would read as a trend."""
        rating = row["rating"]
        if rerate and top and (now := rerate[1].get(row["emotion"])) is not None \
                and (top, rating) != (rerate[0], now):
            top, rating = rerate[0], now
            self.rerated += 1
            self.unlogged_rerated += row["rating_max"] is None
        self.entries += 1
        self.scales[top] += 1
        self.rating_sums[top] += rating
        self.emotions[row["emotion"]] += 1
        self.unsynced += row["clock_synced"] == 0
        self.unlogged += row["rating_max"] is None
        self.unsure += row["confidence"] < sure_from

    def mean_rating(self, scale: float | None) -> float:
        """The mean on `scale`: a rating given out of another top is converted in proportion (4 of 5
        is 8 of 10, 1 of 5 is 2 of 10)."""
        return sum(s * (scale / top if scale and top else 1) for top, s in self.rating_sums.items()) / self.entries


def countable(row: dict) -> bool:
    """Whether a row can be tallied: a damaged or hand-edited one (a date stored as bytes, "=5" for
    a rating, text for a scale) must not stop the owner's summary of the rest; `export` shows it."""
    return (isinstance(row["local_date"], str) and isinstance(row["emotion"], str) and number(row["rating"])
            and number(row["confidence"]) and (row["rating_max"] is None or number(row["rating_max"])))


PERIODS = {"day": "date", "week": "week", "month": "month", "hour": "hour"}  # --by, and its column's name


def period(row: dict, by: str) -> str | None:
    """The label of a countable row's period: its local date; its ISO week (2026-W49, Monday to Sunday),
    whose label sorts across a new year; its month; or its hour of the day over every date (09:00 is
    09:00-09:59), when staff are busiest. None for a hand-edited date or time that names none."""
    try:
        if by == "hour":
            return f"{time.fromisoformat(row['local_time']).hour:02d}:00"
        if by == "day":  # as stored, so a summary by day still shows a row whose date a hand edit bent
            return row["local_date"]
        day = date.fromisoformat(row["local_date"])
    except (TypeError, ValueError):
        return None
    if by == "week":
        year, week, _ = day.isocalendar()
        return f"{year:04d}-W{week:02d}"
    return f"{day.year:04d}-{day.month:02d}"


def scales(rows: Iterable[dict]) -> tuple[float | None, float | None]:
    """The oldest and the newest scale top among the rows that can be tallied: for a log whose own
    answer (`FeedbackLog.rating_scales`) is a damaged row's text."""
    oldest = newest = None
    for row in rows:
        if countable(row) and row["rating_max"] is not None:
            oldest = row["rating_max"] if oldest is None else oldest
            newest = row["rating_max"]
    return oldest, newest


def todays_map(rows: Iterable[dict], newest: float | None, config_map: dict | None = None) -> dict:
    """Each emotion's rating today, from the log itself: its rating in its newest entry on the
    `newest` scale, so a summary reads the same on the kiosk and on a PC holding a copy of the log;
    `config_map` (the config's rating.map, when it rates on `newest`) only for an emotion with no
    entry on that scale yet."""
    logged: dict = {}
    for row in rows:
        rating = row["rating"]  # one a damaged row could not have been given: it must not re-rate the rest
        if newest is not None and countable(row) and row["rating_max"] == newest and 0 <= rating <= newest \
                and rating == int(rating):
            logged[row["emotion"]] = rating
    return {**(config_map or {}), **logged}


def summarize(rows: Iterable[dict], unlogged: float | None = None, sure_from: float = 0.0,
              rerate: tuple[float, dict] | None = None, by: str = "day") -> tuple[list[Tally], int]:
    """One tally per `period`, oldest (or earliest hour) first, then one for all of them ([] for no
    rows), and how many rows were left out as not `countable` or in no period. An entry without a
    logged scale (stored before v3) is taken as rated out of `unlogged`; one under the kiosk's
    `sure_from` confidence (smoothing.min_confidence) is counted as "Not sure" too; one rated
    otherwise than by `rerate` (the newest scale and `todays_map`) is counted at its emotion's rating
    in that map."""
    periods: dict[str, Tally] = {}
    total = Tally("all")
    left_out = 0
    for row in rows:
        label = period(row, by) if countable(row) else None
        if label is None:
            left_out += 1
            continue
        top = row["rating_max"] or unlogged
        periods.setdefault(label, Tally(label)).add(row, top, sure_from, rerate)
        total.add(row, top, sure_from, rerate)
    return ([*(periods[p] for p in sorted(periods)), total] if total.entries else []), left_out


def format_table(tallies: list[Tally], scale: float | None = None, unlogged: float | None = None,
                 sure_from: float = 0.0, by: str = "day") -> str:
    """A plain-text table: period, entries, mean rating (out of `scale`, where the log says), then
    each emotion's share of the period. Entries without a logged scale, taken as out of `unlogged`,
    are counted in a note: a scale changed at the upgrade that began logging it halves or doubles
    their means, which only the owner can tell."""
    seen = set().union(*(t.emotions for t in tallies))
    emotions = [e for e in DISPLAY_NAMES if e in seen] + sorted(seen - set(DISPLAY_NAMES))
    header = f"{PERIODS[by]:<10} {'entries':>7} {'rating':>6}" + "".join(f" {e:>9}" for e in emotions)
    lines = [header]
    for t in tallies:
        shares = "".join(f" {t.emotions[e] / t.entries:>9.0%}" for e in emotions)
        lines.append(f"{t.label:<10} {t.entries:>7} {t.mean_rating(scale):>6.2f}{shares}")
    total = tallies[-1]
    if scale:
        rescaled = sum(n for top, n in total.scales.items() if top and top != scale)
        lines.append(f"ratings are out of {scale:g}, the scale of the log's newest entry" + (
            f"; {total.rerated} of these entries were rated on another or by an earlier rating.map and are counted "
            "at their emotion's rating in today's" if total.rerated else "") + (
            f"; {rescaled} of these entries were rated on another and are converted in proportion" if rescaled else ""))
    if scale and unlogged and total.unlogged:
        kept, rerated = total.unlogged - total.unlogged_rerated, total.unlogged_rerated
        lines.append(f"{total.unlogged} of these entries were stored before the log kept each entry's scale: " + (
            f"they are taken as out of {unlogged:g}, the first scale logged" if not rerated else
            "each is counted at its emotion's rating in today's rating.map" if not kept else
            f"{kept} are taken as out of {unlogged:g}, the first scale logged, and {rerated} are counted at "
            "their emotion's rating in today's rating.map"))
    if total.unsure:
        lines.append(f"{total.unsure} of these entries are under today's smoothing.min_confidence ({sure_from:.0%}), "
                     "which the kiosk thanks as \"Not sure\": each is counted under the emotion the model found "
                     "most likely")
    if unsynced := total.unsynced:
        lines.append(f"{unsynced} of these entries were stored before the clock had network time, with no RTC "
                     "to set it: their dates and times may be wrong (clock_synced = no in the export)")
    return "\n".join(lines)

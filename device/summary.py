"""What the store owner reads first: per day, how many customers left feedback, their mean
rating and how the emotions were shared, from the log's rows (`feedbackd summary`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from device.preprocess import DISPLAY_NAMES


@dataclass
class Tally:
    label: str  # a local date, or "all"
    entries: int = 0
    rating_sum: float = 0.0
    emotions: Counter = field(default_factory=Counter)
    unsynced: int = 0  # stamped before the clock had network time: the date may be wrong

    def add(self, row: dict) -> None:
        self.entries += 1
        self.rating_sum += row["rating"]
        self.emotions[row["emotion"]] += 1
        self.unsynced += row["clock_synced"] == 0

    @property
    def mean_rating(self) -> float:
        return self.rating_sum / self.entries


def summarize(rows: Iterable[dict]) -> list[Tally]:
    """One tally per local date, oldest first, then one for all of them; [] for no rows."""
    days: dict[str, Tally] = {}
    total = Tally("all")
    for row in rows:
        days.setdefault(row["local_date"], Tally(row["local_date"])).add(row)
        total.add(row)
    return [*(days[d] for d in sorted(days)), total] if total.entries else []


def format_table(tallies: list[Tally]) -> str:
    """A plain-text table: date, entries, mean rating, then each emotion's share of the day."""
    seen = set().union(*(t.emotions for t in tallies))
    emotions = [e for e in DISPLAY_NAMES if e in seen] + sorted(seen - set(DISPLAY_NAMES))
    header = f"{'date':<10} {'entries':>7} {'rating':>6}" + "".join(f" {e:>9}" for e in emotions)
    lines = [header]
    for t in tallies:
        shares = "".join(f" {t.emotions[e] / t.entries:>9.0%}" for e in emotions)
        lines.append(f"{t.label:<10} {t.entries:>7} {t.mean_rating:>6.2f}{shares}")
    if unsynced := tallies[-1].unsynced:
        lines.append(f"{unsynced} of these entries were stored before the clock had network time: their "
                     "dates may be wrong (clock_synced = no in the export)")
    return "\n".join(lines)

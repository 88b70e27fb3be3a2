"""``--distill-schedule`` specs and their next fire times.

Three forms:

    nightly            every day at ``--distill-at`` (default 02:00), server local time
    every 6h           a fixed interval (s, m, h, d, w units: ``every 30s``, ``every 15m``,
                       ``every 1d12h``), counted from the previous claim
    0 3 * * 1-5        a 5-field cron expression (minute hour day-of-month month
                       day-of-week), server local time, evaluated by ``croniter``

Fire times are whole seconds, timezone-aware UTC. A schedule never fires once per missed
time: :meth:`Schedule.next_after` gives the first fire strictly after a moment, and the
scheduler asks it from the moment a due run is claimed (docs/loop.md).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

from reflex_serve.storage.maintenance import parse_duration

FLAG = "--distill-schedule"
EXAMPLES = "nightly, 'every 6h', 'every 30s', '0 3 * * *' (cron: minute hour day month weekday)"
DEFAULT_AT = "02:00"
_AT = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class ScheduleError(ValueError):
    """A schedule spec or ``--distill-at`` that cannot be used (the message names the flag
    and gives examples)."""


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule.

    Attributes:
        spec: the spec as stored (normalised: ``nightly@02:00``, ``every 6h``, or the
            cron expression with single spaces).
        kind: ``"cron"`` (nightly is a cron at ``mm hh * * *``) or ``"interval"``.
        cron: the cron expression (kind cron).
        interval: the interval (kind interval).
    """

    spec: str
    kind: str
    cron: str | None = None
    interval: timedelta | None = None

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after ``moment`` (aware; naive means UTC), as an
        aware UTC datetime in whole seconds."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if self.kind == "interval":
            at = moment + self.interval
            return datetime.fromtimestamp(math.ceil(at.timestamp()), UTC)
        # cron fields are local wall-clock time: iterate on naive local time, then let
        # the system's zone rules (DST included) place the result
        local = moment.astimezone().replace(tzinfo=None)
        nxt = croniter(self.cron, local).get_next(datetime)
        return nxt.astimezone().astimezone(UTC).replace(microsecond=0)

    def describe(self) -> str:
        """One line for logs and ``reflex runs``."""
        if self.kind == "interval":
            return f"every {self.interval.total_seconds():g} s"
        return f"cron '{self.cron}' (server local time)"


def parse_at(at: str) -> tuple[int, int]:
    """``HH:MM`` -> (hour, minute).

    Raises:
        ScheduleError: naming ``--distill-at``.
    """
    m = _AT.match(at.strip())
    if not m:
        raise ScheduleError(f"--distill-at {at!r} is not a time of day HH:MM (e.g. 02:00, 23:30)")
    return int(m.group(1)), int(m.group(2))


def parse_schedule(spec: str, at: str | None = None) -> Schedule:
    """Parse a ``--distill-schedule`` spec (module docstring).

    Args:
        spec: ``nightly``, ``every <duration>`` or a 5-field cron expression.
        at: ``--distill-at HH:MM``, only with ``nightly`` (default 02:00).

    Raises:
        ScheduleError: an unknown form, a bad interval or cron field, or ``at`` with a
            spec other than nightly; the message names the flag and gives examples.
    """
    text = " ".join(spec.strip().split())
    low = text.lower()
    if at is not None and low != "nightly":
        raise ScheduleError("--distill-at applies to --distill-schedule nightly only; "
                            f"put the time into a cron expression instead, got {spec!r}")
    if low.startswith("nightly@") and at is None:  # the stored, normalised form
        low, at = "nightly", low.split("@", 1)[1]
    if low == "nightly":
        hour, minute = parse_at(at or DEFAULT_AT)
        return Schedule(f"nightly@{hour:02d}:{minute:02d}", "cron", cron=f"{minute} {hour} * * *")
    if low.startswith("every"):
        rest = low[len("every"):].strip()
        try:
            interval = parse_duration(rest) if rest else None
        except ValueError as exc:
            raise ScheduleError(f"{FLAG} {spec!r}: {exc}") from None
        if interval is None or interval.total_seconds() < 1:
            raise ScheduleError(f"{FLAG} {spec!r}: the interval must be at least 1 s, "
                                f"e.g. 'every 6h'; examples: {EXAMPLES}")
        return Schedule(f"every {rest}", "interval", interval=interval)
    fields = text.split(" ")
    if len(fields) == 5:
        if croniter.is_valid(text):
            return Schedule(text, "cron", cron=text)
        raise ScheduleError(f"{FLAG} {spec!r} is not a valid cron expression "
                            f"(minute hour day-of-month month day-of-week); examples: {EXAMPLES}")
    raise ScheduleError(f"{FLAG} {spec!r} is not a schedule; use one of: {EXAMPLES}")

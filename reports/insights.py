"""A room's insights: the numbers (SQL aggregates and one streaming pass) and their charts.

compute() returns plain JSON-able data, which the insights page and the tests
read; save_charts() draws it with matplotlib's Agg backend (no display, no
pyplot global state, so it is safe in a worker thread).
"""

import heapq
import io
import logging
from collections import Counter
from datetime import date, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.db.models import Count
from django.db.models.functions import ExtractHour, ExtractIsoWeekDay, Lower, TruncDate
from django.utils import timezone
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from notifications.mentions import parse_mentions

from .export import Progress, batches, job_messages, job_range
from .models import Job
from .signals import finish_unless_deleted

logger = logging.getLogger(__name__)

# Messages less than this apart belong to the same thread of conversation.
THREAD_GAP = timedelta(minutes=5)
TOP = 10
TOP_THREADS = 5
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
# Charts are drawn at a phone's width (in CSS pixels at DPI 100) and rendered at
# twice that, so they stay sharp on high-density screens and on wider pages.
CHART_SIZE = (4.8, 3.0)
CHART_DPI = 100
CHART_SCALE = 2
# The per-day chart spans at least this many days, so a young room gets day
# ticks and a bar a day wide rather than hour ticks and one bar across the chart.
MIN_DAYS_SHOWN = 7


def compute(job: Job, progress: Progress) -> dict[str, Any]:
    """The insights of the job's room, up to its snapshot message."""
    messages = job_messages(job)
    total = messages.count()
    steps = total + 3  # the streaming pass, then three aggregates
    per_day = [
        [row["day"].isoformat(), row["n"]]
        for row in messages.annotate(day=TruncDate("created_at")).values("day").annotate(n=Count("id")).order_by("day")
    ]
    progress(1, steps, "messages per day")
    heatmap = [[0] * 24 for _ in WEEKDAYS]
    by_hour = messages.annotate(weekday=ExtractIsoWeekDay("created_at"), hour=ExtractHour("created_at"))
    for row in by_hour.values("weekday", "hour").annotate(n=Count("id")).order_by():
        heatmap[row["weekday"] - 1][row["hour"]] = row["n"]
    progress(2, steps, "activity by hour of week")
    top_posters = [
        [row["user__username"], row["n"]]
        for row in messages.values("user__username").annotate(n=Count("id")).order_by("-n", "user__username")[:TOP]
    ]
    progress(3, steps, "top posters")

    mentions: Counter[str] = Counter()
    threads = ThreadTracker()
    done = 3
    for batch in batches(messages, after_id=0):
        for id_, at, user_id, _, _, text in batch:
            mentions.update(parse_mentions(text)[0])
            threads.add(id_, at, user_id)
        done += len(batch)
        progress(done, steps, f"{done - 3:,} of {total:,} messages read")
    return {
        "room": job.room.label,
        "last_message_id": job.last_message_id,
        "computed_at": timezone.now().isoformat(),
        "messages": total,
        "per_day": per_day,
        "heatmap": heatmap,
        "top_posters": top_posters,
        "mentions": most_mentioned(mentions),
        "threads": threads.busiest(),
    }


def most_mentioned(mentions: Counter[str]) -> list[list]:
    """[handle, mentions] of the most mentioned users; handles of no user do not count."""
    User = get_user_model()
    found = dict(
        User.objects.annotate(lower=Lower("username"))
        .filter(lower__in=list(mentions))
        .values_list("lower", "username")
    ) if mentions else {}
    counted = [(handle, n) for lower, n in mentions.items() if (handle := found.get(lower))]
    return [list(pair) for pair in sorted(counted, key=lambda pair: (-pair[1], pair[0]))[:TOP]]


class ThreadTracker:
    """Cuts the message stream into threads (gaps under THREAD_GAP) and keeps the busiest."""

    def __init__(self) -> None:
        self.heap: list[tuple] = []
        self.current: dict[str, Any] | None = None

    def add(self, id_: int, at, user_id: int) -> None:
        thread = self.current
        if thread is None or at - thread["end"] >= THREAD_GAP:
            self._close()
            thread = self.current = {"first_id": id_, "start": at, "end": at, "messages": 0, "users": set()}
        thread["end"] = at
        thread["messages"] += 1
        thread["users"].add(user_id)

    def _close(self) -> None:
        thread = self.current
        if thread is None:
            return
        # Ties: the earlier thread wins (a larger -first_id is an earlier thread).
        entry = (thread["messages"], -thread["first_id"], thread)
        if len(self.heap) < TOP_THREADS:
            heapq.heappush(self.heap, entry)
        else:
            heapq.heappushpop(self.heap, entry)
        self.current = None

    def busiest(self) -> list[dict[str, Any]]:
        self._close()
        return [
            {
                "first_id": thread["first_id"],
                "start": thread["start"].isoformat(),
                "end": thread["end"].isoformat(),
                "messages": thread["messages"],
                "participants": len(thread["users"]),
                "minutes": round((thread["end"] - thread["start"]).total_seconds() / 60, 1),
            }
            for _, _, thread in sorted(self.heap, key=lambda entry: entry[:2], reverse=True)
        ]


def save_charts(job: Job, data: dict[str, Any], progress: Progress, changes_from: int) -> bool:
    """Draw the charts into storage and keep the numbers with them on the job; False,
    and nothing kept, if a message they counted was deleted after the room's change
    number `changes_from` (export.room_changes(), read before computing): compute again."""
    charts = {}
    for name, draw in CHARTS.items():
        figure = new_figure()
        draw(figure, data)
        buffer = io.BytesIO()
        FigureCanvasAgg(figure)
        figure.savefig(buffer, format="png", dpi=CHART_DPI * CHART_SCALE)
        stored = f"{job.storage_dir}/{name}.png"
        default_storage.delete(stored)  # a rerun after a dead worker
        charts[name] = default_storage.save(stored, io.BytesIO(buffer.getvalue()))
    data["charts"] = charts
    now = timezone.now()
    if not finish_unless_deleted(
        job, job_range(job), changes_from, result=data, finished_at=now,
        expires_at=now + settings.REPORTS_EXPORT_TTL,
    ):  # fmt: skip
        logger.info("event=insights_restarted job=%s reason=message_deleted", job.pk)
        return False
    steps = data["messages"] + 3
    progress(steps, steps, "charts drawn")
    logger.info("event=insights_finished job=%s messages=%d", job.pk, data["messages"])
    return True


def new_figure() -> Figure:
    """A blank chart of the size the insights page shows (its <img> width and height match)."""
    return Figure(figsize=CHART_SIZE, dpi=CHART_DPI, layout="constrained")


def _counts(axis) -> None:
    """Counts are whole: no 2.5 messages between two ticks."""
    axis.set_major_locator(MaxNLocator(integer=True))


def _empty(axes, data: list) -> bool:
    if data:
        return False
    axes.text(0.5, 0.5, "No messages yet", ha="center", va="center", transform=axes.transAxes)
    axes.set_axis_off()
    return True


def draw_per_day(figure: Figure, data: dict[str, Any]) -> None:
    axes = figure.subplots()
    axes.set_title("Messages per day")
    if _empty(axes, data["per_day"]):
        return
    days = [date.fromisoformat(day) for day, _ in data["per_day"]]
    shown = (days[-1] - days[0]).days
    span = max(shown + 1, MIN_DAYS_SHOWN)
    # A bar is 0.9 day wide, wider in a room years old so that it stays a pixel or more wide.
    axes.bar(days, [n for _, n in data["per_day"]], color="#3b6fd8", width=max(0.9, span / 300))
    pad = (span - shown) / 2
    axes.set_xlim(date2num(days[0]) - pad, date2num(days[-1]) + pad)
    # Whole days (or months, years) at any span; ConciseDateFormatter names the month/year once, not per tick.
    locator = AutoDateLocator(minticks=3, maxticks=8)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    _counts(axes.yaxis)
    axes.set_ylabel("messages")


def draw_heatmap(figure: Figure, data: dict[str, Any]) -> None:
    axes = figure.subplots()
    axes.set_title(f"Activity by hour of week ({settings.TIME_ZONE})")
    image = axes.imshow(data["heatmap"], aspect="auto", cmap="Blues")
    axes.set_yticks(range(7), WEEKDAYS)
    axes.set_xticks(range(0, 24, 3), [f"{h:02d}" for h in range(0, 24, 3)])
    axes.set_xlabel("hour")
    figure.colorbar(image, ax=axes, label="messages", ticks=MaxNLocator(integer=True))


def _draw_ranking(figure: Figure, rows: list, title: str, color: str) -> None:
    axes = figure.subplots()
    axes.set_title(title)
    if _empty(axes, rows):
        return
    handles = [f"@{handle}" for handle, _ in rows][::-1]
    axes.barh(handles, [n for _, n in rows][::-1], color=color)
    _counts(axes.xaxis)


def draw_top_posters(figure: Figure, data: dict[str, Any]) -> None:
    _draw_ranking(figure, data["top_posters"], "Top posters", "#3b6fd8")


def draw_mentions(figure: Figure, data: dict[str, Any]) -> None:
    _draw_ranking(figure, data["mentions"], "Most mentioned", "#d87f3b")


CHARTS = {
    "per_day": draw_per_day,
    "heatmap": draw_heatmap,
    "top_posters": draw_top_posters,
    "mentions": draw_mentions,
}

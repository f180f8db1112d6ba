"""Periodic schedules: tasks enqueued on a cron expression or an interval, by every worker.

Declared in code on top of `@task`:

    @schedule(cron="0 3 * * *", tz="Europe/London")
    @task(queue_name="default")
    def nightly() -> None: ...

There is no beat process. Every worker, on its heartbeat, enqueues the ticks
that are due (enqueue_due); a tick is a ScheduleTick row whose unique
(schedule, at) constraint, committed with its task in one transaction, makes it
enqueue exactly once however many workers race, and lets a worker die mid-way
without losing it (nothing committed: the next worker enqueues it).
"""

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from django.conf import settings
from django.core import checks
from django.db import IntegrityError, transaction
from django.tasks import Task
from django.utils import timezone

from .models import Schedule, ScheduleTick, TaskRecord

logger = logging.getLogger(__name__)

COALESCE, SKIP, EACH = "coalesce", "skip", "each"
MISSED = (COALESCE, SKIP, EACH)
# Ticks one worker enqueues per heartbeat at most: a long backlog (missed="each")
# is caught up over several beats rather than holding up the heartbeat.
TICKS_PER_BEAT = 20


@dataclass(frozen=True)
class Spec:
    """A schedule as declared in code."""

    name: str
    task: Any  # a django.tasks Task; anything else is a system-check error
    cron: str | None = None
    every: timedelta | None = None
    tz: str = "UTC"
    missed: str = COALESCE
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron} {self.tz}"
        return f"every {self.every.total_seconds():g}s" if isinstance(self.every, timedelta) else f"every {self.every}"

    def problems(self) -> list[str]:
        """What is wrong with this declaration, in words; empty when it can run."""
        found = []
        if not isinstance(self.task, Task):
            found.append("@schedule must be stacked on a @task (above it)")
        if (self.cron is None) == (self.every is None):
            return [*found, "give exactly one of cron= or every="]
        try:
            json.dumps([self.args, self.kwargs])
        except (TypeError, ValueError) as exc:
            found.append(f"args and kwargs must be JSON: {exc}")
        if self.missed not in MISSED:
            found.append(f"missed must be one of {', '.join(MISSED)}; got {self.missed!r}")
        if self.every is not None:
            if not isinstance(self.every, timedelta) or self.every < timedelta(seconds=1):
                found.append(f"every must be a timedelta or seconds, at least 1 s; got {self.every!r}")
            elif self.every.total_seconds() != int(self.every.total_seconds()):
                found.append(f"every must be whole seconds; got {self.every!r}")
            if self.tz != "UTC":
                found.append("tz applies to cron schedules only (intervals count from the Unix epoch)")
            return found
        try:
            zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            return [*found, f"unknown time zone {self.tz!r}"]
        try:
            if not isinstance(self.cron, str) or len(self.cron.split()) != 5:
                raise CronSimError("a cron expression has 5 fields: minute hour day-of-month month day-of-week")
            next(CronSim(self.cron, datetime.now(zone)))
        except (CronSimError, StopIteration) as exc:
            found.append(f"invalid cron expression {self.cron!r}: {exc}")
        return found

    def ticks_after(self, after: datetime):
        """The schedule's ticks strictly after `after`, in order, as UTC datetimes.

        Cron runs in the schedule's zone with cronsim's Debian-cron DST rules: a
        time the clocks skip runs once, at the jump; a time they pass twice runs
        once, the first time.
        """
        if self.every is not None:
            step = int(self.every.total_seconds())
            n = math.floor(after.timestamp() / step) + 1
            while True:
                yield datetime.fromtimestamp(n * step, UTC)
                n += 1
        for tick in CronSim(self.cron, after.astimezone(ZoneInfo(self.tz))):
            tick = tick.astimezone(UTC)
            # Wall-clock iteration can land on the first pass of an hour that
            # `after` is in the second pass of: that tick is already behind us.
            if tick > after:
                yield tick

    def first_after(self, after: datetime) -> datetime:
        return next(self.ticks_after(after))

    def due(self, start: datetime, now: datetime) -> tuple[datetime, int]:
        """The latest tick in [start, now] (start being a due tick), and how many earlier ones it stands for."""
        if self.every is not None:
            step = int(self.every.total_seconds())
            latest = datetime.fromtimestamp(math.floor(now.timestamp() / step) * step, UTC)
            return latest, round((latest - start).total_seconds() / step)
        latest, earlier = start, 0
        for tick in self.ticks_after(start):
            if tick > now:
                break
            latest, earlier = tick, earlier + 1
        return latest, earlier


registry: dict[str, Spec] = {}
duplicates: list[str] = []
# When this process loaded its schedules (sync: newer code's timetables win).
LOADED_AT = timezone.now()


def schedule(
    *,
    cron: str | None = None,
    every: timedelta | int | None = None,
    tz: str = "UTC",
    missed: str = COALESCE,
    name: str | None = None,
    args: tuple = (),
    kwargs: dict | None = None,
):
    """Run the task below on a cron expression (in `tz`) or `every` interval.

    After downtime, missed ticks run once (`missed="coalesce"`), not at all
    ("skip": a tick noticed more than TASKS_LEASE late is dropped), or once
    each ("each"). `name` defaults to the task's module path. Mistakes are
    reported by the system check (tasks.E010), not raised here.
    """

    def register(task: Task) -> Task:
        spec = Spec(
            name=name or getattr(task, "module_path", repr(task)),
            task=task, cron=cron, every=timedelta(seconds=every) if isinstance(every, int) else every,
            tz=tz, missed=missed, args=tuple(args), kwargs=dict(kwargs or {}),
        )  # fmt: skip
        if spec.name in registry and registry[spec.name] != spec:
            duplicates.append(spec.name)
        registry[spec.name] = spec
        return task

    return register


def check_schedules(app_configs, **kwargs) -> list[checks.Error]:
    """System check: every declared schedule must be runnable, so a bad one stops start-up, not a worker."""
    errors = [
        checks.Error(f"Schedule {name!r}: {problem}.", hint="See README, Periodic schedules.", id="tasks.E010")
        for name, spec in sorted(registry.items())
        for problem in spec.problems()
    ]
    errors += [
        checks.Error(f"Schedule {name!r} is declared twice; give one a name=.", id="tasks.E011")
        for name in sorted(set(duplicates))
    ]
    return errors


def runnable() -> dict[str, Spec]:
    return {name: spec for name, spec in registry.items() if not spec.problems()}


def sync(specs: dict[str, Spec], now: datetime) -> dict[str, Schedule]:
    """The rows of the schedules in code, as this process's code has them.

    New ones are created (first tick after now). A row whose timetable differs
    from ours is re-timed to ours (from its next tick), unless a process that
    loaded its code after this one wrote it: during a rolling deploy the old
    workers leave the new timetable alone, and do not tick that schedule.
    """
    rows = {row.name: row for row in Schedule.objects.filter(name__in=specs)}
    missing = [
        Schedule(name=name, spec=spec.describe(), next_tick=spec.first_after(now), code_loaded_at=LOADED_AT)
        for name, spec in specs.items()
        if name not in rows
    ]
    if missing:
        Schedule.objects.bulk_create(missing, ignore_conflicts=True)
        rows.update({row.name: row for row in Schedule.objects.filter(name__in=[row.name for row in missing])})
    ours = {}
    for row in rows.values():
        spec = specs[row.name]
        if row.spec != spec.describe():
            if row.code_loaded_at is not None and row.code_loaded_at > LOADED_AT:
                continue
            old, row.spec, row.next_tick = row.spec, spec.describe(), spec.first_after(now)
            if not Schedule.objects.filter(pk=row.pk, spec=old).update(
                spec=row.spec, next_tick=row.next_tick, code_loaded_at=LOADED_AT
            ):
                continue  # another process re-timed it meanwhile
            logger.info("event=schedule_retimed name=%s spec=%r next_tick=%s", row.name, row.spec, row.next_tick)
        ours[row.name] = row
    return ours


def enqueue_due(now: datetime | None = None, limit: int = TICKS_PER_BEAT) -> int:
    """Enqueue the due ticks of the schedules in code, at most `limit`; how many were enqueued.

    Called by every worker on its heartbeat. Paused schedules, and rows of
    schedules no longer in code, are left alone.
    """
    now = now or timezone.now()
    specs = runnable()
    if not specs:
        return 0
    rows = sync(specs, now)
    due = sorted(
        (row for row in rows.values() if not row.paused and row.next_tick is not None and row.next_tick <= now),
        key=lambda row: row.next_tick,
    )
    enqueued = 0
    for row in due:
        spec = specs[row.name]
        while enqueued < limit:
            try:
                outcome = enqueue_tick(spec, now)
            except Exception:
                # One schedule's failure (its database row, its task's enqueue) must not hold up the others.
                logger.exception("event=schedule_failed name=%s", spec.name)
                break
            if outcome is None:
                break
            enqueued += outcome
            if spec.missed != EACH:
                break
    return enqueued


def enqueue_tick(spec: Spec, now: datetime) -> int | None:
    """Enqueue (or skip) this schedule's next due tick: 1 if a task was enqueued, 0 if a missed
    tick was skipped, None when there is nothing to do (not due, paused, or another worker has it)."""
    with transaction.atomic():
        # On PostgreSQL a worker already at it holds the row: skip it rather than wait.
        row = (
            Schedule.objects.select_for_update(skip_locked=True)
            .filter(name=spec.name, spec=spec.describe(), paused=False, next_tick__lte=now)
            .first()
        )
        if row is None:
            return None
        if spec.missed == EACH:
            tick, coalesced = row.next_tick, 0
        else:
            tick, coalesced = spec.due(row.next_tick, now)
        following = spec.first_after(tick)
        if spec.missed == SKIP and (now - tick).total_seconds() > settings.TASKS_LEASE:
            advanced = Schedule.objects.filter(pk=row.pk, next_tick=row.next_tick).update(next_tick=following)
            if advanced:
                logger.warning("event=schedule_skipped name=%s tick=%s missed=%s", spec.name, tick.isoformat(),
                               coalesced + 1)  # fmt: skip
            return 0 if advanced else None
        try:
            with transaction.atomic():  # a savepoint: a lost race takes the task back with it
                result = spec.task.enqueue(*spec.args, **spec.kwargs)
                ScheduleTick.objects.create(schedule=row, at=tick, task_id=result.id, coalesced=coalesced)
        except IntegrityError:
            # Another worker enqueued this tick (SQLite has no row locks to skip): catch up with it.
            taken = ScheduleTick.objects.get(schedule=row, at=tick)
            Schedule.objects.filter(pk=row.pk, next_tick=row.next_tick).update(
                next_tick=following, last_tick=tick, last_task_id=taken.task_id
            )
            return None
        Schedule.objects.filter(pk=row.pk).update(next_tick=following, last_tick=tick, last_task_id=result.id)
    logger.info(
        "event=schedule_tick name=%s tick=%s task=%s coalesced=%s next_tick=%s",
        spec.name, tick.isoformat(), result.id, coalesced, following.isoformat(),
    )  # fmt: skip
    return 1


def set_paused(name: str, paused: bool, now: datetime | None = None) -> bool:
    """Pause or resume a schedule; False if there is no such schedule.

    Ticks that fall while a schedule is paused are dropped: on resume it waits
    for its next tick rather than running the missed ones.
    """
    now = now or timezone.now()
    specs = runnable()
    sync(specs, now)
    updates: dict[str, Any] = {"paused": paused}
    if not paused and name in specs:
        updates["next_tick"] = specs[name].first_after(now)
    changed = Schedule.objects.filter(name=name).update(**updates)
    if changed:
        logger.info("event=schedule_%s name=%s", "paused" if paused else "resumed", name)
    return bool(changed)


def listing(now: datetime | None = None) -> list[dict[str, Any]]:
    """Every schedule, in code or left in the database, with its next and last tick and that tick's outcome."""
    now = now or timezone.now()
    rows = {row.name: row for row in Schedule.objects.all()}
    outcomes = dict(
        TaskRecord.objects.filter(pk__in=[row.last_task_id for row in rows.values() if row.last_task_id])
        .values_list("pk", "status")
    )  # fmt: skip
    found = []
    for name in sorted(set(registry) | set(rows)):
        spec, row = registry.get(name), rows.get(name)
        problems = spec.problems() if spec else []
        if spec is None:
            state, next_tick = "removed from code", None
        elif problems:
            state, next_tick = "invalid: " + "; ".join(problems), None
        elif row is not None and row.paused:
            state, next_tick = "paused", None
        else:
            state = "active"
            next_tick = row.next_tick if row is not None and row.spec == spec.describe() else spec.first_after(now)
        last_task = row.last_task_id if row else None
        found.append({
            "name": name,
            "task": spec.task.module_path if spec and not problems else "",
            "when": spec.describe() if spec else row.spec,
            "missed": spec.missed if spec else "",
            "state": state,
            "next_tick": next_tick.isoformat() if next_tick else None,
            "last_tick": row.last_tick.isoformat() if row and row.last_tick else None,
            "last_task": str(last_task) if last_task else None,
            "last_outcome": outcomes.get(last_task, "pruned") if last_task else None,
        })  # fmt: skip
    return found

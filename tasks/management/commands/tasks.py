import os
import re
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from tasks.monitor import failed_tasks, overview, pause, prune, rerun, resume
from tasks.schedules import set_paused

AGE = re.compile(r"^(\d+)([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_age(text: str) -> timedelta:
    """'90s', '15m', '12h', '7d' as a timedelta; CommandError for anything else."""
    match = AGE.match(text.strip())
    if not match:
        raise CommandError(f"--older-than takes a number and a unit (s, m, h or d), like 7d or 12h; got {text!r}.")
    return timedelta(**{UNITS[match[2]]: int(match[1])})


def parse_since(text: str) -> datetime:
    """An ISO 8601 time ('2026-12-01T08:00', local time if no offset) or an age ('2h': two hours ago)."""
    if AGE.match(text.strip()):
        return timezone.now() - parse_age(text)
    try:
        when = parse_datetime(text.strip())
    except ValueError:
        when = None
    if when is None:
        raise CommandError(f"--since takes a time like 2026-12-01T08:00 or an age like 2h; got {text!r}.")
    return when if timezone.is_aware(when) else timezone.make_aware(when)


class Command(BaseCommand):
    help = (
        "Show the task queues: depths, running tasks with their workers, slots in use per worker, recent failures, "
        "schedules. `tasks prune --older-than 7d` deletes finished tasks; `tasks retry` runs failed ones again; "
        "`tasks pause <queue>` and `tasks resume <queue>` stop and restart a queue's claims; "
        "`tasks schedule pause|resume NAME` does the same for a periodic schedule; "
        "`tasks alive --max-age 30` exits 1 unless a worker's heartbeat touched TASKS_ALIVE_FILE within 30 s."
    )

    # `tasks alive` is a liveness probe, run every few seconds: the system checks
    # would add a third to its cost, and reading queues needs none of them.
    requires_system_checks = []

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", title="actions")
        pruning = actions.add_parser("prune", help="Delete SUCCESSFUL and FAILED tasks finished before a given age.")
        pruning.add_argument("--older-than", required=True, help="Age like 90s, 15m, 12h or 7d.")
        retrying = actions.add_parser("retry", help="Run FAILED (or cancelled) tasks again, keeping their history.")
        retrying.add_argument("ids", nargs="*", help="Task ids.")
        retrying.add_argument("--failed", action="store_true", help="Every FAILED task (not the cancelled ones).")
        retrying.add_argument("--cancelled", action="store_true", help="Every cancelled task.")
        retrying.add_argument("--task", default="", help="With --failed/--cancelled: only this task (its dotted path).")
        retrying.add_argument("--since", help="With --failed/--cancelled: only those finished since (2h, or a time).")
        for name, text in (("pause", "Stop workers claiming from a queue (enqueues go on)."), ("resume", "Undo pause.")):
            actions.add_parser(name, help=text).add_argument("queue", help="A task queue's name.")
        alive = actions.add_parser(
            "alive", help="Exit 0 if a worker touched TASKS_ALIVE_FILE within --max-age seconds, else 1 (liveness probe)."
        )
        alive.add_argument("--max-age", type=float, default=30.0, help="Seconds (default 30).")
        alive.add_argument("--file", default="", help="The file to read; default TASKS_ALIVE_FILE.")
        scheduling = actions.add_parser("schedule", help="Pause or resume a periodic schedule.")
        scheduling.add_argument("change", choices=["pause", "resume"])
        scheduling.add_argument("name", help="The schedule's name, as `manage.py tasks` lists it.")

    def handle(self, *args, **options) -> None:
        if options["action"] == "alive":
            self.alive(options["file"] or settings.TASKS_ALIVE_FILE, options["max_age"])
            return
        if options["action"] == "prune":
            deleted = prune(parse_age(options["older_than"]))
            self.stdout.write(f"Deleted {deleted} finished task(s) older than {options['older_than']}.")
            return
        if options["action"] == "retry":
            self.retry(options)
            return
        if options["action"] in ("pause", "resume"):
            try:
                changed = pause(options["queue"], by="manage.py") if options["action"] == "pause" else resume(options["queue"])
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            state = "paused" if options["action"] == "pause" else "resumed"
            self.stdout.write(f"Queue {options['queue']} {state}." if changed else f"Queue {options['queue']} was already {state}.")
            return
        if options["action"] == "schedule":
            if not set_paused(options["name"], options["change"] == "pause"):
                raise CommandError(f"No schedule named {options['name']!r}; `manage.py tasks` lists them.")
            self.stdout.write(f"Schedule {options['name']} {options['change']}d.")
            return
        self.show(overview())

    def retry(self, options: dict) -> None:
        ids = list(options["ids"])
        if options["failed"] or options["cancelled"]:
            since = parse_since(options["since"]) if options["since"] else None
            for cancelled in [flag for flag, wanted in ((False, options["failed"]), (True, options["cancelled"])) if wanted]:
                ids += [str(pk) for pk in failed_tasks(cancelled, options["task"], since).values_list("pk", flat=True)]
        elif options["task"] or options["since"]:
            raise CommandError("--task and --since select among --failed or --cancelled tasks; name one of them.")
        if not ids:
            if not (options["failed"] or options["cancelled"]):
                raise CommandError("Name task ids, or --failed / --cancelled (with --task and --since to narrow).")
            self.stdout.write("No task matched.")
            return
        done, skipped = rerun(ids)
        for pk in done:
            self.stdout.write(f"Re-queued {pk}")
        for why in skipped:
            self.stderr.write(f"Skipped {why}")
        self.stdout.write(f"Re-queued {len(done)} task(s), skipped {len(skipped)}.")

    def alive(self, path: str, max_age: float) -> None:
        """Exit 1 (SystemExit, so the probe sees it) unless the worker's heartbeat touched `path` recently."""
        if not path:
            raise CommandError("No file to read: set TASKS_ALIVE_FILE (for the worker too) or pass --file.")
        try:
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            self.stderr.write(f"not alive: {path} does not exist (no heartbeat yet)")
            raise SystemExit(1) from None
        if age > max_age:
            self.stderr.write(f"not alive: last heartbeat {age:.1f}s ago (over {max_age:g}s)")
            raise SystemExit(1)
        self.stdout.write(f"alive: last heartbeat {age:.1f}s ago")

    def show(self, data: dict) -> None:
        self.stdout.write(f"Queues (at {data['at']})")
        self.table(["queue", "ready", "deferred", "running", "state"], [
            [q["queue"], q["ready"], q["deferred"], q["running"], "paused" if q["paused"] else "serving"]
            for q in data["queues"]
        ])  # fmt: skip
        self.stdout.write(f"\nRunning ({len(data['running'])})")
        self.table(["id", "task", "queue", "worker", "heartbeat", "attempt", "progress"], [
            [r["id"], r["task"], r["queue"], r["worker"],
             "-" if r["heartbeat_age"] is None else f"{r['heartbeat_age']:.1f}s ago", r["attempts"],
             "" if r["done"] is None else f"{r['done']}/{r['total'] if r['total'] is not None else '?'} {r['note']}"]
            for r in data["running"]
        ])  # fmt: skip
        self.stdout.write(f"\nSlots in use per worker ({len(data['workers'])})")
        self.table(["worker", "in use", "slots", "by queue"], [
            [w["worker"], w["in_use"], "?" if w["slots"] is None else w["slots"], w["by_queue"]] for w in data["workers"]
        ])  # fmt: skip
        self.stdout.write(f"\nRecent failures ({len(data['failures'])})")
        self.table(["id", "task", "queue", "finished", "attempts", "error"], [
            [f["id"], f["task"], f["queue"], f["finished_at"], f["attempts"], f["error"]] for f in data["failures"]
        ])  # fmt: skip
        self.stdout.write(f"\nSchedules ({len(data['schedules'])})")
        self.table(["schedule", "when", "state", "next tick", "last tick", "outcome"], [
            [s["name"], s["when"], s["state"], s["next_tick"] or "-", s["last_tick"] or "-", s["last_outcome"] or "-"]
            for s in data["schedules"]
        ])  # fmt: skip

    def table(self, header: list[str], rows: list[list]) -> None:
        if not rows:
            self.stdout.write("  (none)")
            return
        cells = [header, *([str(cell) for cell in row] for row in rows)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        for row in cells:
            self.stdout.write("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


import os
import re
import time
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tasks.monitor import overview, prune

AGE = re.compile(r"^(\d+)([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_age(text: str) -> timedelta:
    """'90s', '15m', '12h', '7d' as a timedelta; CommandError for anything else."""
    match = AGE.match(text.strip())
    if not match:
        raise CommandError(f"--older-than takes a number and a unit (s, m, h or d), like 7d or 12h; got {text!r}.")
    return timedelta(**{UNITS[match[2]]: int(match[1])})


class Command(BaseCommand):
    help = (
        "Show the task queues: depths, running tasks with their workers, slots in use per worker, recent failures. "
        "`tasks prune --older-than 7d` deletes finished tasks; "
        "`tasks alive --max-age 30` exits 1 unless a worker's heartbeat touched TASKS_ALIVE_FILE within 30 s."
    )

    # `tasks alive` is a liveness probe, run every few seconds: the system checks
    # would add a third to its cost, and reading queues needs none of them.
    requires_system_checks = []

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", title="actions")
        pruning = actions.add_parser("prune", help="Delete SUCCESSFUL and FAILED tasks finished before a given age.")
        pruning.add_argument("--older-than", required=True, help="Age like 90s, 15m, 12h or 7d.")
        alive = actions.add_parser(
            "alive", help="Exit 0 if a worker touched TASKS_ALIVE_FILE within --max-age seconds, else 1 (liveness probe)."
        )
        alive.add_argument("--max-age", type=float, default=30.0, help="Seconds (default 30).")
        alive.add_argument("--file", default="", help="The file to read; default TASKS_ALIVE_FILE.")

    def handle(self, *args, **options) -> None:
        if options["action"] == "alive":
            self.alive(options["file"] or settings.TASKS_ALIVE_FILE, options["max_age"])
            return
        if options["action"] == "prune":
            deleted = prune(parse_age(options["older_than"]))
            self.stdout.write(f"Deleted {deleted} finished task(s) older than {options['older_than']}.")
            return
        self.show(overview())

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
        self.table(["queue", "ready", "deferred", "running"], [
            [q["queue"], q["ready"], q["deferred"], q["running"]] for q in data["queues"]
        ])  # fmt: skip
        self.stdout.write(f"\nRunning ({len(data['running'])})")
        self.table(["id", "task", "queue", "worker", "heartbeat", "attempt", "progress"], [
            [r["id"], r["task"], r["queue"], r["worker"],
             "-" if r["heartbeat_age"] is None else f"{r['heartbeat_age']:.1f}s ago", r["attempts"],
             "" if r["done"] is None else f"{r['done']}/{r['total'] if r['total'] is not None else '?'} {r['note']}"]
            for r in data["running"]
        ])  # fmt: skip
        self.stdout.write(f"\nSlots in use per worker ({len(data['workers'])})")
        self.table(["worker", "in use", "by queue"], [
            [w["worker"], w["in_use"], ", ".join(f"{queue}={count}" for queue, count in w["queues"].items())]
            for w in data["workers"]
        ])  # fmt: skip
        self.stdout.write(f"\nRecent failures ({len(data['failures'])})")
        self.table(["id", "task", "queue", "finished", "attempts", "error"], [
            [f["id"], f["task"], f["queue"], f["finished_at"], f["attempts"], f["error"]] for f in data["failures"]
        ])  # fmt: skip

    def table(self, header: list[str], rows: list[list]) -> None:
        if not rows:
            self.stdout.write("  (none)")
            return
        cells = [header, *([str(cell) for cell in row] for row in rows)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        for row in cells:
            self.stdout.write("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())

import re
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tasks.monitor import overview, prune
from tasks.schedules import set_paused

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
        "Show the task queues: depths, running tasks with their workers, slots in use per worker, recent failures, "
        "schedules. `tasks prune --older-than 7d` deletes finished tasks; `tasks schedule pause|resume NAME`."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", title="actions")
        pruning = actions.add_parser("prune", help="Delete SUCCESSFUL and FAILED tasks finished before a given age.")
        pruning.add_argument("--older-than", required=True, help="Age like 90s, 15m, 12h or 7d.")
        scheduling = actions.add_parser("schedule", help="Pause or resume a periodic schedule.")
        scheduling.add_argument("change", choices=["pause", "resume"])
        scheduling.add_argument("name", help="The schedule's name, as `manage.py tasks` lists it.")

    def handle(self, *args, **options) -> None:
        if options["action"] == "prune":
            deleted = prune(parse_age(options["older_than"]))
            self.stdout.write(f"Deleted {deleted} finished task(s) older than {options['older_than']}.")
            return
        if options["action"] == "schedule":
            if not set_paused(options["name"], options["change"] == "pause"):
                raise CommandError(f"No schedule named {options['name']!r}; `manage.py tasks` lists them.")
            self.stdout.write(f"Schedule {options['name']} {options['change']}d.")
            return
        self.show(overview())

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

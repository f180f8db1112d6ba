"""Schedules (every second, each tick; every 2 s, coalesced) whose tasks note each run in a file, so a test
counts what really ran."""

import os

from django.tasks import task

from tasks.schedules import schedule

# Where the runs are noted: the test gives the workers this path in their environment.
RUNS = os.environ.get("SCHEDULE_E2E_RUNS", os.devnull)


@schedule(every=1, missed="each", name="e2e-every-second", args=(RUNS,))
@task(queue_name="default")
def note_run(path: str) -> None:
    # O_APPEND writes of one short line are atomic, even across processes.
    with open(path, "a") as fh:
        fh.write(f"{os.getpid()}\n")


@schedule(every=2, name="e2e-coalesced", args=(f"{RUNS}.coalesced",))
@task(queue_name="default")
def note_coalesced_run(path: str) -> None:
    with open(path, "a") as fh:
        fh.write(f"{os.getpid()}\n")
